"""Every `sak-cache` command at 80 columns (issue 16 item 1): no identifier is ever cut, and every --json parses
and carries what the table shows.

The cache lives under a path longer than 80 characters, its dataset has a long name, and its two stores come
from teachers with long names: timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k (random-init) and a test teacher
registered under a 50-character name (a store name over 60 characters). Identifiers must appear unbroken in the
output (a line of their own that the terminal wraps, or a cell wide enough); no ellipsis anywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sak.cli import common
from sak.cli.cache import app as cache_app
from sak.cli.render import mb
from sak.cli.train import app as train_app
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.teachers import test_teacher

TIMM = "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"
LONG_MODEL = "tiny_teacher_registered_under_a_long_name_for_tests"
LONG = f"test:{LONG_MODEL}"
DATASET = "nyud_depth_v2_indexed_under_a_long_dataset_name"
ELLIPSIS = "…"


def _run(*args: object, input: str | None = None, width: int = 80):
    common.out.width = common.console.width = width  # the module consoles were made at import: set their width too
    return CliRunner().invoke(cache_app, [str(a) for a in args], env={"COLUMNS": str(width)}, terminal_width=width, input=input)


def _ok(res) -> str:
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def assert_readable(text: str, *names: str) -> None:
    """No ellipsis, and every name somewhere in ``text``: unbroken, or folded at the line's end (a plain line that rich
    broke at the width: joining the lines gives it back). A name cut by table borders or shortened fails."""
    assert ELLIPSIS not in text, text
    joined = text.replace("\n", "")
    for name in names:
        assert name in text or name in joined, f"{name!r} is cut or missing in:\n{text}"


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory, demo_nyud: Path):
    """(cache, stores by teacher, extract output, extract --json) of a cache with long names, made through the CLI at 80 columns."""
    base = tmp_path_factory.mktemp("narrow")
    cache = base / "a_folder_with_a_long_name_for_the_lab_cache" / "features_of_the_demo_dataset_cache"
    assert len(str(cache)) > 80
    width = (common.out._width, common.console._width)
    with pytest.MonkeyPatch.context() as mp:
        info = replace(test_teacher.TINY, name=LONG)
        mp.setitem(test_teacher.TEST_TEACHERS, LONG_MODEL, info)
        index = _run("index", demo_nyud, "--cache", cache, "--name", DATASET)
        assert_readable(_ok(index), DATASET)
        res = _run("extract", "-t", f"{TIMM},{LONG}", "--random-init", "--device", "cpu", "--cache", cache, "--limit", 6,
                   "--threads", 1, "-b", 4)
        text = _ok(res)
        as_json = _run("extract", "-t", LONG, "--random-init", "--device", "cpu", "--cache", cache, "--limit", 8, "--json")
        yield cache, {s.spec.teacher: s for s in list_stores(cache)}, text, as_json
    common.out._width, common.console._width = width


def test_extract_names_every_teacher_store_and_dataset_in_full_and_prints_the_fit_command(narrow) -> None:
    cache, stores, text, _ = narrow
    assert len(stores[LONG].name) > 60
    assert_readable(text, TIMM, LONG, str(stores[TIMM].path), str(stores[LONG].path))
    assert f"next: sak-train fit --cache {cache} -d {DATASET} -t {TIMM} -t {LONG}" in text
    # the plan before the first image: exact bytes per sample from the spec (grid x width x layers x 2 bytes)
    assert f"{TIMM}: 6 samples x 30,720 bytes (4x5 x 192 x 4 layers x float16)" in text  # 64x80 px, patch 16: 4x5
    assert f"{LONG}: 6 samples x 20,480 bytes (8x10 x 32 x 4 layers x float16)" in text  # patch 8: 8x10, width 32


def test_extract_json_is_one_object_on_stdout_with_the_summary(narrow) -> None:
    cache, stores, _, res = narrow
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    (t,) = data["teachers"]
    assert (data["images"], data["samples"], t["teacher"], t["done"], t["reused"]) == (8, 2, LONG, 2, 6)
    assert t["store"] == stores[LONG].name and t["path"] == str(stores[LONG].path)
    assert data["next"] == f"sak-train fit --cache {cache} -d {DATASET} -t {LONG}"


def test_ls_blocks_wide_and_json_carry_the_same_data(narrow) -> None:
    cache, stores, _, _ = narrow
    text = _ok(_run("ls", "--cache", cache))
    names = [s.name for s in stores.values()]
    assert_readable(text, str(cache), TIMM, LONG, *names)
    for name in names:
        assert re.search(rf"^{re.escape(name)}$", text, re.M), text  # on a line of its own: copy it for `info`
    data = json.loads(_run("ls", "--cache", cache, "--json").stdout)
    assert [r["name"] for r in data["stores"]] == sorted(names) and data["damaged"] == []
    for r in data["stores"]:
        block = text[text.index(r["name"] + "\n"):]
        for shown in (r["teacher"], r["weights"] + " (RANDOM-INIT)", ",".join(map(str, r["layers"])),
                      f"{r['grid'][0]}x{r['grid'][1]} x {r['width']} channels, {r['dtype']}, codec {r['codec']}",
                      f"{r['rows_ok']} ok, {r['rows_failed']} failed", mb(r["size_bytes"]), r["created_at"]):
            assert shown in block, (shown, block)
    narrow_wide = _run("ls", "--cache", cache, "--wide")
    assert "does not fit 80 columns" in narrow_wide.output and names[0] in narrow_wide.stdout  # falls back to blocks
    wide = _ok(_run("ls", "--cache", cache, "--wide", width=400))
    assert_readable(wide, *names, TIMM, LONG)
    for r in data["stores"]:
        assert re.search(rf"{re.escape(r['name'])} +│ {re.escape(r['teacher'])} +│ .*│ +{r['rows_ok']} │ +{r['rows_failed']} │ +"
                         rf"{re.escape(mb(r['size_bytes']))} │", wide), wide


def test_info_and_its_json(narrow) -> None:
    cache, stores, _, _ = narrow
    s = stores[LONG]
    text = _ok(_run("info", s.name, "--cache", cache))
    assert_readable(text, s.name, str(s.path), LONG)
    data = json.loads(_run("info", s.name, "--cache", cache, "--json").stdout)
    assert (data["name"], data["path"], data["spec"]["teacher"], data["spec_id"]) == (s.name, str(s.path), LONG, s.spec.spec_id)
    assert f"rows: {data['rows_ok']} ok, {data['rows_failed']} failed" in text and data["rows_ok"] == 8
    for r in data["stats"]:
        assert re.search(rf"│ +{r['layer']} │ +{r['values']:,} │ +{r['mean_of_means']:.4g} │ +{r['mean_std']:.4g} │", text), text


def test_verify_gc_compact_and_their_json(narrow) -> None:
    cache, stores, _, _ = narrow
    s = stores[LONG]
    text = _ok(_run("verify", s.name, "--cache", cache))
    assert_readable(text, str(s.path))
    data = json.loads(_run("verify", s.name, "--cache", cache, "--json").stdout)
    assert (data["store"], data["ok"], data["checked"], data["problems"]) == (s.name, True, 8, [])
    assert f"ok: {data['checked']} committed samples" in text
    assert_readable(_ok(_run("gc", "--cache", cache)))
    assert_readable(_ok(_run("compact", s.name, "--cache", cache)), str(s.path))


def test_teachers_and_its_json(narrow) -> None:
    text = _ok(_run("teachers"))
    assert_readable(text, "test:tiny", "timm:vit_base_patch14_dinov2.lvd142m")
    data = json.loads(_run("teachers", "--json").stdout)
    assert {r["name"] for r in data["teachers"]} >= {"dinov2", "sam", "clip", "test:tiny"}


def test_dry_run_writes_nothing_and_its_numbers_are_the_spec_arithmetic(narrow, tmp_path) -> None:
    cache, stores, _, _ = narrow
    res = _run("extract", "-t", "test:tiny2", "--random-init", "--device", "cpu", "--cache", cache, "--dry-run", "-b", 3)
    text = _ok(res)
    assert not any("tiny2" in p.name for p in (cache / "features").iterdir())  # no store created
    per = 8 * 10 * 48 * 4 * 2  # grid 8x10 (64x80 px, patch 8) x width 48 x 4 layers x float16
    assert f"total: {12 * per:,} bytes" in text and "measured: 3 images in" in text and "estimate: 12 samples in about" in text
    data = json.loads(_run("extract", "-t", "test:tiny2", "--random-init", "--device", "cpu", "--cache", cache, "--dry-run",
                           "-b", 3, "--json").stdout)
    (t,) = data["teachers"]
    assert (t["bytes_per_sample"], t["bytes"], data["samples"], data["measured_samples"]) == (per, 12 * per, 12, 3)
    assert data["measured_bytes_per_sample"] == [per]  # what the teacher really handed over, per sample
    assert data["images_per_s"] > 0 and data["estimate_seconds"] == pytest.approx(12 / data["images_per_s"])
    assert_readable(text, str(stores[LONG].path.parent))  # the store paths it would write


def test_copy_and_rm(narrow, tmp_path) -> None:
    cache, stores, _, _ = narrow
    s = stores[LONG]
    to = tmp_path / "a_second_cache_folder_with_a_long_name_too" / "on_the_laptop_of_a_lab_member_with_long_names"
    text = _ok(_run("copy", s.name, "--cache", cache, "--to", to))
    assert_readable(text, str(to), DATASET)
    assert f"next: sak-train fit --cache {to} -d {DATASET} -t {LONG}" in text
    size = (to / "features" / s.name).exists() and sum(f.stat().st_size for f in (to / "features" / s.name).rglob("*") if f.is_file())
    asked = _run("rm", s.name, "--cache", to, input="n\n")
    assert asked.exit_code == 1 and "nothing deleted" in asked.output and (to / "features" / s.name).exists()
    assert_readable(asked.output, s.name)
    text = _ok(_run("rm", s.name, "--cache", to, "--yes"))
    assert f"removed {to / 'features' / s.name}:" in text and f"{mb(size)} freed" in text
    assert not (to / "features" / s.name).exists()


def test_version_help_and_datasets(narrow) -> None:
    from sak.manifests.version import __version__

    assert _ok(_run("--version")).strip() == f"sak-cache {__version__}"
    assert_readable(_ok(_run("--help")))
    cache = narrow[0]
    assert_readable(_ok(_run("datasets", "--cache", cache)), DATASET)
    listed = json.loads(_ok(_run("datasets", "--cache", cache, "--json")))
    assert [d["name"] for d in listed] == [DATASET]


def test_demo_data_at_80_columns(tmp_path) -> None:
    folder = tmp_path / "a_demo_dataset_folder_with_a_name_long_enough_to_need_its_own_line_at_80_columns"
    text = _ok(_run("demo-data", folder, "--n", 4))
    assert_readable(text, str(folder))


def test_every_command_is_covered() -> None:
    covered = {"index", "extract", "ls", "info", "verify", "gc", "compact", "teachers", "copy", "rm", "datasets", "demo-data"}
    visible = {c.name for c in cache_app.registered_commands if not c.hidden}
    assert visible <= covered, f"add {sorted(visible - covered)} to test_narrow.py"


def _commands(app: typer.Typer) -> list[str]:
    group = typer.main.get_command(app)
    return ["", *(name for name, cmd in group.commands.items() if not cmd.hidden)]


@pytest.mark.parametrize(("tool", "command"), [(t, c) for t, app in (("sak-cache", cache_app), ("sak-train", train_app))
                                               for c in _commands(app)])
def test_every_help_fits_80_columns_without_cutting_a_word(tool: str, command: str) -> None:
    app = cache_app if tool == "sak-cache" else train_app
    args = [command, "--help"] if command else ["--help"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "80"}, terminal_width=80)
    text = _ok(res)
    assert ELLIPSIS not in text, f"{tool} {command} --help cuts a word at 80 columns:\n{text}"
    assert max(len(line) for line in text.splitlines()) <= 80
