"""Run independent segment tasks in-process, on a local dask cluster, or on a remote scheduler.

* ``workers == 1`` and no scheduler: tasks run one after another in this process (no
  cluster; the fast path for tests and for one GPU).
* ``workers > 1``: a ``distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
  processes=True)`` is started for the run and closed after it (one process per GPU or
  per core group; the model is created once per worker process and cached there).
* ``scheduler="tcp://host:8786"``: tasks are submitted to an existing dask cluster
  (started by ``dask scheduler`` / ``dask worker`` or dask-jobqueue on SLURM); every
  worker must see the cache path and the images at the same paths.

Each task is one segment; a task writes only its own segment and commit part, so a run's tasks
need no coordination and a lost worker loses at most its current segment. Other runs on the same
store are kept off a task's blocks by claims (:mod:`.blocks`); blocks they hold come back as the
next round's tasks (``next_round``), run on the same workers.
dask.distributed is imported only when a cluster is used.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Per-worker-process cache of expensive objects (teachers, open stores), keyed by the caller.
_WORKER_CACHE: dict[Any, Any] = {}


def worker_cached(key: Any, make: Callable[[], Any]) -> Any:
    """``make()`` once per process for ``key``; later calls in the same process reuse it."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = make()
    return _WORKER_CACHE[key]


def set_worker_cached(key: Any, value: Any) -> None:
    _WORKER_CACHE[key] = value


def drop_worker_cached(key: Any) -> None:
    _WORKER_CACHE.pop(key, None)


def worker_index() -> int | None:
    """Index of the current dask worker (LocalCluster names them 0..n-1), None outside a worker."""
    if "distributed" not in sys.modules:  # not imported: this cannot be a dask worker (and stays light)
        return None
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    try:
        return int(name)
    except (TypeError, ValueError):
        return abs(hash(name)) % 1024


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[Any],
    *,
    args: tuple = (),
    workers: int = 1,
    scheduler: str | None = None,
    on_result: Callable[[Any], None] | None = None,
    local_kwargs: dict[str, Any] | None = None,
    next_round: Callable[[list[Any]], Sequence[Any]] | None = None,
) -> list[Any]:
    """Call ``fn(task, *args)`` for every task; results in task order. ``on_result`` sees each as it completes.

    ``next_round(results)`` (optional) is called with each round's results once they are all in and
    returns the tasks of another round (the run's deferred blocks), or none to stop; every round
    runs on the same workers (one cluster for the whole run) and its results follow the last round's.

    ``fn`` must be an importable module-level function and ``args``/tasks picklable when a
    cluster is used. ``local_kwargs`` (e.g. a progress callback, which cannot travel to another
    process) are passed only when tasks run in this process. The first task exception is
    raised here; unfinished tasks are cancelled (their segments stay uncommitted, for ``gc``).
    """
    if not tasks:
        return []
    if scheduler is None and workers <= 1:
        results: list[Any] = []
        while tasks:
            done = []
            for task in tasks:
                res = fn(task, *args, **(local_kwargs or {}))
                if on_result is not None:
                    on_result(res)
                done.append(res)
            results += done
            tasks = next_round(done) if next_round is not None else []
        return results
    return list(_run_on_dask(fn, tasks, args=args, workers=workers, scheduler=scheduler, on_result=on_result,
                             next_round=next_round))


def _run_on_dask(fn, tasks, *, args, workers, scheduler, on_result, next_round) -> Iterator[Any]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        log.info("starting a dask LocalCluster with %d worker processes", workers)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        log.info("submitting %d tasks to the dask scheduler at %s", len(tasks), scheduler)
        client = Client(scheduler)
    try:
        rounds = 0
        while tasks:
            futures = [client.submit(fn, task, *args, pure=False, key=f"sak-segment-{rounds}-{i}-{id(tasks)}")
                       for i, task in enumerate(tasks)]
            index = {f.key: i for i, f in enumerate(futures)}
            results: list[Any] = [None] * len(futures)
            for fut in as_completed(futures):
                res = fut.result()  # raises the task's exception
                results[index[fut.key]] = res
                if on_result is not None:
                    on_result(res)
            yield from results
            tasks = next_round(results) if next_round is not None else []
            rounds += 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
