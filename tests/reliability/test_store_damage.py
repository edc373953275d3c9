"""Corrupted bytes, shards, parts, stats and spec: verify reports each, ls marks the store, repair fixes it.

One extraction of 12 demo images in 4 segments of 3, each segment damaged a different way; then
`sak-cache extract ... --repair` must give back a store that verifies clean and whose every sample
is bitwise what the clean extraction stored (read_rows compared per image).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sak.cli import cache_extract, cache_inspect, common
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.feature_store import FeatureStore

pytestmark = pytest.mark.reliability

EXTRACT = ("extract", "-t", "test:tiny", "--random-init", "--device", "cpu", "--segment-size", "3", "--io-threads", "1",
           "--layers", "1,3", "--dataset", "nyud")


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)
    app = typer.Typer()
    for mod in (cache_extract, cache_inspect):
        mod.register(app)
    return app


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    return re.sub(r"[\s│┃]+", " ", text)


def _features(store: FeatureStore) -> dict[str, dict[int, np.ndarray]]:
    t = store.commits()
    return {sha: store.read_rows(seg, [row]) for sha, seg, row in
            zip(*(t.column(c).to_pylist() for c in ("image_sha256", "segment_id", "row")), strict=True)}


def _shards(store: FeatureStore, seg: str, array: str) -> list[Path]:
    return sorted(p for p in Path(store.path, "segments", seg, array, "c").rglob("*") if p.is_file())


@pytest.fixture()
def extracted(app, demo_cache) -> tuple[Path, FeatureStore]:
    cache, _ = demo_cache
    res = _run(app, *EXTRACT, "--cache", cache)
    assert res.exit_code == 0, res.output
    (store,) = list_stores(cache)
    assert len(store.committed_segments()) == 4 and store.commits().num_rows == 12
    return cache, store


def test_every_kind_of_damage_is_reported_then_extract_repair_restores_the_clean_bytes(app, extracted) -> None:
    cache, store = extracted
    clean, clean_stats = _features(store), store.stats()
    s0, s1, s2, s3 = store.committed_segments()
    # 1. flipped bytes in one shard of s0: one sample (codec none: the bytes of one chunk)
    (shard,) = _shards(store, s0, "layer_1")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x5A
    shard.write_bytes(bytes(data))
    # 2. a deleted shard of s1: all its 3 samples
    for p in _shards(store, s1, "layer_3"):
        p.unlink()
    # 3. a deleted stats file of s2 (its samples are fine)
    Path(store.path, "stats", f"{s2}.json").unlink()
    # 4. an unreadable commit part of s3: its 3 samples vanish from the store until re-extracted
    Path(store.part_path(s3)).write_bytes(b"PAR1 torn")

    report = FeatureStore.open(store.path).verify()
    assert sorted({(seg, row) for seg, row, _, _ in report.corrupt}) == [(s0, 1), (s1, 0), (s1, 1), (s1, 2)]
    assert [(k, Path(w).name) for k, w, _ in report.problems] == [("part", f"part-{s3}.parquet"), ("stats", f"{s2}.json")]
    assert report.checked == 9  # s3's rows are unknown while its part is unreadable

    listing = _run(app, "ls", "--cache", cache)
    assert listing.exit_code == 1 and f"{store.name} damaged: " in _flat(listing.output), listing.output
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1 and "4 of 9 samples are corrupt or missing" in _flat(res.output), res.output

    res = _run(app, *EXTRACT, "--cache", cache, "--repair")
    assert res.exit_code == 0, res.output
    repaired = FeatureStore.open(store.path)
    after = repaired.verify()
    assert after.ok and after.checked == 12 and after.problems == []
    assert Path(store.path, "manifest", "damaged", f"part-{s3}.parquet").read_bytes() == b"PAR1 torn"
    got = _features(repaired)
    assert sorted(got) == sorted(clean)
    for sha in clean:  # 4 re-extracted (s0 row 1, s1), 3 from the moved part, 5 untouched: all bitwise equal
        for layer in clean[sha]:
            np.testing.assert_array_equal(got[sha][layer], clean[sha][layer])
    for layer, st in repaired.stats().items():
        assert st.count == clean_stats[layer].count == 12 * 80
        np.testing.assert_allclose(st.mean, clean_stats[layer].mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st.m2, clean_stats[layer].m2, rtol=1e-6)
    assert _run(app, "ls", "--cache", cache).exit_code == 0


def test_a_damaged_spec_is_reported_by_verify_and_ls_and_never_repaired_blindly(app, extracted) -> None:
    cache, store = extracted
    spec = Path(store.path, "spec.json")
    original = spec.read_text()
    data = json.loads(original)
    data["grid"] = [8, 5]
    spec.write_text(json.dumps(data))
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1, res.output
    text = _flat(res.output)
    assert "spec.json was edited" in text and "fix (spec): restore spec.json from a copy" in text
    parts = sorted(p.name for p in Path(store.path, "manifest").iterdir())
    res = _run(app, "verify", store.path, "--fix")
    assert res.exit_code == 2 and "A repair cannot fix the spec; nothing was changed" in _flat(res.output), res.output
    assert sorted(p.name for p in Path(store.path, "manifest").iterdir()) == parts
    spec.unlink()
    res = _run(app, "ls", "--cache", cache)
    assert res.exit_code == 1 and f"{store.name} damaged: spec.json is missing" in _flat(res.output), res.output
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1 and "the store is damaged: spec.json is missing" in _flat(res.output)
    spec.write_text(original)
    assert FeatureStore.open(store.path).verify().ok
    shutil.rmtree(store.path)
    assert _run(app, "ls", "--cache", cache).exit_code == 0
