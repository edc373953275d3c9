"""Lint and types are part of the suite, so the README's test command and CI check the same things.

ruff: pyflakes, import order, bugbear (``zip(strict=)``), pyupgrade ([tool.ruff] in pyproject.toml).
mypy: the library packages under their installed names (``.ci/typecheck`` builds a ``sak`` tree of
symlinks, because the top-level folders are mapped to ``sak.*`` by setuptools ``package-dir``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: pip install -e '.[test]'"
    res = _run([ruff, "check", "."])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_is_clean() -> None:
    res = _run(["bash", str(ROOT / ".ci" / "typecheck")])
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
