"""Block-shuffle sampling: random enough for SGD, contiguous enough for a chunked store.

Samples are grouped into *blocks*: runs of rows of one segment of the first
feature store, at most ``block_size`` rows apart, so one block is one contiguous
``read_rows`` call. An epoch shuffles the block order (seeded by ``seed`` and the
epoch), deals the blocks to ranks round-robin, and shuffles samples inside a
*window* of ``window`` consecutive blocks. Every rank's epoch is cut to the same
length (the smallest rank's), so ranks step in lock-step and epochs line up.

The sampler is a pure function of ``(seed, epoch, rank, world)``: a position is
just ``(epoch, offset)``, which is what a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...manifests.errors import ConfigError


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
