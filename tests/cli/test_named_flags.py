"""Issue 16 item 5: every flag a message names exists. The library and CLI sources are parsed; each string in a
``raise``, a log call, a console print, a warning or an option's help that names a flag (``--name``) must name an
option of some sak-cache or sak-train command (hidden aliases count: they still work), or a flag of another tool
listed in :data:`OTHER_TOOLS`."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import typer.main

from sak.cli.cache import app as cache_app
from sak.cli.train import app as train_app

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("manifests", "pipeline", "student", "cli")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MESSAGE_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "print", "warn", "print_error",
                 "BadParameter", "Option", "Argument"}

#: flags of other tools a message may name on purpose (multi-GPU training is started by torchrun)
OTHER_TOOLS = {"--nproc-per-node": "torchrun", "--nnodes": "torchrun"}


def _strings(node: ast.AST) -> list[str]:
    """Every string literal under ``node`` (f-string parts included)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def named_flags() -> dict[str, list[str]]:
    """flag -> the places (file:line) whose message names it."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise):
                    texts = _strings(node)
                elif isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name not in MESSAGE_CALLS:
                        continue
                    texts = [t for arg in node.args for t in _strings(arg)]
                    texts += [t for kw in node.keywords if kw.arg == "help" for t in _strings(kw.value)]
                    if name in ("Option", "Argument"):  # an option's own names are not a message
                        texts = [t for kw in node.keywords if kw.arg == "help" for t in _strings(kw.value)]
                else:
                    continue
                for text in texts:
                    for flag in FLAG.findall(text):
                        found.setdefault(flag, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def cli_flags() -> set[str]:
    """Every option name of every sak-cache and sak-train command (hidden ones too), and the tools' own."""
    flags: set[str] = set()

    def visit(cmd: Any) -> None:  # typer may carry its own click: duck-typed
        for param in cmd.params:
            flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        for sub in (getattr(cmd, "commands", None) or {}).values():
            visit(sub)

    for app in (cache_app, train_app):
        visit(typer.main.get_command(app))
    return flags | {"--help"}


def test_the_scan_sees_messages_and_options() -> None:
    """The scan is not vacuous: it finds flags in raise/log/help strings, and the CLIs have their options."""
    found = named_flags()
    assert {"--resume", "--out", "--cache", "--data-root"} <= set(found)
    assert any(place.startswith("student/runs/resume.py") for place in found["--resume"])
    assert {"--cache", "--resume", "--data-root", "--limit", "--retry-failed"} <= cli_flags()
    assert "--no-such-flag" not in cli_flags()
    assert not set(OTHER_TOOLS) & cli_flags()  # the allow-list holds other tools' flags only


def test_every_flag_a_message_names_exists() -> None:
    known = cli_flags() | set(OTHER_TOOLS)
    missing = {flag: places for flag, places in named_flags().items() if flag not in known}
    assert not missing, f"messages name flags that no sak-cache/sak-train command has: {missing}"
