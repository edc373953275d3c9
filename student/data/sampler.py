"""Block-shuffle sampling: random enough for SGD, contiguous enough for a chunked store.

Samples are grouped into *blocks*: runs of rows of one segment of the first
feature store, at most ``block_size`` rows apart, so one block is one contiguous
``read_rows`` call. An epoch shuffles the block order (seeded by ``seed`` and the
epoch), deals the blocks to ranks round-robin, and shuffles samples inside a
*window* of ``window`` consecutive blocks. Every rank's epoch is cut to the same
length (the smallest rank's), so ranks step in lock-step and epochs line up.

The sampler is a pure function of ``(seed, epoch, rank, world)``: a position is
just ``(epoch, offset)``, which is what a checkpoint stores.

Several datasets (:class:`MixedSampler`): each keeps its own block-shuffle sampler (reads stay
contiguous inside each dataset's store rows) and a seeded *dataset schedule* decides, slot by
slot, which dataset serves the next sample. An epoch of a mixed run is ``L`` slots, ``L`` the
sum of the datasets' epoch lengths (on one process: every training item of every dataset once);
dataset k gets exactly ``c_k`` of them, ``c_k = p_k * L`` rounded by largest remainder, the slot
order a seeded permutation (seed, epoch, rank). ``p_k`` is the mixing strategy (:func:`mix_probabilities`):
``proportional`` ``n_k / N`` (c_k = n_k: every item once per epoch), ``balanced`` ``1 / K`` (small
datasets repeat, large ones are sub-sampled), ``temperature:T`` ``n_k^(1/T) / sum`` (T = 1 is
proportional, T -> inf balanced). Each dataset advances through its own epochs as it is drawn, so a
mixed position is ``(epoch, offset, ((epoch_k, offset_k), ...))``: the schedule's place plus every
dataset sampler's place, all a checkpoint needs to resume bit for bit. Every rank draws its own
schedule over its own blocks of every dataset; all ranks have the same ``L``, so they stay in step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ...manifests.errors import ConfigError

#: A sampler position: ``(epoch, offset)``, or ``(epoch, offset, ((epoch_k, offset_k), ...))`` for a mixed run.
Position = tuple[Any, ...]

#: Dataset mixing strategies of a multi-dataset run (``temperature:T`` takes T > 0).
MIX_MODES = ("proportional", "balanced", "temperature:T")


def parse_position(value: Sequence[Any]) -> Position:
    """A position read back from JSON (lists) as the tuples the samplers produce; old ``[epoch, offset]`` stay pairs."""
    if len(value) == 2:
        return int(value[0]), int(value[1])
    if len(value) == 3:
        return int(value[0]), int(value[1]), tuple((int(e), int(o)) for e, o in value[2])
    raise ConfigError(f"a sampler position is [epoch, offset] or [epoch, offset, [[epoch, offset], ...]], got {value!r}")


def parse_mix(mix: str) -> float | None:
    """The temperature of a ``--mix`` value (None for proportional and balanced); raises on anything else."""
    if mix in ("proportional", "balanced"):
        return None
    kind, _, value = mix.partition(":")
    try:
        temp = float(value) if kind == "temperature" else math.nan
    except ValueError:
        temp = math.nan
    if not temp > 0 or math.isinf(temp):
        raise ConfigError(f"--mix must be proportional, balanced or temperature:T with T > 0 (e.g. temperature:2), got {mix!r}")
    return temp


def mix_probabilities(mix: str, sizes: Sequence[int]) -> list[float]:
    """Probability of drawing from each dataset: ``n_k/N`` (proportional), ``1/K`` (balanced), ``n_k^(1/T)/sum``."""
    temp = parse_mix(mix)
    if mix == "balanced":
        weights = [1.0] * len(sizes)
    else:
        weights = [float(n) ** (1.0 / (temp or 1.0)) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def mix_counts(probs: Sequence[float], total: int) -> list[int]:
    """``probs * total`` rounded to integers that sum to ``total`` (largest remainder, ties to the first)."""
    raw = [p * total for p in probs]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - counts[k]), k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class Draw:
    """One sample the sampler serves: its item index, the epoch it belongs to, the epoch its flip is drawn
    for (its dataset's own epoch), and the sampler position after it."""

    item: int
    epoch: int
    flip_epoch: int
    after: Position


@dataclass(frozen=True)
class Block:
    """Rows ``[start, stop)`` of one segment; ``items`` are the wanted samples (item index, row) in row order."""

    segment_id: str
    start: int
    stop: int
    items: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Window:
    """A few blocks read together and the order their samples are served in (item indices)."""

    blocks: tuple[Block, ...]
    order: tuple[int, ...]


def make_blocks(segments: Sequence[str], rows: Sequence[int], block_size: int) -> list[Block]:
    """Group items (item i lives at ``segments[i]``, ``rows[i]``) into contiguous row blocks.

    A block spans at most ``block_size`` rows of one segment; rows inside its range
    that are not wanted (another split, a failed row) are read and dropped, which is
    cheaper than splitting the read.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    if len(segments) != len(rows):
        raise ValueError("segments and rows must have the same length")
    order = sorted(range(len(rows)), key=lambda i: (segments[i], int(rows[i])))
    blocks: list[Block] = []
    cur: list[tuple[int, int]] = []
    seg = ""  # read only once cur holds a row of it
    start = 0
    for i in order:
        r = int(rows[i])
        if cur and (segments[i] != seg or r >= start + block_size):
            blocks.append(Block(seg, start, cur[-1][1] + 1, tuple(cur)))
            cur = []
        if not cur:
            seg, start = segments[i], r
        cur.append((i, r))
    if cur:
        blocks.append(Block(seg, start, cur[-1][1] + 1, tuple(cur)))
    return blocks


class BlockShuffleSampler:
    """Deterministic per-rank epoch plans over blocks; see the module docstring."""

    def __init__(self, blocks: Sequence[Block], *, seed: int = 0, rank: int = 0, world: int = 1, window: int = 4,
                 shuffle: bool = True) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is not in a world of {world} process(es)")
        if window < 1:
            raise ConfigError(f"window must be >= 1 block, got {window}")
        if len(blocks) < world:
            raise ConfigError(
                f"{len(blocks)} block(s) of samples cannot feed {world} ranks: use fewer processes "
                "or a smaller --block-size"
            )
        self.blocks = tuple(blocks)
        self.seed, self.rank, self.world, self.window, self.shuffle = seed, rank, world, window, shuffle
        self.num_items = sum(len(b.items) for b in self.blocks)
        self._plan = lru_cache(maxsize=4)(self._make_plan)

    def _rank_blocks(self, epoch: int, rank: int) -> list[Block]:
        idx = np.arange(len(self.blocks))
        if self.shuffle:
            idx = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
        return [self.blocks[i] for i in idx[rank :: self.world]]

    def epoch_len(self, epoch: int) -> int:
        """Samples every rank serves in ``epoch`` (the smallest rank's share)."""
        return min(sum(len(b.items) for b in self._rank_blocks(epoch, r)) for r in range(self.world))

    def _make_plan(self, epoch: int) -> tuple[Window, ...]:
        blocks = self._rank_blocks(epoch, self.rank)
        rng = np.random.default_rng([self.seed, epoch, 1 + self.rank])
        left = self.epoch_len(epoch)
        windows = []
        for w in range(0, len(blocks), self.window):
            if left <= 0:
                break
            group = blocks[w : w + self.window]
            items = np.array([i for b in group for i, _ in b.items], dtype=np.int64)
            if self.shuffle:
                items = rng.permutation(items)
            items = items[:left]
            left -= len(items)
            kept = set(items.tolist())
            used = tuple(b for b in group if any(i in kept for i, _ in b.items))
            windows.append(Window(used, tuple(int(i) for i in items)))
        return tuple(windows)

    def plan(self, epoch: int) -> tuple[Window, ...]:
        """This rank's windows for ``epoch``; their orders concatenated are its sample order."""
        return self._plan(epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        return [i for w in self.plan(epoch) for i in w.order]

    def windows_from(self, epoch: int = 0, offset: int = 0) -> Iterator[tuple[int, int, Window]]:
        """Endless ``(epoch, offset_of_first_item, window)`` from position ``(epoch, offset)``.

        A window that starts before ``offset`` is cut so its order begins at ``offset``.
        """
        while True:
            pos = 0
            for win in self.plan(epoch):
                end = pos + len(win.order)
                if end > offset:
                    skip = max(0, offset - pos)
                    yield epoch, pos + skip, Window(win.blocks, win.order[skip:]) if skip else win
                pos = end
            epoch, offset = epoch + 1, 0

    def draws(self, start: Position = (0, 0)) -> Iterator[Draw]:
        """Endless samples from position ``start`` = (epoch, offset), each with the position after it."""
        lengths: dict[int, int] = {}
        for epoch, offset, win in self.windows_from(int(start[0]), int(start[1])):
            if epoch not in lengths:
                lengths = {epoch: self.epoch_len(epoch)}
            for k, i in enumerate(win.order):
                after = offset + k + 1
                yield Draw(i, epoch, epoch, (epoch + 1, 0) if after >= lengths[epoch] else (epoch, after))


class MixedSampler:
    """Samples of several datasets mixed by a seeded per-epoch schedule; see the module docstring.

    ``samplers[k]`` serves dataset k's items, which are ``offsets[k] + i`` in the combined item list.
    """

    def __init__(self, samplers: Sequence[BlockShuffleSampler], offsets: Sequence[int], probs: Sequence[float], *,
                 seed: int = 0, rank: int = 0) -> None:
        if not len(samplers) == len(offsets) == len(probs) or not samplers:
            raise ValueError("one sampler, offset and probability per dataset")
        self.samplers, self.offsets, self.probs = tuple(samplers), tuple(offsets), tuple(probs)
        self.seed, self.rank = seed, rank
        self.length = sum(s.epoch_len(0) for s in self.samplers)
        self.counts = mix_counts(self.probs, self.length)
        self.num_items = sum(s.num_items for s in self.samplers)
        self._schedule = lru_cache(maxsize=2)(self._make_schedule)

    def _make_schedule(self, epoch: int) -> tuple[int, ...]:
        slots = np.repeat(np.arange(len(self.samplers)), self.counts)
        rng = np.random.default_rng([self.seed, epoch, self.rank, 0x4D4958])  # "MIX"
        return tuple(int(k) for k in rng.permutation(slots))

    def schedule(self, epoch: int) -> tuple[int, ...]:
        """The dataset of every slot of ``epoch`` on this rank (``counts[k]`` slots of dataset k)."""
        return self._schedule(epoch)

    def epoch_len(self, epoch: int) -> int:
        return self.length

    def start(self) -> Position:
        return 0, 0, tuple((0, 0) for _ in self.samplers)

    def draws(self, start: Position | None = None) -> Iterator[Draw]:
        """Endless samples from a mixed position (``(0, 0)``, an old-style start, means the very beginning)."""
        if start is None or len(start) == 2:
            if start is not None and tuple(start) != (0, 0):
                raise ConfigError(f"sampler position {tuple(start)} is a single-dataset position; this run mixes "
                                  f"{len(self.samplers)} datasets: resume it with the datasets it was trained on")
            start = self.start()
        epoch, offset, places = int(start[0]), int(start[1]), list(start[2])
        if len(places) != len(self.samplers):
            raise ConfigError(f"sampler position holds {len(places)} dataset positions, this run mixes "
                              f"{len(self.samplers)} datasets: resume it with the datasets it was trained on")
        streams = [s.draws(p) for s, p in zip(self.samplers, places, strict=True)]
        while True:
            order = self.schedule(epoch)
            for slot in range(offset, len(order)):
                k = order[slot]
                d = next(streams[k])
                places[k] = d.after
                after = (epoch + 1, 0) if slot + 1 >= len(order) else (epoch, slot + 1)
                yield Draw(d.item + self.offsets[k], epoch, d.flip_epoch, (*after, tuple(places)))
            epoch, offset = epoch + 1, 0
