"""Dataset indexing: the three layouts, failed rows that say why, path escapes, the cache round trip."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from PIL import Image

from sak.manifests.errors import DatasetError, PathEscape, SchemaMismatch
from sak.manifests.schemas import validate_table
from sak.pipeline.data.datasets import (
    Dataset,
    index_dataset,
    list_datasets,
    manifest_schema,
    open_dataset,
    write_dataset_index,
)
from sak.pipeline.data.formats import discover
from sak.pipeline.data.labels import load_label

LABELS = ("label_semseg", "label_depth", "label_normals", "label_edge", "label_parts", "label_saliency")


def _img(path: Path, w: int = 6, h: int = 4, value: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (value, 2 * value % 256, 3)).save(path, format=fmt)
    return path


def _gray(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rows(table) -> dict[str, dict]:
    validate_table(table, manifest_schema(), "test")
    return {r["sample_id"]: r for r in table.to_pylist()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- layouts


@pytest.fixture()
def nyud_root(tmp_path: Path) -> Path:
    root = tmp_path / "NYUD_MT"
    for i, sid in enumerate(["a1", "a2", "b1"]):
        _img(root / "images" / f"{sid}.png", w=8 + i, h=5, value=i)
        _gray(root / "segmentation" / f"{sid}.png", np.full((5, 8 + i), 3, np.uint8))
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{sid}.npy", np.ones((5, 8 + i), np.float32))
        _gray(root / "normals" / f"{sid}.png", np.full((5, 8 + i, 3), 128, np.uint8))
    _gray(root / "edge" / "a1.png", np.zeros((5, 8), np.uint8))  # edges only for a1
    _img(root / "images" / "c1.jpg", w=4, h=3, fmt="JPEG")  # a jpg image without labels
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("a1\na2\n\nc1\nmissing\n")
    (root / "gt_sets" / "val.txt").write_text("b1\n")
    _img(root / "images" / "unlisted.png")  # in no split list: not indexed
    return root


def test_nyud_layout(nyud_root):
    table = index_dataset(nyud_root, workers=2)
    assert table.schema.metadata[b"sak.format"] == b"nyud"
    assert table.column("sample_id").to_pylist() == ["a1", "a2", "c1", "missing", "b1"]
    rows = _rows(table)
    a1 = rows["a1"]
    assert a1 == {
        "sample_id": "a1", "path": "images/a1.png", "sha256": _sha(nyud_root / "images/a1.png"),
        "width": 8, "height": 5, "split": "train", "source": "nyud",
        "label_semseg": "segmentation/a1.png", "label_depth": "depth/a1.npy", "label_normals": "normals/a1.png",
        "label_edge": "edge/a1.png", "label_parts": None, "label_saliency": None, "status": "ok", "error": None,
    }
    assert rows["a2"]["label_edge"] is None and rows["a2"]["label_depth"] == "depth/a2.npy"
    assert (rows["b1"]["split"], rows["b1"]["width"]) == ("val", 10)
    assert rows["c1"]["path"] == "images/c1.jpg" and rows["c1"]["status"] == "ok"
    assert all(rows["c1"][c] is None for c in LABELS)
    missing = rows["missing"]
    assert missing["status"] == "failed" and missing["sha256"] is None and missing["width"] is None
    assert "gt_sets/train.txt" in missing["error"] and "images/missing" in missing["error"]


def test_nyud_id_in_two_splits_is_refused(nyud_root):
    (nyud_root / "gt_sets" / "val.txt").write_text("b1\na2\n")
    with pytest.raises(DatasetError, match="'a2' is listed in both gt_sets/train.txt and gt_sets/val.txt"):
        index_dataset(nyud_root)


def test_nyud_id_with_path_separator_fails_its_row(nyud_root):
    (nyud_root / "gt_sets" / "val.txt").write_text("b1\n../../etc/passwd\n")
    rows = _rows(index_dataset(nyud_root))
    bad = rows["../../etc/passwd"]
    assert bad["status"] == "failed" and "not a plain file name" in bad["error"]


def test_nyud_without_split_lists_is_an_error(tmp_path):
    (tmp_path / "gt_sets").mkdir()
    with pytest.raises(DatasetError, match="no train.txt/val.txt/test.txt"):
        index_dataset(tmp_path)


def test_pascal_layout(tmp_path):
    root = tmp_path / "PASCAL_MT"
    for sid in ("2008_000001", "2008_000002", "2008_000003"):
        _img(root / "JPEGImages" / f"{sid}.jpg", w=7, h=6, fmt="JPEG")
        _gray(root / "semseg" / "pascal-context" / f"{sid}.png", np.zeros((6, 7), np.uint8))
        context = root / "pascal-context" / "trainval" / f"{sid}.mat"  # the 459-class LabelMap edges come from
        context.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(context), {"LabelMap": np.kron([[1, 2], [3, 4]], np.ones((3, 4), np.uint16))[:, :7]})
    _gray(root / "human_parts" / "2008_000001.png", np.zeros((6, 7), np.uint8))
    (root / "human_parts" / "2008_000002.mat").write_bytes(b"MATLAB 5.0")
    _gray(root / "sal_distill" / "2008_000001.png", np.zeros((6, 7), np.uint8))
    _gray(root / "normals_distill" / "2008_000003.png", np.zeros((6, 7, 3), np.uint8))
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("2008_000001\n2008_000002\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("2008_000003\n")
    table = index_dataset(root, workers=3)
    assert table.schema.metadata[b"sak.format"] == b"pascal"
    rows = _rows(table)
    assert [r["split"] for r in rows.values()] == ["train", "train", "val"]
    assert all(r["status"] == "ok" and r["source"] == "pascal" and (r["width"], r["height"]) == (7, 6)
               for r in rows.values())
    assert all(r["label_edge"] == f"pascal-context/trainval/{s}.mat" and r["label_depth"] is None
               for s, r in rows.items())
    edge = load_label("edge", root / rows["2008_000003"]["label_edge"], dataset="pascal")
    assert edge.shape == (6, 7) and edge.sum() == 8 and edge[3, :6].all()  # thinned cross between the 4 regions
    assert all(r["label_semseg"] == f"semseg/pascal-context/{s}.png" for s, r in rows.items())
    assert rows["2008_000001"]["label_parts"] == "human_parts/2008_000001.png"
    assert rows["2008_000002"]["label_parts"] == "human_parts/2008_000002.mat"
    assert rows["2008_000003"]["label_parts"] is None
    assert rows["2008_000001"]["label_saliency"] == "sal_distill/2008_000001.png"
    assert rows["2008_000003"]["label_normals"] == "normals_distill/2008_000003.png"
    assert rows["2008_000001"]["label_normals"] is None


def test_folder_layout(tmp_path):
    root = tmp_path / "photos"
    _img(root / "train" / "cats" / "a.png")
    _img(root / "val" / "b.jpg", fmt="JPEG")
    _img(root / "Test" / "c.PNG", fmt="PNG")
    _img(root / "misc" / "d.png")
    _img(root / "e.png")
    _img(root / "dup.png")
    _img(root / "dup.jpg", fmt="JPEG")
    (root / "notes.txt").write_text("not an image")
    _img(root / ".hidden" / "x.png")
    _img(root / ".y.png")
    table = index_dataset(root, name="photos", workers=2)
    assert table.schema.metadata[b"sak.format"] == b"folder"
    rows = _rows(table)
    assert {sid: (r["path"], r["split"]) for sid, r in rows.items()} == {
        "Test/c": ("Test/c.PNG", "test"),
        "dup.jpg": ("dup.jpg", "train"),
        "dup.png": ("dup.png", "train"),
        "e": ("e.png", "train"),
        "misc/d": ("misc/d.png", "train"),
        "train/cats/a": ("train/cats/a.png", "train"),
        "val/b": ("val/b.jpg", "val"),
    }
    assert all(r["status"] == "ok" and r["source"] == "photos" for r in rows.values())
    assert all(r[c] is None for r in rows.values() for c in LABELS)


def test_folder_default_name_is_the_folder_name(tmp_path):
    _img(tmp_path / "my_pics" / "a.png")
    assert index_dataset(tmp_path / "my_pics").column("source").to_pylist() == ["my_pics"]


def test_auto_detection(tmp_path, nyud_root):
    assert index_dataset(nyud_root, fmt="auto").schema.metadata[b"sak.format"] == b"nyud"
    with pytest.raises(DatasetError, match="--format nyud"):  # read as a plain folder: label pngs as images (refused)
        index_dataset(nyud_root, fmt="folder")
    folder = index_dataset(nyud_root / "images", fmt="folder")  # its image folder alone
    assert folder.schema.metadata[b"sak.format"] == b"folder"
    assert "unlisted" in folder.column("sample_id").to_pylist()


# ---------------------------------------------------------------- failures


def test_corrupt_and_fake_images_are_failed_rows(tmp_path):
    root = tmp_path / "d"
    _img(root / "good.png")
    (root / "text.png").write_text("hello")
    (root / "empty.jpg").write_bytes(b"")
    rows = _rows(index_dataset(root))
    assert rows["good"]["status"] == "ok"
    for sid, name in (("text", "text.png"), ("empty", "empty.jpg")):
        r = rows[sid]
        assert r["status"] == "failed" and name in r["error"] and "not a readable image" in r["error"]
        assert r["sha256"] == _sha(root / name)  # bytes were read; only decoding failed
        assert r["width"] is None and r["height"] is None


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlink_out_of_root_fails_its_row(tmp_path):
    outside = _img(tmp_path / "outside" / "secret.png")
    root = tmp_path / "d"
    _img(root / "ok.png")
    (root / "link_out.png").symlink_to(outside)
    (root / "link_in.png").symlink_to(root / "ok.png")
    rows = _rows(index_dataset(root))
    assert rows["ok"]["status"] == "ok"
    assert rows["link_in"]["status"] == "ok" and rows["link_in"]["path"] == "link_in.png"
    bad = rows["link_out"]
    assert bad["status"] == "failed" and bad["path"] == "link_out.png"
    assert "outside the dataset root" in bad["error"] and bad["sha256"] is None


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_label_symlink_out_of_root_fails_its_row(nyud_root, tmp_path):
    outside = _gray(tmp_path / "elsewhere.png", np.zeros((5, 9), np.uint8))
    (nyud_root / "edge" / "a2.png").symlink_to(outside)
    rows = _rows(index_dataset(nyud_root))
    assert rows["a2"]["status"] == "failed" and "outside the dataset root" in rows["a2"]["error"]
    assert rows["a1"]["status"] == "ok"


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlinked_image_folder_out_of_root_fails_every_row(nyud_root, tmp_path):
    (nyud_root / "images").rename(tmp_path / "real_images")
    (nyud_root / "images").symlink_to(tmp_path / "real_images", target_is_directory=True)
    rows = _rows(index_dataset(nyud_root))
    assert all(r["status"] == "failed" for r in rows.values())
    assert "outside the dataset root" in rows["a1"]["error"] and "real_images" in rows["a1"]["error"]


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlinked_folders_are_not_followed(tmp_path):
    _img(tmp_path / "outside" / "x.png")
    root = tmp_path / "d"
    _img(root / "a.png")
    (root / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert index_dataset(root).column("sample_id").to_pylist() == ["a"]


def test_empty_and_missing_roots(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        index_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="is not a directory"):
        index_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown dataset format 'coco'"):
        index_dataset(tmp_path / "empty", fmt="coco")
    with pytest.raises(DatasetError, match="not allowed"):
        index_dataset(tmp_path / "empty", name="../x")


def test_progress_callback(nyud_root):
    calls = []
    index_dataset(nyud_root, progress=lambda advance, **info: calls.append((advance, info)), workers=2)
    assert calls[0] == (0, {"total": 5})
    assert calls[1:] == [(1, {})] * 5


def test_many_workers_keep_order(tmp_path):
    root = tmp_path / "many"
    for i in range(300):
        root.mkdir(exist_ok=True)
        (root / f"{i:04d}.png").write_bytes(b"")  # empty files: fast, and every row is failed
    table = index_dataset(root, workers=4)
    assert table.column("sample_id").to_pylist() == [f"{i:04d}" for i in range(300)]
    assert set(table.column("status").to_pylist()) == {"failed"}


# ---------------------------------------------------------------- cache round trip


def test_write_open_round_trip(tmp_path, nyud_root):
    cache = tmp_path / "cache"
    table = index_dataset(nyud_root)
    path = write_dataset_index(cache, "nyud", table, nyud_root)
    assert path == cache / "datasets" / "nyud.parquet"
    assert pq.read_schema(path).metadata[b"sak.root"] == str(nyud_root.resolve()).encode()
    assert [p.name for p in (cache / "datasets").iterdir()] == ["nyud.parquet"]  # no temp file left
    assert list_datasets(cache) == ["nyud"] and list_datasets(tmp_path / "nothing") == []
    ds = open_dataset(cache, "nyud")
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.root, ds.format, len(ds)) == ("nyud", nyud_root.resolve(), "nyud", 5)
    assert ds.table.equals(table.replace_schema_metadata(ds.table.schema.metadata))
    assert ds.tasks == ("semseg", "depth", "normals", "edge")
    assert [r["sample_id"] for r in ds.ok_rows()] == ["a1", "a2", "c1", "b1"]
    assert ds.splits() == {"train": 3, "val": 1}
    assert ds.image_path("a1") == nyud_root.resolve() / "images" / "a1.png"
    row = ds.row("a2")
    assert ds.image_path(row) == nyud_root.resolve() / "images" / "a2.png"
    assert ds.label_path(row, "semseg") == nyud_root.resolve() / "segmentation" / "a2.png"
    assert ds.label_path(row, "edge") is None
    np.testing.assert_array_equal(ds.load_label("a1", "semseg"), np.full((5, 8), 2))  # NYUD png 3 -> class 2
    assert ds.load_label("a2", "edge") is None
    assert ds.task_channels("semseg") == 40
    with pytest.raises(DatasetError, match="no sample 'zz'"):
        ds.image_path("zz")


def test_root_override_and_missing_dataset(tmp_path, nyud_root):
    cache = tmp_path / "cache"
    write_dataset_index(cache, "nyud", index_dataset(nyud_root), nyud_root)
    moved = tmp_path / "moved"
    nyud_root.rename(moved)
    ds = open_dataset(cache, "nyud", root_override=moved)
    assert ds.image_path("a1") == moved / "images" / "a1.png" and ds.image_path("a1").is_file()
    with pytest.raises(DatasetError, match=r"no dataset named 'pascal'.*indexed: \['nyud'\]"):
        open_dataset(cache, "pascal")


def test_tampered_manifest_paths_are_refused(tmp_path, nyud_root):
    cache = tmp_path / "cache"
    table = index_dataset(nyud_root)
    paths = table.column("path").to_pylist()
    paths[0] = "../outside.png"
    table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths))
    write_dataset_index(cache, "nyud", table, nyud_root)
    with pytest.raises(PathEscape, match="contains '..'"):
        open_dataset(cache, "nyud").image_path("a1")


def test_corrupt_index_file_is_a_schema_error(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaMismatch, match="x.parquet"):
        open_dataset(tmp_path, "x")


def test_demo_cache_fixture(demo_cache):
    cache, root = demo_cache
    ds = open_dataset(cache, "nyud")
    assert len(ds) == 12 and ds.splits() == {"train": 9, "val": 3}
    assert ds.tasks == ("semseg", "depth", "normals", "edge")
    assert all(r["width"] == 80 and r["height"] == 64 for r in ds.ok_rows())


# ---------------------------------------------------------------- issue 14: regular files, EXIF sizes, no silent replacement


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_discovery_marks_non_regular_files_failed_without_opening_them(tmp_path, nyud_root):
    root = tmp_path / "d"
    _img(root / "good.png")
    os.mkfifo(root / "pipe.jpg")
    (root / "dir.png").mkdir()  # a folder with an image name is a folder: searched, never a sample
    cands = {c.sample_id: c for c in discover(root, "folder")}
    assert sorted(cands) == ["good", "pipe"]
    assert cands["good"].error is None
    assert cands["pipe"].error == (f"{root / 'pipe.jpg'} is a FIFO (named pipe), not a regular file; only regular files "
                                   "are indexed: replace it with the image or remove it")
    (nyud_root / "images" / "b1.png").unlink()
    os.mkfifo(nyud_root / "images" / "b1.png")
    (nyud_root / "normals" / "a1.png").unlink()
    os.mkfifo(nyud_root / "normals" / "a1.png")  # a FIFO label: the sample is indexed without it
    cands = {c.sample_id: c for c in discover(nyud_root, "nyud")}
    assert "is a FIFO (named pipe), not a regular file" in cands["b1"].error
    assert cands["a1"].error is None and "normals" not in cands["a1"].labels and "semseg" in cands["a1"].labels


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_a_symlink_to_a_regular_file_inside_the_root_is_indexed_under_its_own_path(tmp_path):
    root = tmp_path / "d"
    target = _img(root / "real.png", value=5)
    (root / "link.png").symlink_to(target)
    rows = _rows(index_dataset(root))
    assert rows["link"]["status"] == "ok" and rows["link"]["path"] == "link.png"
    assert rows["link"]["sha256"] == rows["real"]["sha256"] == _sha(target)


def _exif_img(path: Path, w: int, h: int, orientation: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (w, h), (1, 2, 3)).save(path, exif=exif.tobytes())
    return path


def test_index_records_the_displayed_size_and_fails_rotated_images_whose_labels_do_not_match(nyud_root):
    _exif_img(nyud_root / "images" / "a1.png", 8, 5, 6)  # shown 5 wide, 8 high; its labels are 8x5 (pixel order)
    _exif_img(nyud_root / "images" / "a2.png", 9, 5, 3)  # rotated 180: same size as its labels, allowed
    _exif_img(nyud_root / "images" / "c1.jpg", 4, 3, 8)  # no labels: nothing to misalign
    rows = _rows(index_dataset(nyud_root))
    a1 = rows["a1"]
    assert a1["status"] == "failed" and a1["width"] == 5 and a1["height"] == 8
    assert a1["error"] == (f"{nyud_root / 'images/a1.png'}: its EXIF orientation 6 displays it as 5x8 but its semseg "
                           "label segmentation/a1.png is 8x5 (labels are read in pixel order): rotate the image's pixels "
                           "to match its labels and drop the EXIF orientation tag, then re-index")
    assert (rows["a2"]["status"], rows["a2"]["width"], rows["a2"]["height"]) == ("ok", 9, 5)
    assert (rows["c1"]["status"], rows["c1"]["width"], rows["c1"]["height"]) == ("ok", 3, 4)
    assert (rows["b1"]["width"], rows["b1"]["height"]) == (10, 5)


def test_reindexing_a_name_from_another_root_is_refused_unless_replace(tmp_path, nyud_root):
    cache = tmp_path / "cache"
    write_dataset_index(cache, "nyud", index_dataset(nyud_root), nyud_root)
    other = tmp_path / "other"
    _img(other / "x.png")
    table = index_dataset(other, name="nyud")
    with pytest.raises(DatasetError) as info:
        write_dataset_index(cache, "nyud", table, other)
    msg = str(info.value)
    assert f"dataset 'nyud' ({cache / 'datasets' / 'nyud.parquet'}) is indexed from {nyud_root.resolve()}; " \
           f"{other.resolve()} is another folder" in msg
    assert "+1 added (x); -4 removed (a1, a2, b1, c1)" in msg and "Pass --replace" in msg
    assert len(open_dataset(cache, "nyud")) == 5  # untouched
    write_dataset_index(cache, "nyud", table, other, replace=True)
    ds = open_dataset(cache, "nyud")
    assert (len(ds), ds.root) == (1, other.resolve())


def test_reindexing_the_same_root_allows_added_images_and_refuses_removed_or_changed(tmp_path, caplog):
    cache, root = tmp_path / "cache", tmp_path / "d"
    for i in range(4):
        _img(root / f"im{i}.png", value=i)
    write_dataset_index(cache, "d", index_dataset(root), root)
    _img(root / "new.png", value=9)
    with caplog.at_level("INFO", logger="sak.pipeline.data.reindex"):
        write_dataset_index(cache, "d", index_dataset(root), root)  # only added: allowed
    assert "dataset 'd': +1 new images (+1 added (new))" in caplog.text
    assert len(open_dataset(cache, "d")) == 5
    (root / "im0.png").unlink()
    _img(root / "im1.png", value=77)  # other bytes
    (root / "im2.png").write_bytes(b"garbage")  # no longer an image: changed too
    with pytest.raises(DatasetError, match=r"images under .* were removed or changed since it was indexed "
                                           r"\(-1 removed \(im0\); ~2 changed \(im1, im2\)\).*Pass --replace"):
        write_dataset_index(cache, "d", index_dataset(root), root)
    assert len(open_dataset(cache, "d")) == 5
    write_dataset_index(cache, "d", index_dataset(root), root, replace=True)
    assert len(open_dataset(cache, "d")) == 4


def test_a_fixed_image_and_an_index_without_a_recorded_root_can_be_rewritten(tmp_path):
    cache, root = tmp_path / "cache", tmp_path / "d"
    _img(root / "a.png")
    (root / "b.png").write_bytes(b"broken")
    table = index_dataset(root)
    write_dataset_index(cache, "d", table, root)
    legacy = cache / "datasets" / "d.parquet"
    pq.write_table(pq.read_table(legacy).replace_schema_metadata({}), legacy)  # an older index: no sak.root
    _img(root / "b.png", value=3)  # the failed row is fixed
    write_dataset_index(cache, "d", index_dataset(root), root)
    assert [r["status"] for r in open_dataset(cache, "d").table.to_pylist()] == ["ok", "ok"]
