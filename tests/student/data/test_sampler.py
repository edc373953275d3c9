"""Block-shuffle sampler: a permutation per epoch, contiguous blocks read once, seeded, rank-disjoint."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sak.manifests.errors import ConfigError
from sak.student.data.sampler import BlockShuffleSampler, make_blocks


def _items(n_segments: int = 3, per_segment: int = 20, skip_every: int = 0):
    segs, rows = [], []
    for s in range(n_segments):
        for r in range(per_segment):
            if skip_every and r % skip_every == 0:
                continue  # a gap: e.g. a val sample or a failed row in the segment
            segs.append(f"seg{s}")
            rows.append(r)
    return segs, rows


def test_blocks_are_contiguous_row_ranges_of_one_segment() -> None:
    segs, rows = _items(2, 10, skip_every=4)  # rows 1,2,3,5,6,7,9 per segment
    blocks = make_blocks(segs, rows, block_size=4)
    assert [(b.segment_id, b.start, b.stop) for b in blocks] == [
        ("seg0", 1, 4), ("seg0", 5, 8), ("seg0", 9, 10), ("seg1", 1, 4), ("seg1", 5, 8), ("seg1", 9, 10)
    ]
    for b in blocks:
        assert all(segs[i] == b.segment_id and b.start <= r < b.stop and rows[i] == r for i, r in b.items)
    assert sorted(i for b in blocks for i, _ in b.items) == list(range(len(rows)))


@settings(max_examples=25, deadline=None)
@given(
    n_segments=st.integers(1, 4), per_segment=st.integers(1, 30), block_size=st.integers(1, 8),
    window=st.integers(1, 4), seed=st.integers(0, 1000), epoch=st.integers(0, 5),
)
def test_epoch_is_a_permutation_and_each_block_is_read_once(n_segments, per_segment, block_size, window, seed, epoch):
    segs, rows = _items(n_segments, per_segment)
    blocks = make_blocks(segs, rows, block_size)
    s = BlockShuffleSampler(blocks, seed=seed, window=window)
    order = s.epoch_order(epoch)
    assert sorted(order) == list(range(len(rows)))
    read = [b for w in s.plan(epoch) for b in w.blocks]
    assert len(read) == len(blocks) and set(read) == set(blocks)
    # every sample a window serves comes from a block that window reads
    for w in s.plan(epoch):
        inside = {i for b in w.blocks for i, _ in b.items}
        assert set(w.order) <= inside


def test_deterministic_per_seed_and_epoch() -> None:
    blocks = make_blocks(*_items(3, 20), block_size=4)
    a = BlockShuffleSampler(blocks, seed=1).epoch_order(0)
    assert a == BlockShuffleSampler(blocks, seed=1).epoch_order(0)
    assert a != BlockShuffleSampler(blocks, seed=2).epoch_order(0)
    assert a != BlockShuffleSampler(blocks, seed=1).epoch_order(1)
    assert a != list(range(60))  # it does shuffle


def test_window_bounds_the_shuffle() -> None:
    segs, rows = ["s"] * 40, list(range(40))
    s = BlockShuffleSampler(make_blocks(segs, rows, 5), seed=0, window=2)
    for w in s.plan(0):
        assert len(w.blocks) <= 2 and len(w.order) <= 10


def test_ranks_are_disjoint_and_equal_length() -> None:
    blocks = make_blocks(*_items(3, 21), block_size=4)  # 18 blocks, uneven sizes
    world = 3
    orders = [BlockShuffleSampler(blocks, seed=5, rank=r, world=world).epoch_order(2) for r in range(world)]
    assert len({len(o) for o in orders}) == 1
    for a, b in itertools.combinations(orders, 2):
        assert not set(a) & set(b)
    assert sum(map(len, orders)) >= 63 - 3 * 3  # at most the tail of the smaller ranks is dropped


def test_windows_from_resumes_at_the_same_item() -> None:
    s = BlockShuffleSampler(make_blocks(*_items(2, 15), block_size=4), seed=3, window=2)
    stream = itertools.chain.from_iterable(w.order for _, _, w in s.windows_from(0, 0))
    full = list(itertools.islice(stream, 75))  # crosses into epoch 2
    for epoch, offset, skip in [(0, 0, 0), (0, 7, 7), (1, 4, 34), (2, 0, 60)]:
        resumed = itertools.chain.from_iterable(w.order for _, _, w in s.windows_from(epoch, offset))
        assert list(itertools.islice(resumed, 75 - skip)) == full[skip:]


def test_too_few_blocks_for_the_ranks() -> None:
    blocks = make_blocks(["s"] * 4, [0, 1, 2, 3], block_size=4)
    with pytest.raises(ConfigError, match="cannot feed 2 ranks"):
        BlockShuffleSampler(blocks, rank=0, world=2)


def test_ordered_map_keeps_order_and_bounds_the_work_in_flight() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from sak.student.data.prefetch import ordered_map

    live, peak, lock = [0], [0], threading.Lock()

    def slow(i: int) -> int:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.002 * (5 - i % 5))  # later items finish first
        with lock:
            live[0] -= 1
        return i * i

    with ThreadPoolExecutor(4) as pool:
        assert list(ordered_map(pool, slow, range(20), ahead=3)) == [i * i for i in range(20)]
    assert peak[0] <= 3
    assert list(ordered_map(None, slow, range(5), ahead=3)) == [0, 1, 4, 9, 16]


def test_background_iterator_hands_errors_to_the_consumer() -> None:
    from sak.student.data.prefetch import BackgroundIterator

    def source():
        yield 1
        yield 2
        raise ValueError("bad shard")

    it = BackgroundIterator(source(), maxsize=1)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="bad shard"):
        next(it)
    endless = BackgroundIterator(itertools.count(), maxsize=2)
    assert [next(endless) for _ in range(5)] == [0, 1, 2, 3, 4]
    endless.close()
    assert not endless._thread.is_alive()
