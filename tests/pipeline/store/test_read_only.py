"""Read-only consumers: training from a cache nobody may write (chmod -R a-w), with every write call
into the cache made to fail (we run as root, for whom chmod alone proves nothing); every file is hashed
before and after."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import stat
from pathlib import Path

import pytest

from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def guarded(monkeypatch):
    """Make any write, create, rename or delete under a given folder raise; returns (arm(folder), attempts)."""
    attempts: list[str] = []
    state: dict[str, str] = {}

    def inside(path) -> bool:
        try:
            return "root" in state and os.path.abspath(os.fspath(path)).startswith(state["root"])
        except TypeError:
            return False

    def refuse(what, path):
        attempts.append(f"{what} {path}")
        raise PermissionError(f"read-only test: {what} {path}")

    def wrap_open(real):
        def opener(file, mode="r", *args, **kwargs):
            if inside(file) and any(c in mode for c in "wax+"):
                refuse(f"open({mode})", file)
            return real(file, mode, *args, **kwargs)
        return opener

    real_os_open = os.open

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & WRITE_FLAGS:
            refuse("os.open(write)", path)
        return real_os_open(path, flags, *args, **kwargs)

    def wrap_path_op(name, real):
        def op(path, *args, **kwargs):
            if inside(path):
                refuse(name, path)
            return real(path, *args, **kwargs)
        return op

    def wrap_two(name, real):
        def op(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                refuse(name, f"{src} -> {dst}")
            return real(src, dst, *args, **kwargs)
        return op

    monkeypatch.setattr(builtins, "open", wrap_open(builtins.open))
    monkeypatch.setattr(io, "open", wrap_open(io.open))
    monkeypatch.setattr(os, "open", os_open)
    for name in ("mkdir", "remove", "unlink", "rmdir", "truncate", "chmod", "utime"):
        monkeypatch.setattr(os, name, wrap_path_op(f"os.{name}", getattr(os, name)))
    for name in ("replace", "rename", "link", "symlink"):
        monkeypatch.setattr(os, name, wrap_two(f"os.{name}", getattr(os, name)))
    monkeypatch.setattr(shutil, "rmtree", wrap_path_op("shutil.rmtree", shutil.rmtree))

    def arm(folder: Path) -> None:
        state["root"] = os.path.abspath(folder)

    return arm, attempts


def test_training_from_a_read_only_cache_changes_nothing(demo_cache, tmp_path, guarded) -> None:
    from sak.student.runs.config import TrainConfig
    from sak.student.train.trainer import fit

    cache, _ = demo_cache
    extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, device="cpu", batch_size=8,
                          segment_size=5, io_threads=1))
    before = tree_digest(cache)
    modes = {p: p.stat().st_mode for p in [cache, *cache.rglob("*")]}
    for p in modes:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    arm, attempts = guarded
    arm(cache)
    try:
        result = fit(TrainConfig(cache=str(cache), backbone="test_vit", iters=3, batch_size=4, block_size=4, window=2,
                                 workers=2, log_every=1, ckpt_every=0, val_split=None, out=str(tmp_path / "run")))
        store = FeatureStore.open(next((cache / "features").iterdir()))
        assert store.verify().ok and store.stats()[store.spec.layers[0]].count > 0
    finally:
        arm(tmp_path / "nothing-guarded")
        for p, mode in modes.items():
            p.chmod(mode)
    assert result.steps == 3 and result.coverage == "covered 9/9 samples of nyud/train"
    assert attempts == []
    assert tree_digest(cache) == before and len(before) > 20


def test_guard_catches_a_write(demo_cache, guarded) -> None:
    """The guard itself works: a writer opened on the cache is refused."""
    from sak.pipeline.data.datasets import open_dataset

    cache, _ = demo_cache
    arm, attempts = guarded
    arm(cache)
    open_dataset(cache, "nyud")  # reading is fine
    with pytest.raises(PermissionError):
        (cache / "x.txt").write_text("no")
    assert attempts and "x.txt" in attempts[0]
