"""`sak-cache teachers`: built-in teachers with exact metadata, readable at 80 columns, JSON equal to the table, and a
third-party plugin package (built and pip-installed by the test) listed and used by `extract`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sak.cli.cache import app
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.teachers import list_teachers

SAK_CACHE = str(Path(sys.executable).with_name("sak-cache"))


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})


def test_the_table_lists_every_teacher_with_its_metadata_uncut_at_80_columns() -> None:
    res = _run("teachers")
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and max(len(line) for line in res.output.splitlines()) <= 80
    lines = res.output.splitlines()
    tiny = next(line for line in lines if "test:tiny " in line)
    assert [c.strip() for c in tiny.split("│")[1:8]] == ["test:tiny", "32", "8", "4", "0,1,2,3", "64x64", "built-in"]
    for alias, full in (("dinov2", "timm:vit_base_patch14_dinov2.lvd142m"),
                        ("clip-l", "timm:vit_large_patch14_clip_336.laion2b_ft_in12k_in1k")):
        assert any(line.split() == [alias, "=", full] for line in lines), alias  # full names on their own line, whole


def test_json_holds_every_registered_name_with_the_same_metadata() -> None:
    res = _run("teachers", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [r["name"] for r in data["teachers"]] == list(list_teachers())
    tiny = next(r for r in data["teachers"] if r["name"] == "test:tiny")
    assert tiny == {"name": "test:tiny", "teacher": "test:tiny", "role": "", "width": 32, "patch_size": 8, "depth": 4,
                    "default_layers": [0, 1, 2, 3], "input_size": [64, 64], "resize": "squash", "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5], "prefix_tokens": 1, "from": "built-in"}
    assert {r["prefix"]: r["from"] for r in data["sources"]} == {"timm": "built-in", "open_clip": "built-in", "test": "built-in"}


PLUGIN = '''
"""A third-party teacher family for sak: `toy:mini`, a 2-block ViT (width 24, patch 8), random-init."""
from sak.manifests.errors import TeacherUnavailable
from sak.pipeline.teachers import Preprocess, TeacherInfo, TeacherSource
from sak.pipeline.teachers.timm_teacher import wrap_timm_model
from sak.pipeline.teachers.weights import random_init_id, seeded

INFO = TeacherInfo(name="toy:mini", width=24, patch_size=8, depth=2, default_layers=(0, 1), num_prefix_tokens=1,
                   preprocess=Preprocess(resolution=(32, 32), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def describe(model):
    if model != "mini":
        raise TeacherUnavailable(f"unknown toy teacher toy:{model}; known: toy:mini")
    return INFO


def build(model, request):
    from timm.models.vision_transformer import VisionTransformer

    info = describe(model)
    size = request.resolution or info.input_size[0]
    with seeded(request.seed):
        net = VisionTransformer(img_size=request.img_size or size, patch_size=8, num_classes=0, embed_dim=24, depth=2,
                                num_heads=2)
    return wrap_timm_model(net, name=info.name, weights_id=random_init_id(request.seed), resolution=(size, size),
                           mean=info.preprocess.mean, std=info.preprocess.std, img_size=request.img_size)


SOURCE = TeacherSource(prefix="toy", build=build, describe=describe)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "sak-toyplug"
version = "0.1.0"

[project.entry-points."sak.teacher_sources"]
toy = "toyplug:SOURCE"

[project.entry-points."sak.teachers"]
toymini = "toyplug:INFO"

[tool.setuptools]
py-modules = ["toyplug"]
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The plugin package built and installed with pip (into a target folder put on PYTHONPATH: the test venv stays
    as it was)."""
    src, target = tmp_path_factory.mktemp("toyplug-src"), tmp_path_factory.mktemp("toyplug-site")
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (src / "toyplug.py").write_text(textwrap.dedent(PLUGIN))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert list(target.glob("sak_toyplug-0.1.0.dist-info"))
    return {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "80"}


def test_an_installed_plugin_is_listed_with_its_metadata_and_origin(plugin_env) -> None:
    res = subprocess.run([SAK_CACHE, "teachers", "--json"], env=plugin_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    toy = next(r for r in data["teachers"] if r["name"] == "toymini")
    assert (toy["teacher"], toy["width"], toy["patch_size"], toy["depth"], toy["default_layers"], toy["input_size"]) == (
        "toy:mini", 24, 8, 2, [0, 1], [32, 32])
    assert toy["from"] == "plugin sak-toyplug (toyplug:INFO)"
    assert {r["prefix"]: r["from"] for r in data["sources"]}["toy"] == "plugin sak-toyplug (toyplug:SOURCE)"
    table = subprocess.run([SAK_CACHE, "teachers"], env=plugin_env, capture_output=True, text=True, timeout=300)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and any(line.split() == ["toymini", "=", "toy:mini"] for line in lines)
    row = next(line for line in lines if line.startswith("│ toymini"))
    assert [c.strip() for c in row.split("│")[1:8]] == ["toymini", "24", "8", "2", "0,1", "32x32", "sak-toyplug"]
    assert "…" not in table.stdout and max(map(len, lines)) <= 80


def test_extract_runs_a_plugin_teacher_by_its_name(plugin_env, demo_nyud, tmp_path) -> None:
    cache = tmp_path / "cache"
    res = subprocess.run([SAK_CACHE, "extract", "-t", "toymini", "--random-init", "--data", str(demo_nyud), "--cache", str(cache),
                          "--limit", "4", "--device", "cpu", "--input-protocol", "native"],
                         env=plugin_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    [store] = list_stores(cache)
    assert store.spec.teacher == "toy:mini" and store.spec.width == 24 and store.spec.grid == (4, 4)
    assert store.commits("ok").num_rows == 4
