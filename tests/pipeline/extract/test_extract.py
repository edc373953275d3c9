"""Extraction in-process: stored features equal the teacher's, multi-teacher, dedup, resume, bad images, views."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from sak.manifests.errors import TeacherUnavailable
from sak.pipeline.data.datasets import index_dataset, open_dataset, write_dataset_index
from sak.pipeline.data.images import decode_rgb
from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.teachers import create_teacher


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=4, segment_size=8)
    base.update(kw)
    return ExtractConfig(**base)


@pytest.mark.parametrize("protocol, grid", [("student", (8, 10)), ("native", (8, 8))])
def test_stored_features_match_the_teacher_for_two_teachers(demo_cache, protocol, grid) -> None:
    cache, _ = demo_cache
    report = extract(_cfg(cache, teachers=("test:tiny", "test:tiny2"), keep_prefix=True, layers=(1, 3), input_protocol=protocol))
    assert [(t.done, t.failed, t.skipped_cached) for t in report.teachers] == [(12, 0, 0), (12, 0, 0)]
    assert report.images == 12 and report.samples == 12
    assert all(t.bytes_written > 0 and t.write_seconds > 0 for t in report.teachers)
    ds = open_dataset(cache, "nyud")
    for rep in report.teachers:
        store = FeatureStore.open(rep.store)
        assert store.spec.layers == (1, 3) and store.verify().ok
        assert (store.spec.input_protocol, store.spec.img_size) == (protocol, (64, 80) if protocol == "student" else None)
        teacher = create_teacher(store.spec.teacher, random_init=True, img_size=store.spec.img_size)
        rows = store.commits().to_pylist()
        assert sorted(r["image_sha256"] for r in rows) == sorted(ds.table.column("sha256").to_pylist())
        for r in rows[:3]:
            x = teacher.preprocess(decode_rgb(ds.image_path(r["sample_id"])))[None]
            with torch.inference_mode():
                maps, prefix = teacher.forward_layers(x, (1, 3))
            got = store.read_rows(r["segment_id"], [r["row"]])
            pre = store.read_prefix(r["segment_id"], [r["row"]])
            for j, layer in enumerate((1, 3)):
                assert got[layer].dtype == np.float16 and got[layer].shape == (1, *grid, teacher.width)
                assert _cosine(got[layer][0], maps[j][0].numpy()) >= 0.999
                assert _cosine(pre[layer][0], prefix[j][0].numpy()) >= 0.999
    again = extract(_cfg(cache, teachers=("test:tiny", "test:tiny2"), keep_prefix=True, layers=(1, 3), input_protocol=protocol))
    assert [(t.done, t.skipped_cached) for t in again.teachers] == [(0, 12), (0, 12)]


def test_same_image_in_two_datasets_is_extracted_once(demo_cache) -> None:
    cache, root = demo_cache
    write_dataset_index(cache, "copy", index_dataset(root, name="copy", fmt="nyud", workers=1), root)
    report = extract(_cfg(cache, datasets=("nyud", "copy"), limit=5))
    assert report.images == 5 and report.teachers[0].done == 5
    rows = FeatureStore.open(report.stores[0]).commits()
    assert set(rows.column("source").to_pylist()) == {"nyud"}
    full = extract(_cfg(cache, datasets=("copy", "nyud")))
    assert (full.teachers[0].done, full.teachers[0].skipped_cached) == (7, 5)
    rows = FeatureStore.open(report.stores[0]).commits()
    assert rows.num_rows == 12 and len(set(rows.column("image_sha256").to_pylist())) == 12


def test_a_teacher_that_cannot_load_fails_before_reading_images(tmp_path: Path, demo_nyud: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(TeacherUnavailable):
        extract(_cfg(cache, teachers=("test:tiny", "test:nope"), data=str(demo_nyud)))
    assert not (cache / "datasets").exists() and not (cache / "features").exists()


def _png_bomb(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_images_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    root.mkdir()
    Image.fromarray(rgb).save(root / "good.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 48), dtype=np.uint16)).save(root / "gray16.png")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "rgba.png")
    (root / "zero.jpg").write_bytes(b"")
    Image.fromarray(rgb).save(root / "trunc.png")
    (root / "trunc.png").write_bytes((root / "trunc.png").read_bytes()[:200])
    (root / "text.jpg").write_text("this is not an image")
    _png_bomb(root / "bomb.png")
    Image.fromarray(rgb[::-1].copy()).save(root / "missing.png")


def test_bad_images_become_failed_rows_and_retry_failed_redoes_them(tmp_path: Path) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    _bad_images_folder(root)
    write_dataset_index(cache, "bad", index_dataset(root, name="bad", fmt="folder", workers=1), root)
    moved = (root / "missing.png").rename(tmp_path / "missing.png")  # indexed, then gone
    report = extract(_cfg(cache, datasets=("bad",), batch_size=3, segment_size=4))
    rep = report.teachers[0]
    assert (rep.done, rep.failed) == (5, 5)
    store = FeatureStore.open(rep.store)
    assert sorted(store.commits().column("sample_id").to_pylist()) == ["cmyk", "good", "gray", "gray16", "rgba"]
    errors = {r["sample_id"]: r["error"] for r in store.commits("failed").to_pylist()}
    assert sorted(errors) == ["bomb", "missing", "text", "trunc", "zero"]
    assert all(f"/{name}." in err for name, err in errors.items())  # every error names its file
    assert "not found" in errors["missing"] and "bomb" in errors["bomb"] and "truncated" in errors["trunc"]
    assert {f[1] for f in report.failures} == set(errors)
    assert report.failed == 5
    # Without --retry-failed, failed rows are skipped and counted; with it they run again.
    moved.rename(root / "missing.png")
    skip = extract(_cfg(cache, datasets=("bad",)))
    assert (skip.teachers[0].done, skip.teachers[0].skipped_failed, skip.teachers[0].skipped_cached) == (0, 5, 5)
    retry = extract(_cfg(cache, datasets=("bad",), retry_failed=True))
    assert (retry.teachers[0].done, retry.teachers[0].failed) == (1, 4)
    assert "missing" in store.commits().column("sample_id").to_pylist()
    assert set(store.commits("failed").column("sample_id").to_pylist()) == {"bomb", "text", "trunc", "zero"}


def test_views_store_params_and_replay_reproduces_features(demo_cache) -> None:
    from sak.pipeline.data.augment import SakView, apply_view_image, parse_view, sample_view

    cache, _ = demo_cache
    report = extract(_cfg(cache, aug="sak", views=3, limit=2, dtype="float32", layers=(3,), seed=7))
    assert report.samples == 6 and report.teachers[0].done == 6
    store = FeatureStore.open(report.stores[0])
    assert (store.spec.views, store.spec.aug, store.spec.aug_seed) == (3, "sak", 7)
    rows = store.commits().to_pylist()
    ids = sorted({r["sample_id"] for r in rows})
    assert len(ids) == 2 and sorted((r["sample_id"], r["view"]) for r in rows) == [(i, v) for i in ids for v in range(3)]
    params = [parse_view(r["view_params"]) for r in rows]
    assert len({p.to_json() for p in params}) == 6  # every view differs
    ds = open_dataset(cache, "nyud")
    assert (store.spec.input_protocol, store.spec.img_size, store.spec.aug_crop) == ("student", (64, 80), (64, 80))
    teacher = create_teacher("test:tiny", random_init=True, seed=7, img_size=store.spec.img_size)
    for r, p in zip(rows, params, strict=True):
        assert p.view == r["view"] and isinstance(p, SakView)  # --aug sak = the official policy
        rgb = decode_rgb(ds.image_path(r["sample_id"]))
        # the view is the official one for this image's semseg label: extraction read it for the crop retry
        semseg = ds.load_label(r["sample_id"], "semseg")
        assert p == sample_view(r["image_sha256"], r["view"], rgb.shape[:2], seed=7, semseg=semseg)
        x01 = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
        x = teacher.preprocess.from_tensor(apply_view_image(x01, p))[None]
        with torch.inference_mode():
            maps, _ = teacher.forward_layers(x, (3,))
        stored = store.read_rows(r["segment_id"], [r["row"]])[3][0]
        np.testing.assert_allclose(stored, maps[0][0].numpy(), rtol=1e-5, atol=1e-5)
    assert pc.max(store.commits().column("view")).as_py() == 2


# ---------------------------------------------------------------- the official teacher-input protocol


def test_student_protocol_refuses_images_larger_than_the_student_input(demo_cache) -> None:
    from sak.manifests.errors import ConfigError

    cache, _ = demo_cache
    with pytest.raises(ConfigError, match=r"12 image\(s\) .* larger than the student input 64x64.*--aug sak --aug-crop 64x64"):
        extract(_cfg(cache, img_size=(64, 64)))
    assert not list((cache / "features").glob("*/spec.json"))  # refused before any store is created


def test_student_protocol_centre_pads_smaller_images(demo_cache) -> None:
    cache, _ = demo_cache
    report = extract(_cfg(cache, img_size=(72, 96), limit=2, dtype="float32", layers=(3,)))
    store = FeatureStore.open(report.stores[0])
    assert (store.spec.img_size, store.spec.resolution, store.spec.grid, store.spec.resize) == ((72, 96), (72, 96), (9, 12), "none")
    ds = open_dataset(cache, "nyud")
    teacher = create_teacher("test:tiny", random_init=True, img_size=(72, 96))
    r = store.commits().to_pylist()[0]
    x01 = torch.from_numpy(decode_rgb(ds.image_path(r["sample_id"])).copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    x = torch.zeros(1, 3, 72, 96)
    x[0, :, 4:68, 8:88] = (x01 - mean) / std  # official PadImage: centred, 0 in normalized space
    with torch.inference_mode():
        maps, _ = teacher.forward_layers(x, (3,))
    np.testing.assert_allclose(store.read_rows(r["segment_id"], [r["row"]])[3][0], maps[0][0].numpy(), rtol=1e-5, atol=1e-5)


def test_extract_config_protocol_options() -> None:
    from sak.manifests.errors import ConfigError

    base = dict(cache="c", teachers=("test:tiny",))
    cfg = ExtractConfig(**base)
    assert (cfg.input_protocol, cfg.img_size) == ("student", None)  # official default; size from the images
    assert ExtractConfig(**base, img_size="448x576").img_size == (448, 576)
    views = ExtractConfig(**base, aug="sak", views=2, aug_crop="448x576")
    assert views.img_size == views.aug_crop == (448, 576)
    assert ExtractConfig(**base, aug="sak", views=2, img_size=(64, 80)).aug_crop == (64, 80)
    with pytest.raises(ConfigError, match="differs from --img-size"):
        ExtractConfig(**base, aug="sak", aug_crop=(64, 64), img_size=(64, 80))
    with pytest.raises(ConfigError, match="with --input-protocol native use --native-size"):
        ExtractConfig(**base, input_protocol="native", img_size=(64, 80))
    with pytest.raises(ConfigError, match="--native-size sets a teacher's native square"):
        ExtractConfig(**base, resolution=224)
    with pytest.raises(ConfigError, match="--input-protocol must be one of student, native"):
        ExtractConfig(**base, input_protocol="official")
