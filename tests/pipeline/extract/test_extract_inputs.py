"""Issue 14 inputs: an image changed since indexing never poisons the cache, EXIF orientation is recorded
in the spec and replayed by training, ``extract --data`` never silently replaces an index, and the
decode-ahead is bounded by decoded bytes, not by image count."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sak.cli.cache import app as cache_app
from sak.manifests.config import config_hash
from sak.manifests.errors import BadImage, DatasetError
from sak.pipeline.data.datasets import index_dataset, open_dataset, write_dataset_index
from sak.pipeline.data.images import decode_rgb, open_image_size
from sak.pipeline.extract import segment
from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.spec import FeatureSpec
from sak.pipeline.teachers import create_teacher
from sak.student.data.cached import CachedTargets

LEGACY = Path(__file__).resolve().parents[2] / "data" / "legacy_v1"
CHANGED = "changed since indexing: re-index the dataset"


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 32), orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(rgb).save(path, **kw)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=4, segment_size=8,
                device="cpu", io_threads=2, img_size=(48, 48))
    base.update(kw)
    return ExtractConfig(**base)


def _index(cache: Path, root: Path, name: str) -> None:
    write_dataset_index(cache, name, index_dataset(root, name=name, workers=1), root)


def _teacher_maps(store: FeatureStore, rgb: np.ndarray) -> np.ndarray:
    teacher = create_teacher(store.spec.teacher, random_init=True, img_size=store.spec.img_size)
    with torch.inference_mode():
        maps, _ = teacher.forward_layers(teacher.preprocess(rgb)[None], store.spec.layers)
    return maps[-1][0].numpy()


def test_an_image_changed_since_indexing_is_a_failed_row_and_never_served_to_its_twin(tmp_path):
    cache = tmp_path / "cache"
    a, b = tmp_path / "a", tmp_path / "b"
    x = _png(a / "x.png", seed=1)
    _png(a / "y.png", seed=2)
    (b / "x.png").parent.mkdir()
    (b / "x.png").write_bytes(x.read_bytes())  # dataset b holds the original bytes of a/x.png
    _index(cache, a, "a")
    _index(cache, b, "b")
    original = decode_rgb(b / "x.png")
    _png(a / "x.png", seed=99)  # a valid image, other bytes, after indexing
    report = extract(_cfg(cache, datasets=("a", "b")))
    store = FeatureStore.open(report.teachers[0].store)
    rows = {r["image_sha256"]: r for r in store.commits(None).to_pylist()}
    row = rows[_sha(b / "x.png")]
    assert row["status"] == "failed" and row["sample_id"] == "x" and row["source"] == "a"
    assert row["error"] == (f"{a / 'x.png'}: {CHANGED} (sak-cache index {a.resolve()} --name a --cache {cache} --replace); "
                            f"its sha256 is {_sha(a / 'x.png')[:12]}..., the index recorded {_sha(b / 'x.png')[:12]}...")
    assert [(t.done, t.failed) for t in report.teachers] == [(1, 1)]
    assert _sha(a / "x.png") not in rows  # nothing stored under the new bytes either
    # b's copy is then extracted from b's own (original) bytes
    again = extract(_cfg(cache, datasets=("b",), retry_failed=True))
    assert [(t.done, t.failed) for t in again.teachers] == [(1, 0)]
    ok = store.commits("ok").to_pylist()
    [mine] = [r for r in ok if r["image_sha256"] == _sha(b / "x.png")]
    got = store.read_rows(mine["segment_id"], [mine["row"]])[store.spec.layers[-1]][0].astype(np.float32)
    np.testing.assert_allclose(got, _teacher_maps(store, original), atol=2e-2)


def test_training_refuses_an_image_changed_since_extraction(tmp_path):
    cache, root = tmp_path / "cache", tmp_path / "d"
    for i in range(3):
        _png(root / f"im{i}.png", seed=i)
    _index(cache, root, "d")
    report = extract(_cfg(cache))
    ds = open_dataset(cache, "d")
    data = CachedTargets(ds, [FeatureStore.open(report.teachers[0].store)], "train", (48, 48), cache_hint=str(cache))
    assert data.build(data.items[0])["image"].shape == (3, 48, 48)
    _png(root / f"{data.items[0].row['sample_id']}.png", seed=50)
    with pytest.raises(BadImage, match=f"{CHANGED} \\(sak-cache index {root.resolve()} --name d --cache {cache} "
                                       "--replace, then extract again\\)"):
        data.build(data.items[0])


def test_orientation_is_part_of_new_spec_ids_and_absent_means_raw_with_the_old_id():
    [path] = list((LEGACY / "features").glob("*/spec.json"))
    data = json.loads(path.read_text())
    assert "orientation" not in data
    legacy = FeatureSpec.from_dict(data)
    assert legacy.orientation == "raw" and legacy.spec_id == config_hash(data, 12) == path.parent.name.rsplit("-", 1)[1]
    exif = replace(legacy, orientation="exif")
    assert exif.identity()["orientation"] == "exif" and exif.spec_id != legacy.spec_id
    assert FeatureSpec.from_json(exif.to_json()) == exif
    with pytest.raises(ValueError, match="orientation must be one of"):
        replace(legacy, orientation="auto")


def test_extraction_and_training_decode_with_the_store_orientation(tmp_path):
    cache, root = tmp_path / "cache", tmp_path / "d"
    rot = _png(root / "rot.png", seed=3, size=(40, 32), orientation=6)  # stored 40x32, shown 32x40
    _index(cache, root, "d")
    assert open_dataset(cache, "d").row("rot")["width"] == 32  # the displayed size
    shown, raw = decode_rgb(rot), decode_rgb(rot, orientation="raw")
    assert shown.shape == (40, 32, 3) and raw.shape == (32, 40, 3)
    stores = {}
    for policy, pixels in (("exif", shown), ("raw", raw)):
        report = extract(_cfg(cache, orientation=policy))
        store = stores[policy] = FeatureStore.open(report.teachers[0].store)
        assert store.spec.orientation == policy
        [r] = store.commits("ok").to_pylist()
        got = store.read_rows(r["segment_id"], [r["row"]])[store.spec.layers[-1]][0].astype(np.float32)
        np.testing.assert_allclose(got, _teacher_maps(store, pixels), atol=2e-2)
    assert stores["exif"].name != stores["raw"].name
    assert extract(_cfg(cache, input_protocol="native", img_size=None)).teachers[0].store.name.endswith(
        FeatureStore.open(extract(_cfg(cache, input_protocol="native", img_size=None, orientation="raw")).teachers[0].store)
        .spec.spec_id)  # native (sak's first behaviour) keeps raw pixels and its old spec ids
    ds = open_dataset(cache, "d")
    for policy, pixels in (("exif", shown), ("raw", raw)):
        data = CachedTargets(ds, [stores[policy]], "train", (48, 48))
        assert data.orientation == policy
        image = data.build(data.items[0])["image"]
        h, w = pixels.shape[:2]
        top, left = (48 - h) // 2, (48 - w) // 2  # centre-padded (fit "pad")
        want = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
            / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        torch.testing.assert_close(image[:, top:top + h, left:left + w], want)
    with pytest.raises(Exception, match="different orientation policies"):
        CachedTargets(ds, [stores["exif"], stores["raw"]], "train", (48, 48))


def test_extract_data_refuses_to_replace_an_index_from_another_folder(tmp_path):
    cache = tmp_path / "cache"
    for i in range(3):
        _png(tmp_path / "one" / f"im{i}.png", seed=i)
    _png(tmp_path / "two" / "other.png", seed=9)
    extract(_cfg(cache, data=str(tmp_path / "one"), data_name="photos"))
    with pytest.raises(DatasetError, match=f"dataset 'photos' .* is indexed from {tmp_path.resolve() / 'one'}; "
                                           f"{tmp_path.resolve() / 'two'} is another folder .*Pass --replace"):
        extract(_cfg(cache, data=str(tmp_path / "two"), data_name="photos"))
    assert len(open_dataset(cache, "photos")) == 3
    extract(_cfg(cache, data=str(tmp_path / "one"), data_name="photos"))  # the same folder again: fine
    report = extract(_cfg(cache, data=str(tmp_path / "two"), data_name="photos", replace=True))
    assert len(open_dataset(cache, "photos")) == 1 and report.images == 1


def test_decode_ahead_is_bounded_by_decoded_bytes(tmp_path, monkeypatch):
    """A 9000x9000 PNG (~0.3 MB on disk, 243 MB decoded) among small images decodes alone."""
    root = tmp_path / "d"
    big = root / "big.png"
    big.parent.mkdir(parents=True)
    Image.new("RGB", (9000, 9000), (7, 7, 7)).save(big, compress_level=1)
    paths = [_png(root / f"s{i}.png", seed=i, size=(64, 64)) for i in range(9)]
    paths.insert(2, big)
    samples = []
    for p in paths:
        w, h = open_image_size(p)
        samples.append(segment.Sample(_sha(p), p.stem, "d", str(root), p.name, 0, (0,), pixels=w * h))
    live = {"now": 0, "peak": 0}
    lock, mine = threading.Lock(), threading.local()
    real_decode, real_prepare = segment.decode_rgb, segment._prepare_image

    def decode(path, **kw):  # counted from the start of the decode to the end of the image's preparation
        w, h = open_image_size(path)
        with lock:
            live["now"] += 3 * w * h
            live["peak"] = max(live["peak"], live["now"])
        mine.bytes = 3 * w * h
        return real_decode(path, **kw)

    def prepare(group, teachers, cfg):
        mine.bytes = 0
        try:
            return real_prepare(group, teachers, cfg)
        finally:
            with lock:
                live["now"] -= mine.bytes

    monkeypatch.setattr(segment, "decode_rgb", decode)
    monkeypatch.setattr(segment, "_prepare_image", prepare)
    teachers = [SimpleNamespace(preprocess=lambda rgb: torch.zeros(3, 2, 2))]
    cfg = SimpleNamespace(batch_size=4, io_threads=4, aug="none", cache="c", orientation="exif", seed=0)
    out = [p for batch in segment._prepared_batches(samples, teachers, cfg) for p in batch]
    assert [p.sample.sample_id for p in out] == [p.stem for p in paths] and all(p.error is None for p in out)
    assert segment.DECODE_AHEAD_BYTES < 9000 * 9000 * 3
    assert live["peak"] == 9000 * 9000 * 3  # the big image alone (over the budget): nothing decoded beside it
    live["peak"] = 0
    monkeypatch.setattr(segment, "DECODE_AHEAD_BYTES", 2 * 64 * 64 * 3)
    list(segment._prepared_batches([s for s in samples if s.sample_id != "big"], teachers, cfg))
    assert 0 < live["peak"] <= 2 * 64 * 64 * 3


def test_a_new_exif_store_beside_a_raw_one_is_announced_with_the_flag_that_keeps_the_old_one(tmp_path, caplog):
    """Upgrading: the default (exif) spec differs from a store written before EXIF support (raw), so extraction
    starts a new store and extracts everything again; it says so, and --orientation raw keeps the old store."""
    cache, root = tmp_path / "cache", tmp_path / "d"
    _png(root / "a.png", seed=1)
    _index(cache, root, "d")
    old = extract(_cfg(cache, orientation="raw")).teachers[0].store
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.extract.job"):
        again = extract(_cfg(cache, orientation="raw"))
    twin = [r for r in caplog.records if "--orientation raw" in r.getMessage()]
    assert again.teachers[0].store == old and again.teachers[0].skipped_cached == 1 and not twin
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.extract.job"):
        new = extract(_cfg(cache))
    assert new.teachers[0].store != old and new.teachers[0].done == 1
    assert any(str(old) in r.getMessage() and "--orientation raw" in r.getMessage() for r in caplog.records)
    res = CliRunner().invoke(cache_app, ["extract", "--cache", str(cache), "--teacher", "test:tiny", "--random-init",
                                         "--dataset", "d", "--img-size", "48x48", "--device", "cpu", "--orientation", "raw"])
    assert res.exit_code == 0, res.output
    assert FeatureStore.open(old).commits("ok").num_rows == 1  # reused the raw store: nothing extracted twice
