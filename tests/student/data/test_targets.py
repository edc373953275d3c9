"""Batched targets: equal to the stores' values, identical across workers and target modes, buffers reused safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _caches import indexed_cache

from sak.manifests.errors import ConfigError
from sak.pipeline.data.datasets import open_dataset
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.spec import FeatureSpec
from sak.pipeline.store.writer import SampleKey
from sak.student.data.cached import CachedTargets
from sak.student.data.resident import ResidentTargets, choose_targets
from sak.student.data.targets import StreamTargets

SIZE = (64, 80)
GB = 10**9


def synthetic_store(cache: Path, teacher: str, dtype: str, codec: str, grid: tuple[int, int], seed: int) -> None:
    """A float store of random targets for every ok row, written as two segments (rows in reverse order)."""
    spec = FeatureSpec(teacher=teacher, weights=f"random-init:{seed}", layers=(1, 3), resolution=(grid[0] * 8, grid[1] * 8),
                       resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=8, width=5, grid=grid,
                       dtype=dtype, codec=codec)
    store = FeatureStore.create(cache, spec)
    ds = open_dataset(cache, "nyud")
    rows = list(ds.ok_rows())[::-1]
    rng = np.random.default_rng(seed)
    for part in (rows[:5], rows[5:]):
        writer = store.writer(len(part))
        keys = [SampleKey(r["sha256"], r["sample_id"], r["source"], 0, "{}") for r in part]
        writer.append(keys, [rng.standard_normal((len(part), *grid, 5)).astype(np.float32) for _ in spec.layers])
        writer.commit()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    """Demo NYUD with a float16/none store and a bfloat16/zstd store of another grid, segments in other orders."""
    cache = indexed_cache(tmp_path_factory.mktemp("targets"), demo_nyud)
    synthetic_store(cache, "synthetic:a", "float16", "none", (3, 4), 0)
    synthetic_store(cache, "synthetic:b", "bfloat16", "zstd", (2, 5), 1)
    return cache


def _data(cache: Path, **kw) -> CachedTargets:
    ds = open_dataset(cache, "nyud")
    stores = [FeatureStore.open(p) for p in sorted((cache / "features").iterdir())]
    return CachedTargets(ds, stores, "train", SIZE, **kw)


def expected(data: CachedTargets, epoch: int, items) -> dict[str, list[torch.Tensor]]:
    """What the loader produced before issue 13: each store's read_rows values, float32 (C, h, w), flipped, stacked."""
    out = {}
    for key, s_idx in zip(data.keys, range(len(data.stores)), strict=True):
        store = data.stores[s_idx]
        per_layer = []
        for layer in store.spec.layers:
            maps = []
            for i in items:
                seg, row = data.items[i].locations[s_idx]
                m = torch.from_numpy(np.ascontiguousarray(store.read_rows(seg, [row])[layer][0])).permute(2, 0, 1).float()
                maps.append(m.flip(-1) if data.flip_of(epoch, i) else m)
            per_layer.append(torch.stack(maps))
        out[key] = per_layer
    return out


def epoch_batches(data, workers: int, *, targets=None, release: bool = False, bs: int = 3, start=(0, 0)):
    sampler = data.sampler(block_size=2, window=2, seed=3)
    got = []
    with data.batches(bs, sampler, workers=workers, prefetch=2, drop_last_epoch=True, start=start,
                      targets=targets) as loader:
        for batch in loader:
            got.append((batch, batch.decoded_targets()))
            if release:
                batch.release()
    return sampler, got


@pytest.mark.parametrize("workers", [0, 3])
def test_batches_equal_the_stored_values_with_feature_flip(cache, workers) -> None:
    data = _data(cache, feature_flip=True)
    sampler, got = epoch_batches(data, workers)
    order = sampler.epoch_order(0)
    assert [sid for b, _ in got for sid in b.sample_ids] == [data.items[i].row["sample_id"] for i in order]
    assert any(data.flip_of(0, i) for i in order) and not all(data.flip_of(0, i) for i in order)
    for k, (batch, decoded) in enumerate(got):
        items = order[3 * k : 3 * k + 3]
        assert batch.targets["a"].parts[0][0].dtype == torch.float16  # stored dtype, stored layout
        assert tuple(batch.targets["a"].parts[0][0].shape) == (len(items), 3, 4, 5)
        want = expected(data, 0, items)
        for key in want:
            for x, y in zip(decoded[key], want[key], strict=True):
                assert x.dtype == torch.float32 and torch.equal(x, y), key
    # the sample API still serves decoded float maps
    s = data[order[0]]
    assert torch.equal(s["targets"]["b"][1], expected(data, 0, [order[0]])["b"][1][0].flip(-1)
                       if data.flip_of(0, order[0]) else expected(data, 0, [order[0]])["b"][1][0])


def test_workers_give_bit_identical_batches(cache) -> None:
    data = _data(cache, feature_flip=True)
    _, a = epoch_batches(data, 0)
    _, b = epoch_batches(data, 4, release=True)
    for (x, dx), (y, dy) in zip(a, b, strict=True):
        assert x.sample_ids == y.sample_ids and x.position == y.position and torch.equal(x.image, y.image)
        for key in dx:
            assert all(torch.equal(p, q) for p, q in zip(dx[key], dy[key], strict=True))


