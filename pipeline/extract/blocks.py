"""Blocks of work that concurrent writers of one store split between them (:mod:`..store.claims`).

What a block is: ``segment_size`` consecutive samples of the run's FULL ordered sample list (every
image of the selected datasets in manifest order, deduplicated by content, after ``--limit``, times
its views), whatever is already done. Every writer started on the same datasets computes the same
blocks whenever it starts, while a "still to do" list would differ between writers (each sees
another set of committed samples) and their blocks would never meet. A hash bucket of the key
would also be writer-independent, but it scatters each segment over the whole dataset and its
block count would have to be fixed for every dataset size.
The name is ``b<index>-<hash of the block's keys>``: writers whose lists differ (other datasets,
another ``--segment-size``) get other names and simply do not coordinate (dedup stays the backstop).

A task runs whole blocks (only their samples still to do), several small ones packed up to
``segment_size`` samples; it claims each block per teacher store before running it, and hands
back the samples of blocks another live run holds (deferred): the run comes back to them after
its other work, waiting with backoff while nothing else is left (:class:`BlockWaiter`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..store.claims import BlockClaims, ClaimRecord

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Any)  # a sample: has .block (str) and .teachers (tuple[int, ...])


def block_names(keys: Sequence[tuple[str, int]], size: int) -> list[str]:
    """The block name of each (sha256, view) key of a run's full ordered sample list."""
    names: list[str] = []
    for start in range(0, len(keys), size):
        chunk = keys[start : start + size]
        digest = hashlib.sha256("\n".join(f"{k}|{v}" for k, v in chunk).encode()).hexdigest()[:16]
        names += [f"b{start // size:06d}-{digest}"] * len(chunk)
    return names


def pack_blocks(samples: Sequence[S], size: int) -> list[list[S]]:
    """Samples grouped by block (in the order blocks first appear), whole blocks packed into groups of at most ``size``."""
    blocks: dict[str, list[S]] = {}
    for s in samples:
        blocks.setdefault(s.block, []).append(s)
    groups: list[list[S]] = []
    current: list[S] = []
    for block in blocks.values():
        if current and len(current) + len(block) > size:
            groups.append(current)
            current = []
        current.extend(block)
    if current:
        groups.append(current)
    return groups


def task_groups(samples: Sequence[S], size: int, claims: bool) -> list[list[S]]:
    """The samples of each segment task: whole blocks packed (claims), else plain chunks of ``size``."""
    if claims:
        return pack_blocks(samples, size)
    return [list(samples[j : j + size]) for j in range(0, len(samples), size)]


def claim_blocks(samples: Sequence[S], claims: Sequence[BlockClaims]) -> tuple[list[S], list[S], list[tuple[BlockClaims, ClaimRecord]], set[str]]:
    """Claim each block of ``samples`` in every teacher store (``claims[t]``) that needs it.

    Returns (samples to run, each with the teachers whose block was won; deferred samples, with the
    teachers whose block another live run holds; the claims won; the holders met as ``host:pid``).
    """
    won: list[set[str]] = [set() for _ in claims]
    held: list[tuple[BlockClaims, ClaimRecord]] = []
    holders: set[str] = set()
    for t, store_claims in enumerate(claims):
        for block in dict.fromkeys(s.block for s in samples if t in s.teachers):
            res = store_claims.claim(block)
            if res.won:
                won[t].add(block)
                held.append((store_claims, res.record))
            else:
                holders.add(res.record.holder)
    run: list[S] = []
    deferred: list[S] = []
    for s in samples:
        mine = tuple(t for t in s.teachers if s.block in won[t])
        later = tuple(t for t in s.teachers if s.block not in won[t])
        if mine:
            run.append(dataclasses.replace(s, teachers=mine))
        if later:
            deferred.append(dataclasses.replace(s, teachers=later))
    return run, deferred, held, holders


class BlockWaiter:
    """Backoff between rounds of deferred blocks: none after a round that did something, then
    ``first`` seconds doubling up to ``most`` (a quarter of the lease, at most 10 s) while every
    block is still held. ``sleep`` is injectable for tests."""

    def __init__(self, lease_seconds: float, *, first: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.first, self.most = first, max(first, min(10.0, lease_seconds / 4))
        self.delay = 0.0
        self.sleep = sleep

    def wait(self, progressed: bool, blocks: int, holders: set[str]) -> float:
        """Sleep before the next round; returns the seconds slept."""
        if progressed:
            self.delay = 0.0
            return 0.0
        self.delay = self.first if not self.delay else min(self.most, 2 * self.delay)
        log.info("waiting for %d block(s) claimed by %s (next look in %.1f s)", blocks,
                 ", ".join(sorted(holders)) or "other writers", self.delay)
        self.sleep(self.delay)
        return self.delay


class BlockRounds:
    """``next_round`` of :func:`.execution.run_tasks`: after each round, the deferred samples of
    its results (blocks other live runs held) as new tasks, once :class:`BlockWaiter` has waited."""

    def __init__(self, lease_seconds: float, make_tasks: Callable[[list, int], list], *, first: int,
                 waiter: BlockWaiter | None = None) -> None:
        self.make_tasks, self.issued = make_tasks, first
        self.waiter = waiter or BlockWaiter(lease_seconds)

    def __call__(self, results: Sequence[Any]) -> list:
        deferred = [s for res in results for s in res.deferred]
        if not deferred:
            return []
        self.waiter.wait(any(res.samples for res in results), len({s.block for s in deferred}),
                         set().union(*(res.holders for res in results)))
        tasks = self.make_tasks(deferred, self.issued)
        self.issued += len(tasks)
        return tasks
