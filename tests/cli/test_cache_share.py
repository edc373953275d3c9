"""`sak-cache extract` reuses content already in a shared cache; `ls` shows who created a store;
`compact` and `copy` (old name `export`) through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sak.cli import cache_extract, cache_inspect, cache_share, common
from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.feature_store import FeatureStore


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)
    app = typer.Typer()
    for mod in (cache_extract, cache_inspect, cache_share):
        mod.register(app)
    return app


def _run(app, *args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


EXTRACT = ("extract", "-t", "test:tiny", "--random-init", "--device", "cpu", "--segment-size", "4", "--threads", "1")


def test_same_images_under_a_second_dataset_are_reused_not_extracted(app, demo_cache, demo_nyud) -> None:
    cache, _ = demo_cache
    write_dataset_index(cache, "nyud_copy", index_dataset(demo_nyud, name="nyud_copy", fmt="nyud", workers=1), demo_nyud)
    first = _run(app, *EXTRACT, "--dataset", "nyud", "--cache", cache)
    assert first.exit_code == 0, first.output
    second = _run(app, *EXTRACT, "--dataset", "nyud_copy", "--cache", cache)
    assert second.exit_code == 0, second.output
    assert "test:tiny: reused 12 sample(s) already in the cache" in second.output
    (store,) = list_stores(cache)
    assert store.commits().num_rows == 12 and store.raw_commits().num_rows == 12  # nothing extracted twice
    assert set(store.commits().column("source").to_pylist()) == {"nyud"}

    listing = _run(app, "ls", "--cache", cache)
    assert listing.exit_code == 0 and "created" in listing.output
    assert re.search(r"\w+@\S+ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", listing.output), listing.output

    compacted = _run(app, "compact", store.name, "--cache", cache, "--target-rows", "100")
    assert compacted.exit_code == 0, compacted.output
    assert "compacted 3 segments into 1 (12 rows" in compacted.output
    assert len(FeatureStore.open(store.path).committed_segments()) == 1

    sample_file = cache.parent / "samples.txt"
    sample_file.write_text("# two samples\n" + "\n".join(store.commits().column("sample_id").to_pylist()[:2]) + "\n")
    target = cache.parent / "laptop-cache"
    exported = _run(app, "copy", store.name, "--cache", cache, "--to", target, "--samples", sample_file)
    assert exported.exit_code == 0, exported.output
    assert "copied 2 rows" in exported.output and "reused 0" in exported.output
    assert "dataset index nyud: 2 image(s)" in exported.output
    again = _run(app, "export", store.name, "--cache", cache, "--to", target)  # the old name: still works, warned
    assert again.exit_code == 0, again.output
    assert "sak-cache export is deprecated and will be removed: use sak-cache copy" in again.output
    assert "copied 10 rows" in again.output and "reused 2" in again.output and "dataset index nyud: 12 image(s)" in again.output
    (copy,) = list_stores(target)
    assert copy.name == store.name and copy.commits().num_rows == 12 and copy.verify().ok


@pytest.mark.parametrize("damage", ["no zarr.json", "unknown codec"])
def test_an_unopenable_layer_array_is_store_corrupt_naming_the_file(app, demo_cache, damage) -> None:
    cache, _ = demo_cache
    assert _run(app, *EXTRACT, "--dataset", "nyud", "--cache", cache, "--limit", "4").exit_code == 0
    (store,) = list_stores(cache)
    seg = store.committed_segments()[0]
    meta = Path(store.path, "segments", seg, "layer_1", "zarr.json")
    if damage == "no zarr.json":
        meta.unlink()
    else:
        data = json.loads(meta.read_text())
        data["codecs"][0]["configuration"]["codecs"].append({"name": "zfoo"})
        meta.write_text(json.dumps(data))
    res = _run(app, "copy", store.name, "--cache", cache, "--to", cache.parent / "copy")
    assert res.exit_code == 2, res.output
    text = re.sub(r"\s+", " ", res.output)
    assert "Traceback" not in res.output and res.exception is not None and isinstance(res.exception, SystemExit)
    assert f"{meta}ofcommittedsegment{seg}cannotbeopened" in text.replace(" ", "")  # rich wraps long paths
    assert f"sak-cache verify {store.path} --fix" in text and "--repair" in text
