"""Bounded background work for the data loader: ordered thread-pool maps and a prefetching iterator.

Both keep results in submission order, so what a loader yields never depends on
thread timing: ``workers=0`` (everything in the caller's thread) and
``workers=8`` produce identical batches.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def ordered_map(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``map(fn, items)`` run on ``pool`` with at most ``ahead`` calls in flight, results in order.

    ``pool=None`` runs in the calling thread. The input is consumed lazily, so
    ``items`` may be endless.
    """
    if pool is None:
        for item in items:
            yield fn(item)
        return
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(1, ahead):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


class BackgroundIterator(Iterator[T]):
    """Runs an iterator in a daemon thread, ``maxsize`` items ahead; re-raises its errors in the consumer.

    ``wait_seconds`` accumulates the time the consumer spent blocked on ``next``
    (the data-wait that a trainer reports).
    """

    def __init__(self, source: Iterable[T], maxsize: int = 2, *, name: str = "sak-prefetch") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self.wait_seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # a generator closed from its own thread while running: nothing to do
                    pass

    def __next__(self) -> T:
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t0
        if item is _DONE:
            self._queue.put(_DONE)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer; pending items are dropped."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5.0)

    def __enter__(self) -> BackgroundIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
