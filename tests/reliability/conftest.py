"""Fixtures of the reliability suite (tests/reliability/): seeded kill points and the CLIs' environment.

Every test file here is marked ``pytestmark = pytest.mark.reliability`` (registered in pyproject.toml; CI
runs them all). The helpers (run a CLI in a subprocess, SIGKILL it at a seeded event, compare stores bit
for bit) are in ``_harness.py``: ``from _harness import ...``.
"""

from __future__ import annotations

import os
import random
import zlib

import pytest
from _harness import SEED


@pytest.fixture()
def rng(request) -> random.Random:
    """A random generator seeded by SAK_RELIABILITY_SEED and the test's name."""
    return random.Random(SEED * 1_000_003 + zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture()
def cli_env(tmp_path) -> dict[str, str]:
    """The commands' environment: one torch thread, SAK_DEBUG=1 (an internal error prints its traceback into the
    captured output), XDG_STATE_HOME (bug reports) inside the test's tmp folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SAK_DEBUG": "1", "COLUMNS": "200",
           "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONHASHSEED": "0"}
    env.pop("RANK", None)
    return env


