"""`sak-train describe`: parameter table / JSON without downloading weights."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from sak.cli import train_describe


def _app() -> typer.Typer:
    app = typer.Typer()
    train_describe.register(app)

    @app.callback()
    def _root() -> None:  # keep "describe" a sub-command
        pass

    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["describe", *args])


def test_describe_json_vit_b_three_teachers():
    r = _run("--backbone", "vit_base_patch16_384", "--teacher", "dinov2,sam,clip",
             "--tasks", "semseg,depth,normals,edge", "--img-size", "448x576", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    for key in ("backbone", "adapters", "routers", "heads", "aligners", "total"):
        assert isinstance(data[key], int)
    assert data["adapters"] == 11_539_047  # 3 teachers * 13 adapters * 295,873 (paper: 11.5M)
    assert data["adapters_per_teacher"] == {"dinov2": 3_846_349, "sam": 3_846_349, "clip": 3_846_349}
    assert data["aligners"] == 0  # teacher width 768 == ViT-B width: no aligner (official aligner: False)
    assert data["config"]["img_size"] == [448, 576]
    parts = ("backbone", "adapters", "norms", "routers", "heads", "aligners")
    assert data["total"] == sum(data[k] for k in parts)


def test_describe_table_and_width_override():
    r = _run("--backbone", "vit_small_patch16_384", "--teacher", "dinov2,mine", "--teacher-widths", "mine=1024",
             "--tasks", "semseg:21,edge")
    assert r.exit_code == 0, r.output
    assert "adapters (TSAP)" in r.output and "mine" in r.output and "total" in r.output
    j = json.loads(_run("--backbone", "vit_small_patch16_384", "--teacher", "dinov2,mine",
                        "--teacher-widths", "mine=1024", "--tasks", "semseg:21,edge", "--json").output)
    assert j["aligners"] == 4 * (384 * 768 + 768) + 4 * (384 * 1024 + 1024)  # ViT-S (384) needs aligners


def test_describe_unknown_teacher_is_a_clean_error():
    r = _run("--teacher", "nonesuch", "--json")
    assert r.exit_code == 2
    assert "--teacher-widths" in r.output and "Traceback" not in r.output
