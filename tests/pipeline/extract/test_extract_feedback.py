"""Extraction feedback (issue 16 item 7): the plan before the first image, image-granularity progress, --dry-run
writing nothing, and no empty store folder left behind by a run that fails before its first commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sak.pipeline.extract import segment
from sak.pipeline.extract.dryrun import dry_run
from sak.pipeline.extract.job import ExtractConfig, extract, sample_bytes
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.spec import FeatureSpec


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = {"cache": str(cache), "teachers": ("test:tiny",), "random_init": True, "datasets": ("nyud",), "device": "cpu", "io_threads": 1}
    return ExtractConfig(**{**base, **kw})


def test_a_run_that_fails_in_its_first_batch_leaves_no_store_folder(demo_cache, monkeypatch) -> None:
    cache, _ = demo_cache

    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first forward (or any failure before the first commit)

    monkeypatch.setattr(segment, "forward", broken)
    with pytest.raises(KeyboardInterrupt):
        extract(_cfg(cache))
    assert not (cache / "features").exists()  # neither the store nor an empty features/ folder
    assert sorted(p.name for p in cache.iterdir()) == ["datasets"]


def test_a_failed_run_keeps_a_store_that_has_commits(demo_cache, monkeypatch) -> None:
    cache, _ = demo_cache
    extract(_cfg(cache, limit=4, segment_size=4))
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(segment, "forward", broken)
    with pytest.raises(RuntimeError):
        extract(_cfg(cache))
    assert calls and [s.commits().num_rows for s in list_stores(cache)] == [4]  # the earlier run's work is kept


def test_progress_reports_the_plan_then_each_decoded_image_then_each_batch(demo_cache) -> None:
    cache, _ = demo_cache
    events: list[tuple[int, dict]] = []
    extract(_cfg(cache, batch_size=5, limit=7, layers=(1, 3)), progress=lambda n, **info: events.append((n, info)))
    first_n, first = events[0]
    assert first_n == 0 and first["total"] == 7
    (t,) = first["plan"]["teachers"]
    per = 8 * 10 * 32 * 2 * 2  # grid 8x10 (64x80 px, patch 8) x width 32 x 2 layers x float16
    assert (t["bytes_per_sample"], t["samples"], t["bytes"], first["plan"]["bytes"]) == (per, 7, 7 * per, 7 * per)
    kinds = ["decoded" if "decoded" in info else "batch" for n, info in events[1:]]
    assert kinds == ["decoded"] * 5 + ["batch"] + ["decoded"] * 2 + ["batch"]  # one image at a time, then its batch
    assert [n for n, info in events[1:] if "decoded" not in info] == [5, 2]
    assert sum(info["bytes"] for n, info in events if "bytes" in info) == 7 * per  # the plan's bytes were exact


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_sample_bytes_is_the_sum_of_the_stored_arrays(dtype) -> None:
    spec = FeatureSpec(teacher="test:tiny", weights="random-init:0", layers=(1, 3), resolution=(64, 64), resize="squash",
                       mean=(0.5,) * 3, std=(0.5,) * 3, patch_size=8, width=32, grid=(8, 8), num_prefix_tokens=1,
                       keep_prefix=True, dtype=dtype, quant="token" if dtype == "int8" else None)
    item = {"float16": 2, "float32": 4, "int8": 1}[dtype]
    prefix = 2 * 1 * 32 * (2 if dtype == "int8" else item)  # prefix tokens: float16 in int8 stores
    scales = 2 * 8 * 8 * 4 if dtype == "int8" else 0  # token scales: one float32 per token and layer
    assert sample_bytes(spec) == 2 * 8 * 8 * 32 * item + prefix + scales


def test_dry_run_with_data_indexes_in_memory_and_writes_nothing(tmp_path, demo_nyud) -> None:
    cache = tmp_path / "cache"
    rep = dry_run(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, data=str(demo_nyud), device="cpu",
                                batch_size=4, io_threads=1))
    assert not cache.exists()  # no dataset index, no store, no claim
    (t,) = rep.plan["teachers"]
    assert (rep.plan["images"], rep.plan["samples"], rep.measured) == (12, 12, 4)
    assert t["bytes_per_sample"] == 8 * 10 * 32 * 4 * 2 == rep.measured_bytes[0]
    assert rep.images_per_s > 0 and rep.estimate_seconds == pytest.approx(12 / rep.images_per_s)


def test_dry_run_counts_what_is_already_stored(demo_cache) -> None:
    cache, _ = demo_cache
    extract(_cfg(cache, limit=5))
    rep = dry_run(_cfg(cache, batch_size=3))
    (t,) = rep.plan["teachers"]
    assert (t["samples"], t["reused"], rep.measured) == (7, 5, 3)
    assert [s.commits().num_rows for s in list_stores(cache)] == [5]
