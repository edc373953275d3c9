"""`sak-cache datasets`, `demo-data --format`, next-step hints and the nested-layout refusal through the CLI
(issue 15 demo data, issue 16 items 6 and 9)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from sak.cli import cache_index
from sak.pipeline.data.listing import DatasetInfo, describe_datasets

#: sha256 of files `sak-cache demo-data DIR` wrote on main before `--format` existed (n=96, 64x80, seed 0).
NYUD_MAIN = {
    "images/000000.png": "0f4170e326073d8e2acfe61a7b7691f36f0de5b1cdbe26e9b5af6e7798eb0acb",
    "segmentation/000005.png": "743bc78edde0434c0ac21afb0b4748ea95139336d2676dd136cfdbb47c7a9606",
    "depth/000003.npy": "c4479def71877d7d8c3b4dc283be6a16e1123a94dc5897edaa06a109c1efffa2",
    "normals/000095.png": "d8d7aa71c56cd8e6b0af6139dea357ab2484b536e3209612232a4c93c165533a",
    "edge/000042.png": "ffb38de019377a4aa644ea4f5d0b60608cec194cf17036f342d6959f33cc189a",
    "gt_sets/train.txt": "2a11ff74b6006bdb38fee1dc0cb3442fb92a54b5d1c3954d131579267df0788c",
    "gt_sets/val.txt": "17a345e2fbfe899a851ae04ddd8337e3f5d9a123e5e26ea32ad290fc7b364194",
}


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    cache_index.register(app)
    return app


def _root_lines(root):
    """A root that does not fit beside its label at 80 columns goes whole onto its own line."""
    path = str(root.resolve())
    return [f"  root    {path}"] if len(path) + 10 <= 80 else ["  root", f"    {path}"]


def _run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def test_demo_data_default_is_still_main_s_nyud_bytes(app, tmp_path):
    res = _run(app, "demo-data", tmp_path / "demo")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [f"wrote 96 scenes (64x80, seed 0) in the NYUD-v2 layout to {tmp_path / 'demo'}",
                                       f"next: sak-cache index {tmp_path / 'demo'} --cache ./cache --name nyud"]
    assert {rel: hashlib.sha256((tmp_path / "demo" / rel).read_bytes()).hexdigest() for rel in NYUD_MAIN} == NYUD_MAIN


def test_demo_data_formats_then_index_then_datasets(app, tmp_path):
    cache = tmp_path / "cache"
    for fmt, size, tail in (("pascal", "72x96", "--name pascal"), ("folder", "64x64", "--format folder --name photos")):
        res = _run(app, "demo-data", tmp_path / f"d_{fmt}", "--format", fmt, "--n", 4)
        assert res.exit_code == 0, res.output
        assert f"({size}, seed 0)" in res.output
        assert f"next: sak-cache index {tmp_path / f'd_{fmt}'} --cache ./cache {tail.replace('photos', f'd_{fmt}')}" \
            in res.output
    res = _run(app, "index", tmp_path / "d_pascal", "--cache", cache, "--threads", 1)
    assert res.exit_code == 0, res.output
    assert "semseg 4, normals 4, edge 4, parts 4, saliency 4" in res.output
    assert res.output.splitlines()[-1] == (f"next: sak-cache extract -t <teacher> -d pascal --cache {cache}   "
                                           "(sak-cache teachers lists the teacher names)")
    assert _run(app, "index", tmp_path / "d_folder", "--cache", cache, "--name", "photos").exit_code == 0
    res = _run(app, "datasets", "--cache", cache)
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        "pascal  pascal  4 ok, 0 failed",
        *_root_lines(tmp_path / "d_pascal"),
        "  splits  train 3, val 1",
        "  labels  semseg 4, normals 4, edge 4, parts 4, saliency 4",
        "photos  folder  4 ok, 0 failed",
        *_root_lines(tmp_path / "d_folder"),
        "  splits  train 3, val 1",
        "  labels  none (images only)",
    ]


def test_datasets_at_80_columns_folds_long_paths_and_marks_a_moved_root(app, tmp_path):
    root = tmp_path / ("a_rather_long_folder_name_" * 3) / "nyud_demo_with_a_long_name"
    cache = tmp_path / "cache"
    assert _run(app, "demo-data", root, "--n", 2, "--size", "8x8").exit_code == 0
    assert _run(app, "index", root, "--cache", cache, "--name", "nyud_demo_with_a_much_longer_name_0123").exit_code == 0
    shutil.move(root, tmp_path / "moved")
    res = _run(app, "datasets", "--cache", cache)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[:3] == ["nyud_demo_with_a_much_longer_name_0123  nyud  2 ok, 0 failed", "  root",
                         f"    {root.resolve()}"]  # whole, on its own line
    text = " ".join(" ".join(lines[3:]).split())
    assert ("(root missing) if the images moved, index the new folder: sak-cache index NEWDIR --cache "
            f"{cache} --name nyud_demo_with_a_much_longer_name_0123 --replace") in text
    assert all(len(line) <= 80 for line in lines if str(root.resolve()) not in line and str(cache) not in line)

    res = _run(app, "datasets", "--cache", cache, "--json")
    assert res.exit_code == 0, res.output
    records = json.loads(res.output)
    assert [DatasetInfo.from_dict(r) for r in records] == describe_datasets(cache)
    assert records == [{"name": "nyud_demo_with_a_much_longer_name_0123",
                        "index": str(cache / "datasets" / "nyud_demo_with_a_much_longer_name_0123.parquet"),
                        "format": "nyud", "root": str(root.resolve()), "root_exists": False, "images_ok": 2,
                        "images_failed": 0, "splits": {"train": 1, "val": 1},
                        "labels": {"semseg": 2, "depth": 2, "normals": 2, "edge": 2}, "error": None}]


def test_datasets_of_an_empty_cache_and_an_unreadable_index(app, tmp_path):
    res = _run(app, "datasets", "--cache", tmp_path / "c")
    assert res.exit_code == 0 and "no datasets indexed in" in res.output and "sak-cache index DIR --cache" in res.output
    (tmp_path / "c" / "datasets").mkdir(parents=True)
    (tmp_path / "c" / "datasets" / "broken.parquet").write_bytes(b"not parquet")
    res = _run(app, "datasets", "--cache", tmp_path / "c")
    assert res.exit_code == 1 and res.output.startswith("broken  unreadable index\n  error ")


def test_index_of_a_parent_folder_names_the_commands_with_this_cache(app, tmp_path):
    for fmt in ("nyud", "pascal"):
        assert _run(app, "demo-data", tmp_path / "data" / fmt.upper(), "--format", fmt, "--n", 2,
                    "--size", "8x8").exit_code == 0
    res = _run(app, "index", tmp_path / "data", "--cache", tmp_path / "c")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert f"sak-cache index {tmp_path / 'data' / 'NYUD'} --format nyud --cache {tmp_path / 'c'}" in text
    assert f"sak-cache index {tmp_path / 'data' / 'PASCAL'} --format pascal --cache {tmp_path / 'c'}" in text
    assert not (tmp_path / "c" / "datasets").exists()


def test_demo_data_unknown_format(app, tmp_path):
    res = _run(app, "demo-data", tmp_path / "x", "--format", "coco")
    assert res.exit_code == 2 and "choose one of nyud, pascal, folder (--format)" in res.output
