"""`sak-cache index` and `sak-cache demo-data` through Typer's test runner."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sak.cli import cache_index
from sak.pipeline.data.datasets import open_dataset


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    cache_index.register(app)
    return app


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_demo_data_then_index(app, tmp_path):
    res = _run(app, "demo-data", tmp_path / "demo", "--n", 8, "--size", "32x40", "--seed", 3)
    assert res.exit_code == 0, res.output
    assert "wrote 8 scenes (32x40, seed 3)" in res.output
    assert Image.open(tmp_path / "demo" / "images" / "000007.png").size == (40, 32)

    res = _run(app, "index", tmp_path / "demo", "--cache", tmp_path / "cache", "--threads", 2)
    assert res.exit_code == 0, res.output
    for text in ("images ok", "8", "train 6, val 2", "semseg 8, depth 8, normals 8, edge 8",
                 f"index written to {tmp_path / 'cache' / 'datasets' / 'nyud.parquet'}"):
        assert text in res.output
    ds = open_dataset(tmp_path / "cache", "nyud")
    assert len(ds) == 8 and ds.root == (tmp_path / "demo").resolve()


def test_index_with_failures_exits_1_and_lists_them(app, tmp_path):
    root = tmp_path / "photos"
    (root / "val").mkdir(parents=True)
    Image.new("RGB", (5, 4)).save(root / "good.png")
    Image.new("RGB", (5, 4)).save(root / "val" / "good2.png")
    (root / "broken.jpg").write_text("not a jpeg")
    res = _run(app, "index", root, "--cache", tmp_path / "cache", "--name", "mine", "--format", "folder")
    assert res.exit_code == 1, res.output
    assert "1 image(s) failed" in res.output and "broken.jpg" in res.output
    assert "train 1, val 1" in res.output
    table = pq.read_table(tmp_path / "cache" / "datasets" / "mine.parquet")
    assert sorted(table.column("status").to_pylist()) == ["failed", "ok", "ok"]


def test_bad_input_exits_2_with_a_message(app, tmp_path):
    res = _run(app, "index", tmp_path / "nope", "--cache", tmp_path / "cache")
    assert res.exit_code == 2 and "is not a directory" in res.output
    (tmp_path / "d").mkdir()
    res = _run(app, "index", tmp_path / "d", "--name", "../evil")
    assert res.exit_code == 2 and "not allowed" in res.output
    res = _run(app, "demo-data", tmp_path / "x", "--size", "64")
    assert res.exit_code == 2 and "64x80" in res.output


def test_help_teaches_with_examples(app):
    for cmd in ("index", "demo-data"):
        res = _run(app, cmd, "--help")
        assert res.exit_code == 0 and "Examples" in res.output and "sak-cache" in res.output


def test_index_refuses_another_folder_under_an_existing_name_unless_replace(app, tmp_path):
    for folder, n in (("one", 3), ("two", 2)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            Image.new("RGB", (6, 4), (i, n, 0)).save(tmp_path / folder / f"im{i}.png")  # other bytes per folder
    cache = tmp_path / "cache"
    assert _run(app, "index", tmp_path / "one", "--cache", cache, "--name", "photos").exit_code == 0
    res = _run(app, "index", tmp_path / "two", "--cache", cache, "--name", "photos")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert f"dataset 'photos' ({cache / 'datasets' / 'photos.parquet'}) is indexed from {(tmp_path / 'one').resolve()}" in text
    assert "is another folder (-1 removed (im2); ~2 changed (im0, im1)). Pass --replace" in text
    assert len(open_dataset(cache, "photos")) == 3
    res = _run(app, "index", tmp_path / "two", "--cache", cache, "--name", "photos", "--replace")
    assert res.exit_code == 0, res.output
    ds = open_dataset(cache, "photos")
    assert len(ds) == 2 and ds.root == (tmp_path / "two").resolve()