def test_held_batches_are_never_overwritten(cache) -> None:
    data = _data(cache)
    sampler = data.sampler(block_size=2, window=2, seed=3)
    with data.batches(3, sampler, workers=0) as loader:
        ref = [(b, b.decoded_targets()) for b in (next(loader) for _ in range(13))]
    source = StreamTargets(data.stores, data.keys, data.items, 3, ring=2, gathers=data.gathers)
    with data.batches(3, sampler, workers=2, prefetch=1, targets=source) as loader:
        held = next(loader)  # the trainer keeps this one (never released)
        kept = {k: [p.clone() for layer in v.parts for p in layer] for k, v in held.targets.items()}
        for step in range(12):  # four epochs, every other batch released at once
            batch = next(loader)
            ref_batch = ref[step + 1]
            assert batch.sample_ids == ref_batch[0].sample_ids
            for key, maps in batch.decoded_targets().items():
                assert all(torch.equal(p, q) for p, q in zip(maps, ref_batch[1][key], strict=True))
            batch.release()
    for key, parts in kept.items():
        assert all(torch.equal(p, q) for p, q in zip(parts, [p for layer in held.targets[key].parts for p in layer],
                                                      strict=True))
    # at most: held + consumed + queued (prefetch 1) + waiting to be queued + in flight (2 workers) + 1 spare; not one per batch
    assert max(r.made for r in source.rings) <= 7 < 13


def test_collected_batches_without_release_stay_valid(cache) -> None:
    data = _data(cache)
    _, a = epoch_batches(data, 2)  # nobody releases: every batch keeps its own buffers
    _, b = epoch_batches(data, 0, release=True)
    for (x, _), (_, dy) in zip(a, b, strict=True):
        for key, maps in x.decoded_targets().items():
            assert all(torch.equal(p, q) for p, q in zip(maps, dy[key], strict=True))


def test_resident_ram_equals_stream_bit_for_bit(cache) -> None:
    data = _data(cache, feature_flip=True)
    resident = ResidentTargets(data, "cpu", 3, workers=2, chunk=4)
    assert resident.nbytes == data.target_bytes()
    _, stream = epoch_batches(data, 2)  # kept (not released): their buffers are compared below
    _, ram = epoch_batches(data, 2, targets=resident)
    for (x, _), (y, _) in zip(stream, ram, strict=True):
        assert x.sample_ids == y.sample_ids
        for key in x.targets:
            sx, sy = x.targets[key], y.targets[key]
            assert sx.flip == sy.flip
            for lx, ly in zip(sx.parts, sy.parts, strict=True):
                assert all(p.dtype == q.dtype and torch.equal(p, q) for p, q in zip(lx, ly, strict=True))


def test_resume_from_a_position_gives_the_same_next_batches(cache) -> None:
    data = _data(cache, feature_flip=True)
    sampler = data.sampler(block_size=2, window=2, seed=3)
    with data.batches(3, sampler, workers=2, prefetch=2) as loader:
        run = [next(loader) for _ in range(7)]  # into the second epoch
    with data.batches(3, sampler, workers=2, prefetch=2, start=run[2].position) as loader:
        resumed = [next(loader) for _ in range(4)]
    for a, b in zip(run[3:], resumed, strict=True):
        assert a.sample_ids == b.sample_ids and a.position == b.position
        for key, maps in a.decoded_targets().items():
            assert all(torch.equal(p, q) for p, q in zip(maps, b.decoded_targets()[key], strict=True))


def test_auto_picks_gpu_then_ram_then_stream_and_says_why() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    pick = lambda need, **kw: choose_targets("auto", need, **{"device": cuda, "gpu_free_bytes": 40 * GB,
                                                               "ram_available": 100 * GB, **kw})
    assert pick(16 * GB).mode == "gpu" and "40.00 GB free on the GPU" in pick(16 * GB).reason
    c = pick(30 * GB)
    assert c.mode == "ram" and "MemAvailable 100.00 GB" in c.reason and "not in half" in c.reason
    assert pick(20 * GB, device=cpu, gpu_free_bytes=None, ranks_per_node=2).mode == "ram"  # each rank holds a copy
    assert pick(20 * GB, device=cpu, gpu_free_bytes=None, ranks_per_node=3).mode == "stream"
    assert pick(60 * GB).mode == "stream" and "read per batch" in pick(60 * GB).reason
    assert pick(16 * GB, budget_gb=8).mode == "stream" and "--targets-budget 8" in pick(16 * GB, budget_gb=8).reason
    assert pick(1 * GB, device=cpu, gpu_free_bytes=None).mode == "ram"
    assert pick(1 * GB, device=cpu, gpu_free_bytes=None, ram_available=None).mode == "stream"
    assert choose_targets("stream", GB, device=cuda, gpu_free_bytes=40 * GB, ram_available=100 * GB).mode == "stream"
    with pytest.raises(ConfigError, match="--targets ram or --targets stream"):
        choose_targets("gpu", GB, device=cpu, gpu_free_bytes=None, ram_available=100 * GB)
    with pytest.raises(ConfigError, match="--targets stream"):
        choose_targets("ram", 200 * GB, device=cpu, gpu_free_bytes=None, ram_available=100 * GB)
