"""One contract for every storage behind :class:`sak.pipeline.storage.Location` (as zarr's ``StoreTests``).

:class:`StorageContract` holds the behaviour of every interface operation; each subclass only says
how to get a fresh, empty writable folder (``root``), a second handle on the same storage that
shares no caches with it (``other``: "another writer"), and where reads go (``reader``: the folder
itself, or its read-only view). Run against local disk, ``memory://``, S3 on loopback (moto) and
read-only views of local disk and S3.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pytest
import zarr

from sak.manifests.errors import SakError, SchemaMismatch
from sak.pipeline.storage import (
    FsspecLocation,
    LocalLocation,
    Location,
    ReadOnlyStorage,
    as_location,
    read_parquet,
    read_parquet_with_metadata,
    write_parquet_atomic,
)

DATA = bytes(range(256)) * 3  # 768 bytes, every position distinguishable modulo 256

SCHEMA = pa.schema([pa.field("k", pa.string(), nullable=False), pa.field("v", pa.int64())])


def snapshot(root: Location) -> dict[str, bytes]:
    """{path relative to root: bytes} of every file below ``root``."""
    base = str(root).rstrip("/")
    return {str(p)[len(base):]: p.read_bytes() for p, _, _ in root.files()}


class StorageContract:
    """Behaviour every Location implementation must have."""

    @pytest.fixture()
    def root(self) -> Location:  # a fresh, empty, writable folder
        raise NotImplementedError

    @pytest.fixture()
    def other(self, root) -> Location:  # the same folder through a separate handle (no shared caches)
        raise NotImplementedError

    @pytest.fixture()
    def reader(self, root) -> Location:  # where the reads of each test go
        return root

    # -- naming -----------------------------------------------------------------
    def test_naming_round_trips_through_str(self, reader) -> None:
        child = reader / "a" / "b.bin"
        assert child.name == "b.bin" and child.parent == reader / "a" and child.parent.parent == reader
        assert reader.joinpath("a", "b.bin") == child and child.with_name("c") == reader / "a" / "c"
        again = as_location(str(child), read_only=reader.read_only)
        assert again == child and str(again) == str(child) and again.read_only == reader.read_only

    def test_pickling_round_trip_keeps_place_and_mode(self, root, reader) -> None:
        (root / "p.bin").write_atomic(b"pickled")
        back = pickle.loads(pickle.dumps(reader / "p.bin"))
        assert back == reader / "p.bin" and type(back) is type(reader) and back.read_only == reader.read_only
        assert back.read_bytes() == b"pickled"

    # -- missing things ---------------------------------------------------------
    def test_missing_file_and_folder(self, reader) -> None:
        nope = reader / "nope" / "file.bin"
        assert not nope.exists() and not nope.is_file() and not nope.is_dir()
        for call in (nope.read_bytes, nope.stat, lambda: nope.read_range(0, 4), lambda: nope.read_tail(4), nope.open_ranges):
            with pytest.raises(FileNotFoundError):
                call()
        assert nope.parent.list_names() == [] and list(nope.parent.files()) == [] and nope.parent.tree_bytes() == 0

    def test_unlink_of_a_missing_file(self, root) -> None:
        with pytest.raises(FileNotFoundError):
            (root / "nope.bin").unlink()
        (root / "nope.bin").unlink(missing_ok=True)
        (root / "nope").remove_tree()  # nothing to remove is fine
        assert not (root / "nope.bin").exists()

    # -- writing and reading ------------------------------------------------------
    def test_write_atomic_creates_folders_and_replaces_whole(self, root, reader) -> None:
        (root / "a" / "b.bin").write_atomic(DATA)
        got = reader / "a" / "b.bin"
        assert got.exists() and got.is_file() and not got.is_dir() and (reader / "a").is_dir()
        assert got.read_bytes() == DATA and got.stat().st_size == len(DATA)
        (root / "a" / "b.bin").write_text_atomic("short\n")
        assert got.read_text() == "short\n" and got.stat().st_size == 6
        assert (reader / "a").list_names() == ["b.bin"]  # no temporary file left behind

    def test_put_bytes_creates_folders(self, root, reader) -> None:
        (root / "c" / "0" / "0").put_bytes(b"shard")
        assert (reader / "c" / "0" / "0").read_bytes() == b"shard" and (reader / "c").list_names() == ["0"]

    def test_byte_ranges_and_tails(self, root, reader) -> None:
        (root / "r.bin").write_atomic(DATA)
        f = reader / "r.bin"
        assert f.read_range(10, 20) == DATA[10:20] and f.read_range(0, len(DATA)) == DATA
        assert f.read_tail(7) == DATA[-7:] and f.read_tail(len(DATA)) == DATA
        with f.open_ranges() as fh:
            assert fh.tail(5) == DATA[-5:] and fh.span(300, 309) == DATA[300:309] and fh.tail(1) == DATA[-1:]

    def test_atomic_visibility_under_concurrent_rewrites(self, root, reader) -> None:
        """A reader sees one whole version or the other, never a mix or a truncated file."""
        versions = [bytes([i]) * (256 << 10) for i in (1, 2)]
        (root / "x.bin").write_atomic(versions[0])
        stop, errors = threading.Event(), []

        def rewrite() -> None:
            try:
                for i in range(40):
                    (root / "x.bin").write_atomic(versions[i % 2])
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)
            finally:
                stop.set()

        t = threading.Thread(target=rewrite)
        t.start()
        reads = 0
        while not stop.is_set() or reads == 0:
            data = (reader / "x.bin").read_bytes()
            assert data in versions, f"a reader saw {len(data)} bytes that are neither version"
            reads += 1
        t.join()
        assert not errors and (reader / "x.bin").read_bytes() == versions[1] and reads
        assert root.list_names() == ["x.bin"]

    # -- listing --------------------------------------------------------------------
    def test_list_names_filters_and_sorts(self, root, reader) -> None:
        for name in ("part-b.parquet", "part-a.parquet", ".part-c.parquet.123.tmp", "spec.json"):
            (root / name).write_atomic(b"1")
        (root / "sub" / "deep.bin").write_atomic(b"1")
        assert reader.list_names() == sorted(["part-b.parquet", "part-a.parquet", ".part-c.parquet.123.tmp", "spec.json", "sub"])
        assert reader.list_names("part-", ".parquet") == ["part-a.parquet", "part-b.parquet"]
        assert reader.list_names(prefix=".", suffix=".tmp") == [".part-c.parquet.123.tmp"]
        assert (reader / "spec.json").list_names() == []  # a file has no entries

    def test_listing_sees_what_another_writer_added(self, root, other, reader) -> None:
        (root / "m").mkdir(parents=True, exist_ok=True)
        (root / "m" / "one").write_atomic(b"1")
        assert (reader / "m").list_names() == ["one"] and len(list((reader / "m").files())) == 1
        (other / "m" / "two").write_atomic(b"22")
        assert (reader / "m").list_names() == ["one", "two"]
        assert sorted((p.name, size) for p, size, _ in (reader / "m").files()) == [("one", 1), ("two", 2)]
        assert (reader / "m" / "two").exists() and (reader / "m" / "two").read_bytes() == b"22"

    def test_files_walk_sizes_and_mtimes(self, root, reader) -> None:
        t0 = time.time()
        (root / "t" / "x").write_atomic(b"abc")
        (root / "t" / "b" / "y").put_bytes(b"hello")
        found = {p.name: (size, mtime) for p, size, mtime in (reader / "t").files()}
        assert {k: v[0] for k, v in found.items()} == {"x": 3, "y": 5} and (reader / "t").tree_bytes() == 8
        assert all(t0 - 5 <= m <= time.time() + 5 for _, m in found.values())
        assert t0 - 5 <= (reader / "t").newest_mtime() <= time.time() + 5
        assert all(p == reader / "t" / "x" or p == reader / "t" / "b" / "y" for p, _, _ in (reader / "t").files())

    def test_mkdir_is_idempotent(self, root, reader) -> None:
        (root / "d" / "e").mkdir(parents=True, exist_ok=True)
        (root / "d" / "e").mkdir(parents=True, exist_ok=True)
        (root / "d" / "e" / "f").write_atomic(b"1")
        assert (reader / "d" / "e").is_dir() and (reader / "d").list_names() == ["e"]

    # -- removal ----------------------------------------------------------------------
    def test_remove_tree_removes_folders_and_files(self, root, reader) -> None:
        for name in ("s/a", "s/b/c", "s/b/d/e", "keep/f"):
            root.joinpath(*name.split("/")).write_atomic(b"z")
        (root / "s").remove_tree()
        assert not (reader / "s").exists() and list((reader / "s").files()) == [] and reader.list_names() == ["keep"]
        (root / "keep" / "f").remove_tree()  # a file
        assert not (reader / "keep" / "f").exists()
        (root / "u.bin").write_atomic(b"u")
        (root / "u.bin").unlink()
        assert not (reader / "u.bin").exists()

    # -- handles for other libraries ----------------------------------------------------
    def test_zarr_store_round_trip(self, root, reader) -> None:
        group = zarr.open_group((root / "g").zarr_store(read_only=False), mode="w")
        arr = group.create_array("a", shape=(4, 3), chunks=(2, 3), dtype="float32")
        arr[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
        back = zarr.open_array((reader / "g" / "a").zarr_store(read_only=True), mode="r")
        np.testing.assert_array_equal(back[:], np.arange(12, dtype=np.float32).reshape(4, 3))

    def test_fsync_tree_keeps_contents(self, root, reader) -> None:
        (root / "f" / "a").write_atomic(b"durable")
        root.fsync_tree()
        assert (reader / "f" / "a").read_bytes() == b"durable"

    def test_parquet_round_trip_with_metadata(self, root, reader) -> None:
        table = pa.table({"k": ["a", "b"], "v": [1, None]}, schema=SCHEMA)
        write_parquet_atomic(table, root / "m" / "t.parquet", SCHEMA, {b"sak.root": b"/data"})
        got, meta = read_parquet_with_metadata(reader / "m" / "t.parquet", SCHEMA)
        assert got.equals(table) and meta[b"sak.root"] == b"/data"
        assert (reader / "m").list_names() == ["t.parquet"]
        with pytest.raises(SchemaMismatch, match="file does not exist"):
            read_parquet(reader / "m" / "nope.parquet", SCHEMA)
        (root / "m" / "bad.parquet").write_atomic(b"not parquet")
        with pytest.raises(SchemaMismatch, match="bad.parquet: not a readable Parquet file"):
            read_parquet(reader / "m" / "bad.parquet", SCHEMA)
        with pytest.raises(SchemaMismatch, match="column 'k'"):
            write_parquet_atomic(pa.table({"v": [1]}), root / "m" / "x.parquet", SCHEMA)
        assert not (reader / "m" / "x.parquet").exists()

    # -- read-only views --------------------------------------------------------------------
    def test_read_only_view_refuses_every_write_and_changes_nothing(self, root) -> None:
        (root / "ro" / "a.bin").write_atomic(b"keep")
        (root / "ro" / "sub" / "b.bin").write_atomic(b"keep too")
        before = snapshot(root)
        view = as_location(str(root), read_only=True)
        assert view.read_only and (view / "ro").read_only and view.as_read_only() is view and not root.read_only
        table = pa.table({"k": ["a"], "v": [1]}, schema=SCHEMA)
        writes = {
            "put_bytes": lambda: (view / "ro" / "new.bin").put_bytes(b"x"),
            "write_atomic": lambda: (view / "ro" / "a.bin").write_atomic(b"x"),
            "write_text_atomic": lambda: (view / "ro" / "a.bin").write_text_atomic("x"),
            "mkdir": lambda: (view / "ro" / "newdir").mkdir(parents=True, exist_ok=True),
            "unlink": lambda: (view / "ro" / "a.bin").unlink(),
            "remove_tree": lambda: (view / "ro").remove_tree(),
            "fsync_tree": lambda: (view / "ro").fsync_tree(),
            "zarr_store": lambda: (view / "ro" / "g").zarr_store(read_only=False),
            "write_parquet_atomic": lambda: write_parquet_atomic(table, view / "ro" / "t.parquet", SCHEMA),
            "pickled view": lambda: pickle.loads(pickle.dumps(view / "ro" / "a.bin")).write_atomic(b"x"),
        }
        for what, call in writes.items():
            with pytest.raises(ReadOnlyStorage, match="read-only") as info:
                call()
            assert isinstance(info.value, SakError) and "read_only=False" in str(info.value), what
        assert snapshot(root) == before
        assert (view / "ro" / "a.bin").read_bytes() == b"keep" and (view / "ro").list_names() == ["a.bin", "sub"]


class TestLocal(StorageContract):
    @pytest.fixture()
    def root(self, tmp_path) -> Location:
        return as_location(tmp_path / "root")

    @pytest.fixture()
    def other(self, root) -> Location:
        return LocalLocation(str(root))

    def test_local_locations_are_plain_paths(self, root, tmp_path) -> None:
        from pathlib import Path

        assert isinstance(root, Path) and root == tmp_path / "root" and as_location(f"file://{tmp_path}") == tmp_path
        (root / "f").write_atomic(b"1")
        with open(root / "f", "rb") as fh:  # anything that takes a path takes a local location
            assert fh.read() == b"1"

    def test_fsync_tree_syncs_every_file(self, root, monkeypatch) -> None:
        import os

        for name in ("a", "b/c", "b/d/e"):
            root.joinpath(*name.split("/")).write_atomic(b"1")
        synced = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
        root.fsync_tree()
        assert len(synced) == 3


class TestReadOnlyLocal(TestLocal):
    """Every read through a read-only local view; pathlib's own writes are refused too."""

    @pytest.fixture()
    def reader(self, root) -> Location:
        return root.as_read_only()

    def test_pathlib_writes_are_refused_too(self, root) -> None:
        (root / "d" / "a").write_atomic(b"keep")
        before = snapshot(root)
        view = root.as_read_only()
        target = view / "d" / "a"
        for call in (lambda: target.write_bytes(b"x"), lambda: target.write_text("x"), lambda: target.open("wb"),
                     lambda: target.open("r+b"), lambda: target.touch(), lambda: target.rename(view / "d" / "b"),
                     lambda: target.replace(view / "d" / "b"), lambda: target.chmod(0o600), lambda: (view / "d").rmdir(),
                     lambda: (view / "e").symlink_to(target), lambda: (view / "f").hardlink_to(target)):
            with pytest.raises(ReadOnlyStorage):
                call()
        assert snapshot(root) == before and target.open("rb").read() == b"keep"
        assert [p for p in view.rglob("*") if not p.read_only] == []  # children stay read-only


class TestMemory(StorageContract):
    @pytest.fixture()
    def root(self) -> Location:
        loc = as_location(f"memory://sak-contract-{uuid.uuid4().hex[:8]}/root")
        yield loc
        loc.remove_tree()

    @pytest.fixture()
    def other(self, root) -> Location:
        return _separate_handle(root)


def _separate_handle(loc: FsspecLocation) -> FsspecLocation:
    """The same path through a new filesystem instance (its own listing cache)."""
    fs = type(loc.fs)(**loc.fs.storage_options, skip_instance_cache=True)
    assert fs is not loc.fs
    return FsspecLocation(fs, loc.path)


class TestS3(StorageContract):
    @pytest.fixture()
    def root(self, s3_bucket) -> Location:
        return as_location(f"{s3_bucket}/contract-{uuid.uuid4().hex[:8]}/root")

    @pytest.fixture()
    def other(self, root) -> Location:
        return _separate_handle(root)


class TestReadOnlyS3(TestS3):
    @pytest.fixture()
    def reader(self, root) -> Location:
        return root.as_read_only()
