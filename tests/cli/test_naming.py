"""One naming table for both CLIs (issue 16 item 8): the README's table is the spec, both typer apps are checked against it.

Every row of the table (parsed from the README text, ``tests/conftest.py`` README) names an option, the
commands of each tool that have it, and its default; the test introspects both apps' click commands.
Options both tools use must be in the table with one short flag and one type. Old spellings are
hidden options listed in the table, and still work with a deprecation warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from sak.cli import train_fit
from sak.cli.cache import app as cache_app
from sak.cli.common import renamed, renamed_options, with_exit_codes
from sak.cli.train import app as train_app
from sak.student.runs.config import TrainConfig

runner = CliRunner()
APPS = {"sak-cache": cache_app, "sak-train": train_app}
TOOL = "(tool)"  # a tool's own options (its callback), as the table spells it
SKIP = {"--help", "--install-completion", "--show-completion"}



@dataclass(frozen=True)
class Row:
    option: str
    shorts: tuple[str, ...]
    commands: dict[str, frozenset[str]]  # tool -> commands
    default: str | None  # None: per command
    except_default: frozenset[str]
    old: tuple[str, ...]


def parse_table(text: str) -> dict[str, Row]:
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in line.strip().split("|")[1:-1]]
        option, _value, _meaning, cache_cmds, train_cmds, default, old = cells
        flags = re.findall(r"`(-[^`]+)`", option)
        value = None
        excepted: frozenset[str] = frozenset()
        if not default.startswith("per command"):
            m = re.match(r"`([^`]*)`", default)
            value = m.group(1) if m else "None"
            ex = re.search(r"except ([^:]+):", default)
            excepted = frozenset(c.strip() for c in ex.group(1).split(",")) if ex else frozenset()
        rows[flags[0]] = Row(flags[0], tuple(flags[1:]), {
            "sak-cache": frozenset(c.strip() for c in cache_cmds.split(",") if c.strip()),
            "sak-train": frozenset(c.strip() for c in train_cmds.split(",") if c.strip())},
            value, excepted, tuple(re.findall(r"`(-[^`]+)`", old)))
    return rows


@dataclass(frozen=True)
class Opt:
    shorts: tuple[str, ...]
    type: str
    default: Any
    hidden: bool
    flags: tuple[str, ...]


def _type(param: Any) -> str:
    annotation = param.type_descriptor.annotation
    return getattr(annotation, "__name__", str(annotation)) if not str(annotation).startswith("list") else str(annotation)


def cli_options(tool: str) -> dict[str, dict[str, Opt]]:
    """command -> long option -> what the CLI declares (the tool's own options under TOOL); hidden commands (an old
    command name kept as an alias, ``sak-cache export``) are not part of the table."""
    group = typer.main.get_command(APPS[tool])
    found: dict[str, dict[str, Opt]] = {}
    for name, command in [(TOOL, group), *((n, c) for n, c in group.commands.items() if not c.hidden)]:
        for p in command.params:
            if p.param_type_name != "option":
                continue
            longs = [o for o in p.opts if o.startswith("--") and o not in SKIP]
            shorts = tuple(o for o in p.opts if not o.startswith("--"))
            for long in longs:
                found.setdefault(name, {})[long] = Opt(shorts, _type(p), p.default, p.hidden, tuple(p.opts))
    return found


def _visible(tool: str, option: str) -> dict[str, Opt]:
    return {cmd: opts[option] for cmd, opts in cli_options(tool).items() if option in opts and not opts[option].hidden}


@pytest.fixture(scope="module")
def table(readme: str) -> dict[str, Row]:
    assert "\n## Names: one option table" in readme, "the README lost its naming section"
    rows = parse_table(readme.split("\n## Names: one option table", 1)[1].split("\n## ", 1)[0])
    assert len(rows) >= 15 and "--teacher" in rows and rows["--cache"].shorts == ("-c",)
    return rows


TABLE_OPTIONS = ["--cache", "--teacher", "--dataset", "--img-size", "--native-size", "--batch-size", "--workers",
                 "--threads", "--limit", "--eval-limit", "--format", "--device", "--seed", "--aug", "--out", "--json",
                 "--verbose", "--version"]


def _param(tool: str, option: str) -> Any:
    return pytest.param(tool, option, id=f"{tool}{option}")


@pytest.mark.parametrize(("tool", "option"), [_param(t, o) for t in APPS for o in TABLE_OPTIONS])
def test_each_table_row_is_what_the_cli_declares(table: dict[str, Row], tool: str, option: str) -> None:
    row = table[option]
    have = _visible(tool, option)
    assert set(have) == set(row.commands[tool]), f"{tool} commands with {option}: CLI {sorted(have)}, table {sorted(row.commands[tool])}"
    for command, opt in have.items():
        assert opt.shorts == row.shorts, f"{tool} {command} {option}: short flags {opt.shorts}, table {row.shorts}"
        if row.default is not None and command not in row.except_default:
            assert str(opt.default) == row.default, f"{tool} {command} {option}: default {opt.default!r}, table {row.default}"


def test_the_table_lists_every_row_this_test_checks(table: dict[str, Row]) -> None:
    assert sorted(table) == sorted(TABLE_OPTIONS)


@pytest.mark.parametrize("tool", ["sak-cache", "sak-train"])
def test_one_option_name_has_one_short_flag_and_type_within_a_tool(tool: str) -> None:
    # inside one tool, one option name has one short flag and one type wherever it appears
    seen: dict[str, set[tuple[tuple[str, ...], str]]] = {}
    for opts in cli_options(tool).values():
        for long, opt in opts.items():
            if not opt.hidden:
                seen.setdefault(long, set()).add((opt.shorts, opt.type))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def _shared() -> list[Any]:
    names = sorted({o for opts in cli_options("sak-cache").values() for o, x in opts.items() if not x.hidden}
                   & {o for opts in cli_options("sak-train").values() for o, x in opts.items() if not x.hidden})
    return names


@pytest.mark.parametrize("option", _shared())
def test_an_option_both_tools_use_is_in_the_table_with_one_short_flag_and_type(table: dict[str, Row], option: str) -> None:
    assert option in table, f"{option} is used by both tools but missing from the naming table"
    kinds = {(o.shorts, o.type) for tool in APPS for o in _visible(tool, option).values()}
    assert len(kinds) == 1, f"{option}: {kinds}"


@pytest.mark.parametrize("tool", list(APPS))
def test_old_spellings_are_hidden_and_in_the_table(table: dict[str, Row], tool: str) -> None:
    listed = {flag for row in table.values() for flag in row.old}
    for command, opts in cli_options(tool).items():
        for opt in opts.values():
            if opt.hidden:
                assert set(opt.flags) <= listed, f"{tool} {command}: hidden {opt.flags} not in the table's old spellings"
    for info in APPS[tool].registered_commands:
        for _old, (_target, old, new, _kind) in renamed_options(info.callback).items():
            assert old in table[new].old, f"{tool} {info.name}: {old} is not listed as an old spelling of {new}"
            assert cli_options(tool)[info.name or ""][old].hidden


def test_sak_train_renames_are_the_table_s() -> None:
    got = {(info.name, old, new) for info in train_app.registered_commands
           for _o, (_t, old, new, _k) in renamed_options(info.callback).items()}
    assert got == {("fit", "--teachers", "--teacher"), ("fit", "--workers", "--threads"), ("fit", "--eval-samples", "--eval-limit"),
                   ("eval", "--max-samples", "--limit"), ("export", "--max-images", "--limit"),
                   ("describe", "--teachers", "--teacher"), ("describe", "--dataset", "--format")}


def test_old_spellings_still_work_with_a_warning(monkeypatch) -> None:
    seen: list[TrainConfig] = []
    monkeypatch.setattr(train_fit, "_run_fit", lambda cfg, resume: seen.append(cfg))
    new = runner.invoke(train_app, ["fit", "-t", "a,b", "-t", "c", "--threads", "0", "--eval-limit", "3"])
    old = runner.invoke(train_app, ["fit", "--teachers", "a,b,c", "-w", "0", "--eval-samples", "3"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert seen[0] == seen[1] and seen[0].data.teachers == ("a", "b", "c") and seen[0].loader.workers == 0
    assert seen[0].eval.eval_samples == 3
    text = " ".join(old.output.split())
    for was, now in (("--teachers", "--teacher"), ("--workers", "--threads"), ("--eval-samples", "--eval-limit")):
        assert f"{was} is deprecated and will be removed: use {now}" in text
    assert "deprecated" not in new.output
    both = runner.invoke(train_app, ["fit", "--teachers", "a", "-t", "b"])
    boxed = " ".join(re.sub("[│╭╮╰╯─]", " ", both.output).split())  # typer's usage-error box
    assert both.exit_code == 2 and "pass --teacher only (--teachers is its old spelling)" in boxed
    # a recipe keeps the values given in an old spelling
    runner.invoke(train_app, ["fit", "--recipe", "nyud-vitb", "--workers", "1", "--eval-samples", "5"])
    assert (seen[-1].loader.workers, seen[-1].eval.eval_samples) == (1, 5)


def test_renamed_helper_on_a_toy_command() -> None:
    app = typer.Typer()

    @app.command("go")
    def go(names: list[str] | None = typer.Option(None, "--name", "-n"), count: int = typer.Option(1, "--count"),
           names_old: str | None = renamed("--names", "--name"), count_old: int | None = renamed("--number", "--count", "-N")) -> None:
        print(f"names={names} count={count}")

    @app.callback()
    def _root() -> None:
        pass

    with_exit_codes(app)
    assert "names=['a,b'] count=3" in runner.invoke(app, ["go", "--names", "a,b", "-N", "3"]).output
    assert "names=['x'] count=1" in runner.invoke(app, ["go", "-n", "x"]).output
    assert "--names" not in runner.invoke(app, ["go", "--help"]).output
    assert runner.invoke(app, ["go", "--number", "2", "--count", "4"]).exit_code == 2
    with pytest.raises(TypeError, match="names no option"):
        renamed_options(lambda x=renamed("--old", "--nothing"): None)


@pytest.mark.parametrize("tool", ["sak-cache", "sak-train"])
def test_version_on_both_tools(tool: str) -> None:
    res = runner.invoke(APPS[tool], ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"{tool} {version('sak')}"
