"""Corrupted feature stores never train silently (issue 14 item 2): random byte flips, swapped and missing shards.

Each damage is made on committed shards of a synthetic store over the demo dataset and read back through a
training read path (``read_rows``, ``StreamTargets.batch``, ``ResidentTargets`` loading, a ``Loader`` batch);
every one must raise :class:`StoreCorrupt` naming the segment and the damaged sample, never return bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sak.cli.cache import app as cache_app
from sak.cli.train import app as train_app
from sak.manifests.errors import StoreCorrupt
from sak.pipeline.data.datasets import open_dataset
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.gather import FILES
from sak.pipeline.store.spec import FeatureSpec
from sak.pipeline.store.writer import SampleKey
from sak.student.data.cached import CachedTargets, Loader
from sak.student.data.resident import ResidentTargets
from sak.student.data.targets import StreamTargets

pytestmark = pytest.mark.reliability

SIZE = (64, 80)
FLIPS = 24
PATHS = ("read_rows", "stream", "resident", "loader")


def synthetic_store(cache: Path, codec: str) -> FeatureStore:
    """A float16 store of random targets for every ok image, as two segments of 6 rows (equal shard sizes)."""
    spec = FeatureSpec(teacher=f"synthetic:{codec}", weights="random-init:0", layers=(1, 3), resolution=(24, 32),
                       resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=8, width=5, grid=(3, 4),
                       codec=codec)
    store = FeatureStore.create(cache, spec)
    rows = list(open_dataset(cache, "nyud").ok_rows())
    rng = np.random.default_rng(0)
    for part in (rows[:6], rows[6:]):
        writer = store.writer(len(part))
        keys = [SampleKey(r["sha256"], r["sample_id"], r["source"], 0, "{}") for r in part]
        writer.append(keys, [rng.standard_normal((len(part), 3, 4, 5)).astype(np.float32) for _ in spec.layers])
        writer.commit()
    return FeatureStore.open(store.path)


def train_read(cache: Path, store_path: Path, how: str) -> None:
    """Every train item's targets through one training read path (raises on damage)."""
    store = FeatureStore.open(store_path)
    data = CachedTargets(open_dataset(cache, "nyud"), [store], "train", SIZE)
    n = len(data.items)
    if how == "read_rows":
        for seg, row in (item.locations[0] for item in data.items):
            store.read_rows(seg, [row])
    elif how == "stream":
        StreamTargets(data.stores, data.keys, data.items, n).batch(range(n), [False] * n)
    elif how == "resident":
        ResidentTargets(data, "cpu", n, workers=2)
    else:
        with Loader(data, n, data.sampler(block_size=4, window=2, seed=0), (0, 0), 0, 1, False, True) as loader:
            next(loader)


@pytest.fixture()
def cache(demo_cache) -> Path:
    return demo_cache[0]


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_random_byte_flips_in_the_data_region_are_all_detected(cache: Path, codec: str) -> None:
    store = synthetic_store(cache, codec)
    data = CachedTargets(open_dataset(cache, "nyud"), [store], "train", SIZE)
    train = [(item.locations[0], item.row["sample_id"]) for item in data.items]
    rng = np.random.default_rng(14)
    detected = 0
    for k in range(FLIPS):
        (seg, row), sample_id = train[rng.integers(len(train))]
        name = ("layer_1", "layer_3")[rng.integers(2)]
        arr = store.array(seg, name, fast=True)
        off, nbytes = (int(v) for v in arr.shard_index(row // arr.shard_samples)[row % arr.shard_samples])
        path = Path(str(arr.shard_file(row // arr.shard_samples)))
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[off + int(rng.integers(nbytes))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        try:
            train_read(cache, store.path, PATHS[k % len(PATHS)])
        except StoreCorrupt as exc:
            detected += seg in str(exc) and sample_id in str(exc) and "--repair" in str(exc)
        finally:
            path.write_bytes(original)
    assert detected == FLIPS  # 24/24 for each codec
    for how in PATHS:  # undamaged again: every path reads
        train_read(cache, store.path, how)


def _shard(store: FeatureStore, seg: str, name: str) -> Path:
    return Path(str(store.array(seg, name, fast=True).shard_file(0)))


@pytest.mark.parametrize("how", PATHS)
def test_two_swapped_shards_of_the_same_size_are_detected(cache: Path, how: str) -> None:
    store = synthetic_store(cache, "none")
    a, b = (_shard(store, seg, "layer_3") for seg in store.committed_segments())
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db)
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(StoreCorrupt, match="crc32c"):
        train_read(cache, store.path, how)


@pytest.mark.parametrize("how", PATHS)
def test_a_deleted_shard_is_an_error_never_zeros(cache: Path, how: str) -> None:
    store = synthetic_store(cache, "none")
    seg = store.committed_segments()[1]
    _shard(store, seg, "layer_1").unlink()
    FILES.close_all()  # a descriptor this process still holds would read the deleted file
    with pytest.raises(StoreCorrupt, match="missing") as err:
        train_read(cache, store.path, how)
    assert seg in str(err.value)


def _fit(cache: Path, out: Path):
    return CliRunner().invoke(train_app, ["fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "1",
                                          "--batch-size", "4", "--out", str(out), "--workers", "0", "--device", "cpu"])


@pytest.mark.parametrize("damage", ["flipped byte", "empty shard", "truncated shard", "deleted shard", "row out of range"])
def test_sak_train_fit_on_a_damaged_store_exits_2_with_the_fix(demo_cache, tmp_path: Path, damage: str) -> None:
    cache, _ = demo_cache
    res = CliRunner().invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache),
                                         "--device", "cpu"])
    assert res.exit_code == 0, res.output
    store = FeatureStore.open(next((cache / "features").iterdir()))
    seg = sorted(store.committed_segments())[0]
    shard = _shard(store, seg, f"layer_{store.spec.layers[-1]}")
    if damage == "flipped byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0x10
        shard.write_bytes(bytes(data))
    elif damage in ("empty shard", "truncated shard"):
        shard.write_bytes(shard.read_bytes()[: 0 if damage == "empty shard" else 50])
    elif damage == "deleted shard":
        shard.unlink()
    else:
        part = Path(str(store.part_path(seg)))
        table = pq.read_table(part)
        rows = [None if r is None else r + 1000 for r in table.column("row").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows, pa.int64())), part)
    FILES.close_all()
    res = _fit(cache, tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and seg in res.output and "--repair" in res.output, res.output
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
