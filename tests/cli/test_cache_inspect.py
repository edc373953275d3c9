"""`sak-cache ls | info | verify | gc` through Typer's test runner."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sak.cli import cache_inspect, common
from sak.cli.cache import app as cache_app
from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import SampleKey


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)
    app = typer.Typer()
    cache_inspect.register(app)
    return app


@pytest.fixture()
def store(demo_cache) -> FeatureStore:
    cache, _ = demo_cache
    report = extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, layers=(1, 3), segment_size=6, limit=9))
    s = FeatureStore.open(report.stores[0], read_only=False)
    w = s.writer(2)  # one failed row, committed
    w.add_failed(SampleKey("f" * 64, "broken_one", "nyud"), "BadImage: broken_one.png: cannot decode")
    w.commit()
    return s


def _flip_first_shard(store: FeatureStore) -> str:
    """Flip 8 bytes a third into the first shard of layer_1 of the first committed segment; returns that segment."""
    seg = store.commits().column("segment_id")[0].as_py()
    shard = next(p for p in (store.path / "segments" / seg / "layer_1" / "c").rglob("*") if p.is_file())
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xA5
    shard.write_bytes(bytes(data))
    return seg


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    return re.sub(r"[\s│┃]+", " ", text)


def test_ls_lists_stores_and_flags_random_init(app, store) -> None:
    res = _run(app, "ls", "--cache", store.path.parent.parent, "--wide")
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert re.search(rf"{store.name} test:tiny random-init:0 \(RANDOM-INIT\) 1,3 8x10 x 32 float16 none 1 \(none\) 9 1 ", text), text
    assert "RANDOM-INIT teacher features" in text


def test_info_shows_spec_stats_and_failures(app, store) -> None:
    res = _run(app, "info", store.name, "--cache", store.path.parent.parent)
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert f"spec_id {store.spec.spec_id}" in text and "layers [1, 3]" in text
    assert re.search(r" 1 720 ", text) and re.search(r" 3 720 ", text)  # 9 rows x 80 positions (8x10: student protocol, 64x80)
    assert "rows: 9 ok, 1 failed" in text and "broken_one nyud 0 BadImage: broken_one.png: cannot decode" in text
    assert "fidelity: none recorded (float16 store" in text


def test_info_and_ls_show_int8_quant_codec_and_fidelity(app, tmp_path) -> None:
    import numpy as np

    from sak.pipeline.store.spec import FeatureSpec

    spec = FeatureSpec(teacher="test:tiny", weights="random-init:0", layers=(1, 3), resolution=(64, 64), resize="squash",
                       mean=(0.5,) * 3, std=(0.5,) * 3, patch_size=8, width=32, grid=(8, 8), dtype="int8",
                       quant="token-channel-offset", codec="lz4")
    s = FeatureStore.create(tmp_path / "cache", spec)
    w = s.writer(2)
    layers = [np.random.default_rng(0).standard_normal((2, 8, 8, 32)).astype(np.float32) for _ in spec.layers]
    w.append([SampleKey(c * 64, c, "src") for c in "ab"], layers)
    w.add_fidelity(1, "raw", 128, 127.9936, 0.99987)
    w.add_fidelity(1, "std", 128, 127.99872, 0.99991)
    w.commit()
    text = _flat(_run(app, "info", s.path).output)
    assert "dtype int8" in text and "quant token-channel-offset" in text and "codec lz4" in text
    assert "per-layer fidelity" in text and " 1 128 0.999950 0.999870 0.999990 0.999910 " in text, text
    assert " 3 0 - - - - " not in text  # layers without a record are left out
    text = _flat(_run(app, "ls", "--cache", tmp_path / "cache", "--wide").output)
    assert "int8 (token-channel-offset) lz4" in text


def test_verify_passes_then_finds_a_flipped_shard(app, store) -> None:
    res = _run(app, "verify", store.path)
    assert res.exit_code == 0 and "ok: 9 committed samples match" in _flat(res.output)
    seg = _flip_first_shard(store)
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1, res.output
    text = _flat(res.output)
    assert "corrupt or missing" in text and seg in text and "the store is damaged" in text


def test_gc_is_a_dry_run_unless_delete(app, store) -> None:
    cache = store.path.parent.parent
    layers = [a[:1] for a in store.read_rows(store.commits().column("segment_id")[0].as_py(), [0, 0]).values()]
    w = store.writer(1)
    w.append([SampleKey("e" * 64, "x", "nyud")], layers)
    w.abort()  # this process's closed writer: garbage
    garbage = store.path / "segments" / w.segment_id
    res = _run(app, "gc", "--cache", cache)
    assert res.exit_code == 0 and garbage.exists()
    assert w.segment_id in res.output
    assert "dry run: 1 item(s)" in _flat(res.output)
    res = _run(app, "gc", "--cache", cache, "--delete")
    assert res.exit_code == 0 and not garbage.exists() and "deleted 1 item(s)" in _flat(res.output)
    assert FeatureStore.open(store.path).verify().ok
    assert "nothing to collect" in _run(app, "gc", "--cache", Path(cache)).output


def _copy_store(store, name: str) -> Path:
    dest = Path(store.path).parent / name
    shutil.copytree(store.path, dest)
    return dest


def test_ls_lists_healthy_stores_and_marks_each_damaged_one(app, store) -> None:
    cache = store.path.parent.parent
    no_spec = _copy_store(store, "tiny-nospec")
    (no_spec / "spec.json").unlink()
    bad_spec = _copy_store(store, "tiny-badspec")
    (bad_spec / "spec.json").write_text("{not json")
    bad_part = _copy_store(store, "tiny-badpart")
    next((bad_part / "manifest").glob("part-*.parquet")).write_bytes(b"garbage")
    res = _run(app, "ls", "--cache", cache, "--wide")
    assert res.exit_code == 1, res.output
    text = _flat(res.output)
    assert re.search(rf"{store.name} test:tiny .* 9 1 ", text), text  # the healthy store is still listed
    assert "tiny-nospec damaged: spec.json is missing" in text
    assert "tiny-badspec damaged: " in text and "spec.json: not valid JSON" in text
    assert "tiny-badpart damaged: " in text and "not a readable Parquet file" in text
    assert "3 damaged store(s)" in text and "Traceback" not in res.output


def test_verify_reports_stats_spec_and_part_problems_with_their_fix(app, store) -> None:
    seg = store.committed_segments()[0]
    (store.path / "stats" / f"{seg}.json").unlink()
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1, res.output
    text = _flat(res.output)
    assert "1 store-level problem(s)" in text and f"stats {store.path}/stats/{seg}.json missing for committed segment" in text
    assert f"fix (stats): `sak-cache verify {store.path} --fix` recomputes the statistics" in text
    spec = store.path / "spec.json"
    spec.unlink()
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1 and "the store is damaged: spec.json is missing" in _flat(res.output), res.output
    res = _run(app, "verify", store.name, "--cache", store.path.parent.parent)  # by name: found although unlisted
    assert res.exit_code == 1 and "the store is damaged: spec.json is missing" in _flat(res.output), res.output
    spec.write_text("[1, 2]")
    res = _run(app, "verify", store.path)
    assert res.exit_code == 1 and "spec.json: not a JSON object" in _flat(res.output), res.output


def test_verify_fix_uncommits_a_flipped_shard_and_prints_the_extract_command(app, store) -> None:
    _flip_first_shard(store)
    bad = len(FeatureStore.open(store.path).verify().corrupt)
    assert bad >= 1
    res = _run(app, "verify", store.path, "--fix")
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert f"repaired {store.path}: uncommitted {bad} damaged sample(s), moved 0 part(s)" in text
    cache = store.path.parent.parent
    command = (f"sak-cache extract --cache {cache} --teacher test:tiny --layers 1,3 --dataset nyud --img-size 64x80 "
               "--orientation exif --random-init --repair")
    assert command in text
    res = _run(app, "verify", store.path)
    assert res.exit_code == 0 and f"ok: {9 - bad} committed samples match" in _flat(res.output), res.output
    # the printed command writes into this very store (not a sibling of another spec) and restores the samples
    res = CliRunner().invoke(cache_app, shlex.split(command)[1:] + ["--limit", "9", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (cache / "features").iterdir()] == [store.path.name]
    res = _run(app, "verify", store.path)
    assert res.exit_code == 0 and "ok: 9 committed samples match" in _flat(res.output), res.output


@pytest.mark.parametrize("damage", ["not json", "version 7", "codec zfoo"])
def test_a_damaged_spec_json_is_a_clear_error_not_a_traceback(app, store, damage) -> None:
    spec = store.path / "spec.json"
    data = json.loads(spec.read_text())
    if damage == "not json":
        spec.write_text("{oops")
    else:
        data.update({"format_version": 7} if damage == "version 7" else {"codec": "zfoo"})
        spec.write_text(json.dumps(data))
    res = _run(app, "info", store.path)
    assert res.exit_code == 2, res.output
    text = _flat(res.output)
    assert "Traceback" not in res.output and f"{spec}:" in text
    want = {"not json": "not valid JSON", "version 7": "format version 7 is not supported", "codec zfoo": "got 'zfoo'"}[damage]
    assert want in text and ("upgrade sak" in text or "restore spec.json from a copy of the store" in text)
