"""CachedTargets: join + coverage report, exact targets, replayed views, block reads, refusals."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _caches import extract_store, indexed_cache

from sak.manifests.errors import SakError, SpecMismatch
from sak.pipeline.data.augment import apply_view_image, apply_view_label, parse_view
from sak.pipeline.data.datasets import index_dataset, open_dataset, write_dataset_index
from sak.pipeline.data.images import decode_rgb
from sak.student.data.cached import CachedTargets, normalize_image
from sak.student.data.stores import CoverageError, select_stores
from sak.student.data.views import label_tensor

SIZE = (64, 80)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    """Demo NYUD (9 train / 3 val) with one test:tiny store (aug none, 2 segments of 8)."""
    cache = indexed_cache(tmp_path_factory.mktemp("data"), demo_nyud)
    extract_store(cache)
    return cache


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, demo_nyud) -> Path:
    """The same dataset with a --views 2 --aug sak store."""
    cache = indexed_cache(tmp_path_factory.mktemp("views"), demo_nyud)
    extract_store(cache, views=2, aug="sak")
    return cache


def _data(cache: Path, split: str = "train", **kw) -> CachedTargets:
    ds = open_dataset(cache, "nyud")
    return CachedTargets(ds, select_stores(str(cache), ds, (), split), split, SIZE, **kw)


def test_join_serves_exact_stored_targets_and_labels(cache) -> None:
    data = _data(cache)
    assert data.coverage.summary() == "covered 9/9 samples of nyud/train"
    assert len(data) == 9 and data.keys == ("tiny",)
    assert data.tasks == ("semseg", "depth", "normals", "edge")
    s = data[0]
    assert s["image"].shape == (3, 64, 80) and s["image"].dtype == torch.float32
    assert s["labels"]["semseg"].shape == (64, 80) and s["labels"]["semseg"].dtype == torch.int64
    assert s["labels"]["depth"].shape == (1, 64, 80) and s["labels"]["normals"].shape == (3, 64, 80)
    assert s["labels"]["edge"].shape == (1, 64, 80)
    assert all(s["masks"].values())
    store = data.stores[0]
    seg, row = data.items[0].locations[0]
    stored = store.read_rows(seg, [row])
    assert [tuple(t.shape) for t in s["targets"]["tiny"]] == [(32, 8, 8)] * 4
    for layer, t in zip(store.spec.layers, s["targets"]["tiny"], strict=True):
        assert torch.equal(t, torch.from_numpy(stored[layer][0].astype(np.float32)).permute(2, 0, 1))
    # identity view: the image is the decoded file, normalized for the student
    rgb = decode_rgb(data.dataset.image_path(data.items[0].row))
    img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    assert torch.allclose(s["image"], normalize_image(img))
    depth = data.dataset.load_label(data.items[0].row, "depth")
    assert torch.equal(s["labels"]["depth"][0], torch.from_numpy(depth))


def test_val_split_without_stores_serves_images_and_labels(cache) -> None:
    ds = open_dataset(cache, "nyud")
    val = CachedTargets(ds, (), "val", SIZE)
    assert len(val) == 3 and val[0]["targets"] == {} and val.coverage.summary() == "covered 3/3 samples of nyud/val"


def test_val_scores_stored_labels_centre_padded_unless_eval_resize(cache) -> None:
    # official val transform (SAK datasets/custom_transforms.py:30-38): normalize, centre pad, no resize
    ds = open_dataset(cache, "nyud")
    big = (80, 96)  # images are 64x80: 8 rows above and below, 8 columns left and right
    val = CachedTargets(ds, (), "val", big)
    s, item = val[0], val.items[0]
    rgb = decode_rgb(ds.image_path(item.row))
    inner = normalize_image(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert s["image"].shape == (3, 80, 96) and torch.equal(s["image"][:, 8:72, 8:88], inner)
    assert s["image"][:, :8].eq(0).all() and s["image"][:, :, 88:].eq(0).all()
    sem = ds.load_label(item.row, "semseg")
    assert torch.equal(s["labels"]["semseg"][8:72, 8:88], torch.from_numpy(sem))
    assert s["labels"]["semseg"][:8].eq(255).all() and s["labels"]["edge"][:, :, :8].eq(255).all()
    assert s["labels"]["depth"][:, :8].eq(0).all() and s["labels"]["normals"][:, :, :8].eq(0).all()
    old = CachedTargets(ds, (), "val", big, fit="resize")[0]  # sak before issue 12: everything resized
    assert old["labels"]["semseg"].shape == (80, 96) and not old["image"][:, :8].eq(0).all()
    with pytest.raises(SakError, match="larger than the student input 48x64.*eval_resize"):
        CachedTargets(ds, (), "val", (48, 64))[0]


def test_replayed_views_equal_apply_view_output(views_cache) -> None:
    data = _data(views_cache)
    assert len(data) == 18 and data.coverage.summary() == "covered 9/9 samples of nyud/train (18 views)"
    params = [parse_view(it.view_params) for it in data.items]
    flipped = next(i for i, p in enumerate(params) if p.flip)
    unflipped = next(i for i, p in enumerate(params) if not p.flip and p.scale != 1.0)
    for index in (flipped, unflipped):  # both geometric branches, replayed exactly
        item = data.items[index]
        s = data[index]
        rgb = decode_rgb(data.dataset.image_path(item.row))
        view = apply_view_image(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, params[index])
        assert view.shape[-2:] == SIZE  # views keep the image size here: no resize on top
        assert torch.equal(s["image"], normalize_image(view))
        for task in data.tasks:
            raw = apply_view_label(data.dataset.load_label(item.row, task), params[index], task)
            assert torch.equal(s["labels"][task], label_tensor(task, raw.numpy())), task
    assert {it.view for it in data.items} == {0, 1}


def test_feature_flip_mirrors_image_labels_and_targets(cache) -> None:
    plain, flipped = _data(cache), _data(cache, feature_flip=True)
    targets = plain.read_item(0)
    a = plain.build(plain.items[0], targets, flip=False)
    b = flipped.build(flipped.items[0], targets, flip=True)
    assert torch.allclose(b["image"], a["image"].flip(-1))
    assert torch.equal(b["labels"]["semseg"], a["labels"]["semseg"].flip(-1))
    assert torch.equal(b["labels"]["normals"][0], -a["labels"]["normals"][0].flip(-1))
    assert torch.equal(b["labels"]["normals"][1:], a["labels"]["normals"][1:].flip(-1))
    assert torch.equal(b["targets"]["tiny"][2], a["targets"]["tiny"][2].flip(-1))
    decisions = [flipped.flip_of(0, i) for i in range(len(flipped))]
    assert decisions == [flipped.flip_of(0, i) for i in range(len(flipped))] and any(decisions) and not all(decisions)
    assert not any(plain.flip_of(0, i) for i in range(len(plain)))


def test_loader_reads_each_row_once_and_is_thread_independent(cache, monkeypatch) -> None:
    data = _data(cache)
    gather = data.gathers[0]
    calls: list[tuple[str, list[int]]] = []
    real = gather.gather

    def recording(segment_id, rows, outs, slots=None):
        calls.append((segment_id, list(rows)))
        return real(segment_id, rows, outs, slots)

    monkeypatch.setattr(gather, "gather", recording)
    sampler = data.sampler(block_size=3, window=2, seed=1)
    with data.batches(3, sampler, workers=0, drop_last_epoch=True) as loader:
        sync = list(loader)
    read = sorted((seg, r) for seg, rows in calls for r in rows)
    assert read == sorted(it.locations[0] for it in data.items)  # every wanted row once, nothing else
    assert [sid for b in sync for sid in b.sample_ids] == [data.items[i].row["sample_id"] for i in sampler.epoch_order(0)]
    assert sync[-1].position == (1, 0)
    with data.batches(3, sampler, workers=2, prefetch=2, drop_last_epoch=True) as loader:
        threaded = list(loader)
    assert len(threaded) == len(sync) == 3
    for a, b in zip(sync, threaded, strict=True):
        assert a.sample_ids == b.sample_ids and torch.equal(a.image, b.image)
        for x, y in zip(a.targets["tiny"].decode(), b.targets["tiny"].decode(), strict=True):
            assert torch.equal(x, y)
        assert torch.equal(a.labels["semseg"], b.labels["semseg"])


def test_missing_samples_are_reported_with_the_fix(tmp_path, demo_nyud, caplog) -> None:
    cache = indexed_cache(tmp_path, demo_nyud)
    store = extract_store(cache, limit=6)
    ds = open_dataset(cache, "nyud")
    held = set(store.commits().column("image_sha256").to_pylist())
    covered = sum(r["sha256"] in held for r in ds.ok_rows() if r["split"] == "train")
    assert 0 < covered < 9
    with caplog.at_level(logging.WARNING, logger="sak.student.data.stores"), pytest.raises(CoverageError) as err:
        CachedTargets(ds, [store], "train", SIZE, cache_hint=str(cache))
    assert any(r.name == "sak.student.data.stores" and "RANDOM-INIT" in r.message for r in caplog.records)
    msg = str(err.value)
    assert f"covered {covered}/9 samples of nyud/train; {9 - covered} missing from store {store.name}" in msg
    assert "sak-cache extract --teacher test:tiny --dataset nyud" in msg and "--random-init" in msg
    assert "--allow-missing" in msg
    with caplog.at_level(logging.WARNING, logger="sak.student.data.stores"):
        data = CachedTargets(ds, [store], "train", SIZE, allow_missing=True)
    assert len(data) == covered  # random-init stores warn (once per process and store), never refuse
    joined = [r for r in caplog.records if r.name == "sak.student.data.stores" and "RANDOM-INIT" in r.message]
    assert len(joined) == 1  # the first join warned; the second does not repeat it


def test_no_store_covering_the_dataset(tmp_path, demo_nyud, cache) -> None:
    with pytest.raises(SakError, match="no feature stores in"):
        select_stores(str(tmp_path / "empty"), open_dataset(cache, "nyud"))
    other = tmp_path / "other"
    from sak.pipeline.data.demo import make_demo_dataset

    root = make_demo_dataset(other, n=4, size=SIZE, seed=99)
    write_dataset_index(cache, "other", index_dataset(root, name="other", fmt="nyud", workers=1), root)
    try:
        with pytest.raises(SakError, match="no feature store in .* covers dataset 'other'"):
            select_stores(str(cache), open_dataset(cache, "other"))
    finally:
        (cache / "datasets" / "other.parquet").unlink()


def test_mismatched_specs_are_refused(cache, views_cache) -> None:
    ds = open_dataset(cache, "nyud")
    with pytest.raises(SpecMismatch, match=re.escape("at resolution 32, but its store(s) were written at")):
        select_stores(str(cache), ds, ("tiny@32",))
    assert [s.spec.resolution for s in select_stores(str(cache), ds, ("test:tiny@64",))] == [(64, 64)]
    with pytest.raises(SakError, match="no feature store for teacher 'dinov2'"):
        select_stores(str(cache), ds, ("dinov2",))
    plain = select_stores(str(cache), ds)
    views = select_stores(str(views_cache), open_dataset(views_cache, "nyud"))
    with pytest.raises(SpecMismatch, match="stores hold different augmentation views"):
        CachedTargets(ds, plain + views, "train", SIZE)
    with pytest.raises(SpecMismatch, match="--aug none, but"):
        CachedTargets(ds, views, "train", SIZE, aug="none")


def test_labels_are_resized_to_the_student_size_whatever_their_rank():
    # NYUD images are 480x640 and the paper's student sees 448x576: every label must follow.
    import torch

    from sak.student.data.cached import _resize

    semseg = torch.tensor([[1, 2], [3, 4]], dtype=torch.int64)
    assert _resize(semseg, (4, 4), "nearest").tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    depth = torch.tensor([[[0.0, 2.0], [4.0, 6.0]]])
    out = _resize(depth, (4, 2), "nearest")
    assert out.shape == (1, 4, 2) and out[0, :, 0].tolist() == [0.0, 0.0, 4.0, 4.0]
    normals = torch.zeros(3, 2, 2)
    assert _resize(normals, (3, 5), "nearest").shape == (3, 3, 5)
