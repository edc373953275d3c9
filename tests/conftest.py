"""Shared fixtures: a tiny procedural NYUD-v2 dataset and a cache with it indexed.

Tests run on a shared CPU, so torch gets one thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

try:  # torch is heavy; set the thread count once if it is importable
    import torch

    torch.set_num_threads(1)
except Exception:  # pragma: no cover - torch missing or broken must not stop non-torch tests
    pass

DEMO_N = 12
DEMO_SIZE = (64, 80)

#: README text that tests parse and run (the naming table, the Python examples)
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="session")
def readme() -> str:
    """The README text tests check against (:data:`README`)."""
    return README.read_text(encoding="utf-8")


def _logging_state() -> tuple:
    root, sak = logging.getLogger(), logging.getLogger("sak")
    return list(root.handlers), root.level, list(sak.handlers), sak.level


_LOGGING_AT_START = _logging_state()  # before any test or fixture ran a CLI command


@pytest.fixture(autouse=True)
def _cli_state_restored():
    """What a CLI invocation changes process-wide is put back after each test: the log handlers and levels as they
    were when the session started (``setup_logging`` puts ``sak`` at INFO on a stderr handler, which would print
    into a later command's output; module fixtures that run a command leak it too) and the widths of the module
    consoles (tests set them to render at a given width)."""
    try:
        from sak.cli import common

        widths = (common.out._width, common.console._width)
    except Exception:  # pragma: no cover - the CLI not importable: nothing of it to restore
        common = None
    yield
    root, sak = logging.getLogger(), logging.getLogger("sak")
    root_handlers, root_level, sak_handlers, sak_level = _LOGGING_AT_START
    root.handlers[:], sak.handlers[:] = root_handlers, sak_handlers
    root.setLevel(root_level)
    sak.setLevel(sak_level)
    if common is not None:
        common.out._width, common.console._width = widths


@pytest.fixture(scope="session")
def demo_nyud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A procedural NYUD-v2-layout dataset (12 images, 64x80, seed 0), made once per session. Do not modify it."""
    from sak.pipeline.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "nyud"
    return make_demo_dataset(out, n=DEMO_N, size=DEMO_SIZE, seed=0)


@pytest.fixture()
def demo_cache(tmp_path: Path, demo_nyud: Path) -> tuple[Path, Path]:
    """A fresh cache dir with the demo dataset indexed under the name "nyud": returns (cache_path, dataset_root)."""
    from sak.pipeline.data.datasets import index_dataset, write_dataset_index

    cache = tmp_path / "cache"
    table = index_dataset(demo_nyud, name="nyud", fmt="nyud", workers=2)
    write_dataset_index(cache, "nyud", table, demo_nyud)
    return cache, demo_nyud
