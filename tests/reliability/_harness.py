"""Helpers of the reliability suite: the real CLIs in subprocesses, SIGKILL at seeded random points, bitwise
comparison of stores. The fixtures (``rng``, ``cli_env``) are in conftest.py.

A kill point is an *event count* plus a delay: the harness polls something the command writes
(store entries, metrics.jsonl lines), and once the ``event``-th change is seen it waits a seeded
random ``delay`` and sends SIGKILL. Events make the points land inside the work rather than in the
interpreter's start-up, whatever the machine's load; the delay spreads them between two events.
Seeds: ``SAK_RELIABILITY_SEED`` (default 14) mixed with the test's name; a failure message shows
the kill points, so a failing sequence can be replayed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.feature_store import FeatureStore

SEED = int(os.environ.get("SAK_RELIABILITY_SEED", "14"))
MODULES = {"sak-cache": "sak.cli.cache", "sak-train": "sak.cli.train"}
TIMEOUT = 300  # seconds a single command may take on a loaded machine


def cli(tool: str, *args: str) -> list[str]:
    """The command line of ``tool`` (sak-cache | sak-train) run by this interpreter."""
    return [sys.executable, "-m", MODULES[tool], *args]


def run(cmd: list[str], env: dict[str, str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass
class Kill:
    killed: bool  # False: the command finished before the kill point
    returncode: int
    output: str  # stdout + stderr, for failure messages


def kill_at_event(cmd: list[str], env: dict[str, str], count: Callable[[], int], event: int, delay: float,
                  log: Path, timeout: float = TIMEOUT) -> Kill:
    """Run ``cmd``; once ``count()`` reaches ``event``, wait ``delay`` seconds and SIGKILL it."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if count() >= event:
                    time.sleep(delay)
                    break
                time.sleep(0.005)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Kill(killed, proc.returncode, log.read_text())


def entries(store: Path) -> set[str]:
    """The store's committed-state entries (segments, parts, stats; temp files excluded): a change is an event."""
    names: set[str] = set()
    for sub in ("segments", "manifest", "stats"):
        try:
            names.update(f"{sub}/{n}" for n in os.listdir(store / sub) if not n.startswith("."))
        except FileNotFoundError:
            pass
    return names


def only_store(cache: Path) -> Path:
    stores = list((cache / "features").iterdir())
    assert len(stores) == 1, stores
    return stores[0]


def copy_index(cache: Path, dest: Path) -> Path:
    """A new cache at ``dest`` with ``cache``'s dataset indexes (same images, no features)."""
    shutil.copytree(cache / "datasets", dest / "datasets")
    return dest


def features(store: FeatureStore) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """(image sha256, view) -> {layer: stored array} of every committed ok row (after dedup)."""
    out = {}
    for r in store.commits().to_pylist():
        out[(r["image_sha256"], r["view"])] = {k: v[0] for k, v in store.read_rows(r["segment_id"], [r["row"]]).items()}
    return out


def assert_same_features(got: FeatureStore, want: FeatureStore) -> None:
    a, b = features(got), features(want)
    assert a.keys() == b.keys()
    for key, layers in b.items():
        assert a[key].keys() == layers.keys()
        for layer, arr in layers.items():
            np.testing.assert_array_equal(a[key][layer], arr, err_msg=f"{key} layer {layer}")


def assert_each_sample_once(store: FeatureStore, n: int | None = None) -> None:
    """Every committed (sample, view) exactly once after dedup; ``n``: how many there must be."""
    keys = [(r["image_sha256"], r["view"]) for r in store.commits(status=None).to_pylist()]
    assert len(keys) == len(set(keys))
    if n is not None:
        assert len(keys) == n


def open_store(cache: Path) -> FeatureStore | None:
    stores = list_stores(cache) if (cache / "features").exists() else []
    return stores[0] if stores else None
