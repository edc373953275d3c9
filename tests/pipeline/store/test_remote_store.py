"""Stores behind fsspec URLs: memory:// and a real S3 API (moto's server on loopback).

The whole lab path runs against S3: extract into ``s3://bucket/cache``, train from it, and
compare every stored feature with a local extraction of the same spec.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

import numpy as np
import pytest

from sak.pipeline.storage import FsspecLocation, as_location
from sak.pipeline.store.catalog import list_stores, resolve_store
from sak.pipeline.store.feature_store import FeatureStore

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

SHAS = [f"{i:064x}" for i in range(10)]


@pytest.fixture(params=["memory", "s3"])
def url_root(request) -> str:
    if request.param == "memory":
        return f"memory://sak-test-{uuid.uuid4().hex[:8]}/cache"
    return f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:8]}/cache"


def features_by_sha(store: FeatureStore) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    out = {}
    t = store.commits()
    for sha, view, seg, row in zip(*(t.column(c).to_pylist() for c in ("image_sha256", "view", "segment_id", "row")), strict=True):
        out[(sha, view)] = {k: v[0] for k, v in store.read_rows(seg, [row]).items()}
    return out


def remote_snapshot(root: str) -> dict[str, str]:
    """{key: md5 of the bytes} of every object below ``root``."""
    loc = as_location(root)
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest() for p, _, _ in loc.files()}


def test_as_location_keeps_local_paths_plain(tmp_path) -> None:
    assert as_location(str(tmp_path)) == tmp_path
    assert as_location(f"file://{tmp_path}") == tmp_path
    remote = as_location("memory://bucket/a") / "b"
    assert isinstance(remote, FsspecLocation) and str(remote) == "memory:///bucket/a/b" and remote.name == "b"
    assert as_location(str(remote)) == remote


def test_store_round_trip_behind_a_url(url_root, st) -> None:
    spec = st.make_spec(keep_prefix=True)
    store = FeatureStore.create(url_root, spec)
    assert isinstance(store.path, FsspecLocation) and str(store.path).endswith(f"/cache/features/{spec.store_name}")
    report, layers, prefix = st.write_segment(store, SHAS, batch=4)
    assert report.n_ok == 10 and report.bytes_written > 0
    reader = resolve_store(spec.store_name, url_root)
    commits = reader.commits()
    assert commits.num_rows == 10 and commits.column("image_sha256").to_pylist() == SHAS
    seg = commits.column("segment_id")[0].as_py()
    got = reader.read_rows(seg, [7, 0, 3])
    assert np.array_equal(got[1], layers[0][[7, 0, 3]].astype(np.float16))
    assert np.array_equal(got[3], layers[1][[7, 0, 3]].astype(np.float16))
    assert np.array_equal(reader.read_prefix(seg, [2])[3], prefix[1][[2]].astype(np.float16))
    assert reader.verify().ok and reader.verify().checked == 10
    assert reader.stats()[1].count == 10 * 8 * 8
    assert [s.name for s in list_stores(url_root)] == [spec.store_name]
    assert set(reader.created()) == {"created_by", "created_at"} and "@" in reader.created()["created_by"]
    assert reader.size_bytes() > 0


def test_segment_without_its_part_is_invisible_behind_a_url(url_root, st, monkeypatch) -> None:
    """A writer killed before its commit PUT leaves shards that no reader sees (and gc collects)."""
    import sak.pipeline.store.writer as sw

    store = FeatureStore.create(url_root, st.make_spec())
    st.write_segment(store, SHAS[:3])

    def killed(*args, **kwargs):
        raise RuntimeError("killed before the commit PUT")

    monkeypatch.setattr(sw, "write_parquet_atomic", killed)
    with pytest.raises(RuntimeError, match="killed"):
        st.write_segment(store, SHAS[3:7])
    monkeypatch.undo()
    segments = [p.name for p, _, _ in as_location(str(store.path / "segments")).files() if p.name == "zarr.json"]
    assert len(segments) >= 2  # both segments' arrays are there
    reader = FeatureStore.open(str(store.path))
    assert reader.commits().column("image_sha256").to_pylist() == SHAS[:3]
    garbage = FeatureStore.open(str(store.path), read_only=False).gc(dry_run=False, grace_seconds=0)
    assert len(garbage) == 2  # the dead segment and its stats file
    assert FeatureStore.open(str(store.path)).verify().ok


def forbid_s3_writes(monkeypatch) -> list[str]:
    """Make every S3 write/delete call fail (a read-only client); returns the attempts."""
    import s3fs

    attempts: list[str] = []

    def refusing(name):
        async def refuse(self, path, *args, **kwargs):
            attempts.append(f"{name} {path}")
            raise PermissionError(f"read-only: {name} {path}")
        return refuse

    for name in ("_pipe_file", "_put_file", "_rm_file", "_rm", "_cp_file", "_mkdir"):
        monkeypatch.setattr(s3fs.S3FileSystem, name, refusing(name))
    real_open = s3fs.S3FileSystem._open

    def open_read_only(self, path, mode="rb", *args, **kwargs):
        if "r" not in mode:
            attempts.append(f"open({mode}) {path}")
            raise PermissionError(f"read-only: open {path} {mode}")
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_open", open_read_only)
    s3fs.S3FileSystem.clear_instance_cache()  # instances bind their sync methods when created
    return attempts


def test_extract_to_s3_then_train_from_it(s3_bucket, demo_cache, demo_nyud, tmp_path, monkeypatch) -> None:
    """extract test:tiny into s3://.../cache, train a few steps from it read-only, features equal a local run."""
    from sak.pipeline.extract.job import ExtractConfig, extract
    from sak.student.runs.config import TrainConfig
    from sak.student.train.trainer import fit

    local_cache, _ = demo_cache
    remote_cache = f"{s3_bucket}/{uuid.uuid4().hex[:8]}/cache"
    common = dict(teachers=("test:tiny",), random_init=True, device="cpu", batch_size=8, segment_size=5, io_threads=1)
    remote_rep = extract(ExtractConfig(cache=remote_cache, data=str(demo_nyud), data_name="nyud", **common))
    local_rep = extract(ExtractConfig(cache=str(local_cache), datasets=("nyud",), **common))
    assert remote_rep.teachers[0].done == local_rep.teachers[0].done == 12
    assert str(remote_rep.teachers[0].store).startswith("s3://sak-lab/")

    remote = FeatureStore.open(str(remote_rep.teachers[0].store))
    local = FeatureStore.open(local_rep.teachers[0].store)
    assert remote.spec == local.spec and len(remote.committed_segments()) == 3
    a, b = features_by_sha(remote), features_by_sha(local)
    assert sorted(a) == sorted(b) and len(a) == 12
    for key in a:
        for layer in remote.spec.layers:
            np.testing.assert_array_equal(a[key][layer], b[key][layer])

    again = extract(ExtractConfig(cache=remote_cache, datasets=("nyud",), **common))  # resume: nothing new
    assert (again.teachers[0].done, again.teachers[0].skipped_cached) == (0, 12)

    before = remote_snapshot(remote_cache)
    attempts = forbid_s3_writes(monkeypatch)
    result = fit(TrainConfig(cache=remote_cache, backbone="test_vit", iters=3, batch_size=4, block_size=4, window=2,
                             workers=2, log_every=1, ckpt_every=0, val_split=None, out=str(tmp_path / "run")))
    assert result.steps == 3 and result.coverage == "covered 9/9 samples of nyud/train"
    assert attempts == []  # no write call reached S3
    with pytest.raises(PermissionError):  # and the guard was live
        as_location(f"{remote_cache}/probe").put_bytes(b"x")
    monkeypatch.undo()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # drop the guarded instances
    assert remote_snapshot(remote_cache) == before  # training never writes to the cache
