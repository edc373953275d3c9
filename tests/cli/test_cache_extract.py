"""`sak-cache extract` through Typer's test runner: summary, random-init warning, exit codes, --help."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sak.cli import cache_extract, common
from sak.pipeline.store.catalog import list_stores


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setattr(common.out, "width", 250)
    monkeypatch.setattr(common.console, "width", 250)
    app = typer.Typer()
    cache_extract.register(app)

    @app.callback()
    def _root() -> None:  # keep "extract" as a sub-command
        pass

    return app


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _flat(text: str) -> str:
    return re.sub(r"[\s│]+", " ", text)


def test_extract_from_an_indexed_dataset_then_resume(app, demo_cache) -> None:
    cache, _ = demo_cache
    args = ("extract", "-t", "test:tiny", "-t", "test:tiny2", "--random-init", "--dataset", "nyud", "--cache", cache,
            "--layers", "1,3", "--batch-size", 4, "--segment-size", 5, "--dtype", "bfloat16")
    res = _run(app, *args)
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "WARNING: --random-init" in text and "RANDOM-INIT" in text
    assert re.search(r"test:tiny \(RANDOM-INIT\) 12 0 0 ", text), text
    assert re.search(r"test:tiny2 \(RANDOM-INIT\) 12 0 0 ", text), text
    stores = list_stores(cache)
    assert [s.spec.dtype for s in stores] == ["bfloat16", "bfloat16"]
    assert [s.commits().num_rows for s in stores] == [12, 12]
    res = _run(app, *args)
    assert res.exit_code == 0, res.output
    assert re.search(r"test:tiny \(RANDOM-INIT\) 0 12 0 ", _flat(res.output))


def test_extract_with_data_indexes_first_and_exits_1_on_failures(app, tmp_path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(root / f"img{i}.png")
    noise = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "broken.png")
    (root / "broken.png").write_bytes((root / "broken.png").read_bytes()[:400])
    res = _run(app, "extract", "-t", "test:tiny", "--random-init", "--data", root, "--cache", tmp_path / "cache")
    assert res.exit_code == 1, res.output
    text = _flat(res.output)
    assert re.search(r"test:tiny \(RANDOM-INIT\) 3 0 1 ", text), text
    assert "1 sample(s) failed" in text and "broken" in text and "--retry-failed" in text
    assert (tmp_path / "cache" / "datasets" / "photos.parquet").exists()


def test_bad_arguments_are_refused_cleanly(app, demo_cache) -> None:
    cache, _ = demo_cache
    res = _run(app, "extract", "-t", "test:tiny", "--random-init", "--cache", cache, "--views", 3)
    assert res.exit_code == 2 and "--aug sak" in _flat(res.output)
    res = _run(app, "extract", "-t", "test:unknown", "--cache", cache)
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


def test_help_explains_views_against_feature_space_flip(app) -> None:
    res = _run(app, "extract", "--help")
    assert res.exit_code == 0
    text = _flat(res.output)
    for phrase in ("exact replay is the faithful path", "feature-space flip", "--views", "--aug", "--retry-failed", "--scheduler"):
        assert phrase in text, phrase


def test_img_size_and_input_protocol_options(app, demo_cache) -> None:
    cache, _ = demo_cache
    base = ("extract", "-t", "test:tiny", "--random-init", "--dataset", "nyud", "--cache", cache, "--limit", 2)
    assert _run(app, *base, "--img-size", "72x96").exit_code == 0
    assert _run(app, *base, "--input-protocol", "native").exit_code == 0
    specs = sorted((s.spec.input_protocol, s.spec.img_size, s.spec.grid) for s in list_stores(cache))
    assert specs == [("native", None, (8, 8)), ("student", (72, 96), (9, 12))]
    bad = _run(app, *base, "--img-size", "72x")
    assert bad.exit_code != 0 and "--img-size" in _flat(bad.output) and "448x576" in _flat(bad.output)
    big = _run(app, *base, "--img-size", "32x32")
    assert big.exit_code != 0 and "--aug sak --aug-crop 32x32" in _flat(big.output)


def test_codec_min_cosine_and_rates_in_the_summary(app, demo_cache) -> None:
    cache, _ = demo_cache
    res = _run(app, "extract", "-t", "test:tiny", "--random-init", "--dataset", "nyud", "--cache", cache, "--layers", "1",
               "--batch-size", 4, "--codec", "lz4", "--min-cosine", "0.999", "--encode-threads", 2)
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "GB/s" in text and "MB disk" in text and "x2" in text  # writer: busy time x the 2 encode threads
    assert [s.spec.codec for s in list_stores(cache)] == ["lz4"]
    bad = _run(app, "extract", "-t", "test:tiny", "--random-init", "--dataset", "nyud", "--cache", cache, "--quant", "token")
    assert bad.exit_code != 0 and "--dtype int8" in _flat(bad.output)
    from rich.console import Console

    from sak.cli.cache_extract import _summary, report_record
    from sak.pipeline.extract.job import ExtractConfig, extract

    report = extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, datasets=("nyud",)))
    narrow = Console(width=80, record=True, file=io.StringIO())
    narrow.print(_summary(report_record(report, ["test:tiny"], str(cache))))
    lines = narrow.export_text().splitlines()
    assert lines and all(len(line) <= 80 for line in lines)  # the summary fits 80 columns
    assert "…" not in "".join(lines), "\n".join(lines)  # and nothing in it is truncated


def test_help_teaches_int8_and_codecs(app) -> None:
    text = _flat(_run(app, "extract", "--help").output)
    for words in ("--dtype", "int8", "half the bytes", "--quant", "token-channel", "--codec", "none", "zstd", "--min-cosine",
                  "--force-quant", "--encode-threads"):
        assert words in text, words
