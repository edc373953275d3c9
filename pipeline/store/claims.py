"""Block claims: expiring leases that let concurrent writers of one store split the work.

Why here (the store layer, not extract): a claim is a file of the store (``claims/<block>.json``)
that ``gc`` cleans like the store's other leftovers; extraction decides what a block is.

A claim file holds the claimant's host, pid, a random token, its run's token and an expiry time
(wall clock, seconds since the epoch; a lease of minutes tolerates clock skew between hosts of
a shared file system). Protocol, local file systems:

* **claim**: the record is written to a temp file and hard-linked to ``claims/<block>.json``;
  ``link`` fails when the name exists, so exactly one writer creates it, and a reader never sees
  a half-written claim (what ``open(O_CREAT|O_EXCL)`` followed by a write would show). The token
  is read back to confirm.
* **held**: a claim of another run that is neither expired nor of a dead writer (same host, pid
  gone) is left alone: the caller comes back to its block later.
* **take-over** of a stale claim (expired, dead writer, unreadable for a whole lease, or one of
  the caller's own run: its tasks are disjoint, so a claim of the same run is a retried task's):
  the file is renamed to a private name (only one renamer wins), the moved record's token is
  compared with the stale one read before (if another writer re-claimed the block in between,
  its fresh claim is put back with ``link`` and the block stays theirs), then claimed afresh.
* **renew** (a heartbeat, :class:`LeaseKeeper`, every third of the lease while the block runs):
  the record is rewritten with a new expiry if it still holds the caller's token; **release**
  (after the block's commit) removes it the same way as a take-over, so it never deletes
  someone else's claim.

A writer that stalls longer than its lease can lose its block to another writer; both then
commit the block and read-time dedup keeps one copy (the backstop, never a loss).
fsspec stores (s3://, gs://) have no atomic create-if-absent that every backend honours:
claiming is off there (logged once per store), and concurrent writers fall back to skipping
what is committed when each block starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..storage import LocalLocation, Location
from .writer import this_host

log = logging.getLogger(__name__)

CLAIMS_DIR = "claims"
#: Lease of a claim: a writer killed mid-block holds it this long at most (its pid's death, seen
#: from the same host, frees it at once). Renewed every third of it while the block runs.
DEFAULT_LEASE_SECONDS = 600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_WARNED: set[str] = set()


@dataclass(frozen=True)
class ClaimRecord:
    """What a claim file holds."""

    block: str
    host: str
    pid: int
    token: str  # this claim's random token
    run: str  # the claiming run's token (shared by its dask workers)
    expires: float  # epoch seconds

    @property
    def holder(self) -> str:
        return f"{self.host}:{self.pid}"


@dataclass(frozen=True)
class ClaimResult:
    won: bool
    record: ClaimRecord  # ours when won, else the live holder's


def pid_alive(host: str, pid: int) -> bool | None:
    """True/False for a process of this host; None (unknown) for another host's."""
    if host != this_host():
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlockClaims:
    """The claims of one store's blocks, as seen by one run.

    ``clock`` (epoch seconds) and ``alive(host, pid)`` are injectable for tests.
    """

    def __init__(self, store_path: Location, *, run: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Callable[[], float] = time.time, alive: Callable[[str, int], bool | None] = pid_alive) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.folder = store_path / CLAIMS_DIR
        self.run, self.lease_seconds = run, float(lease_seconds)
        self.clock, self.alive = clock, alive
        self.local = isinstance(self.folder, LocalLocation)
        self.enabled = self.local and not self.folder.read_only
        self._dir = Path(str(self.folder))  # local only: os.link and os.rename need a real path

    # -- the protocol ---------------------------------------------------------------
    def claim(self, block: str) -> ClaimResult:
        """Claim ``block``: won, or the live holder's record. Takes over a stale claim."""
        _check_name(block)
        mine = self._record(block)
        if not self.enabled:
            store = str(self.folder.parent)
            if store not in _WARNED:
                _WARNED.add(store)
                log.warning("store %s is not on a local file system (or is read-only): block claiming is off there, "
                            "so concurrent writers may extract the same samples twice (read-time dedup keeps one copy)", store)
            return ClaimResult(True, mine)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(8):  # each lap either wins, meets a live holder, or lost a race that changed the file
            if self._create(mine):
                got = self.read(block)  # read back: the file we linked holds our token
                if got is not None and got.token == mine.token:
                    return ClaimResult(True, mine)
                continue
            current = self.read(block)
            if current is None:
                if self._path(block).exists() and not self._unreadable_stale(block):
                    return ClaimResult(False, ClaimRecord(block=block, host="?", pid=0, token="", run="", expires=0.0))
                if self._path(block).exists():
                    self._remove_if(block, None)
                continue
            if not self.stale(current):
                return ClaimResult(False, current)
            why = "expired" if self.clock() >= current.expires else "its writer is gone"
            if self._remove_if(block, current.token):
                if current.run != self.run:
                    log.info("taking over block %s of %s from %s (%s)", block, self.folder.parent, current.holder, why)
        return ClaimResult(False, self.read(block) or mine)

    def renew(self, record: ClaimRecord) -> ClaimRecord | None:
        """The record with a new expiry, or None when the claim is no longer ours (taken over).

        Check and rewrite are two steps: a take-over landing between them (possible only once our
        lease has expired) is overwritten, and its writer sees the loss at its own renewal.
        """
        if not self.enabled:
            return record
        current = self.read(record.block)
        if current is None or current.token != record.token:
            return None
        fresh = ClaimRecord(**{**asdict(record), "expires": self.clock() + self.lease_seconds})
        tmp = self._tmp(fresh)
        tmp.write_text(json.dumps(asdict(fresh)))
        os.replace(tmp, self._path(record.block))
        got = self.read(record.block)
        return fresh if got is not None and got.token == record.token else None

    def release(self, record: ClaimRecord) -> bool:
        """Remove our claim (after the block's commit); False when it was not ours any more."""
        if not self.enabled:
            return True
        return self._remove_if(record.block, record.token)

    def read(self, block: str) -> ClaimRecord | None:
        """The claim of ``block``, or None (no claim, or an unreadable file)."""
        return _read_file(self._path(block))

    def stale(self, record: ClaimRecord) -> bool:
        """Ours (same run), expired, or its writer is known dead: free to take over."""
        return record.run == self.run or self.clock() >= record.expires or self.alive(record.host, record.pid) is False

    def stale_files(self, grace_seconds: float) -> list[Location]:
        """Claim files nobody holds any more, and temp files older than ``grace_seconds`` (for ``gc``)."""
        out: list[Location] = []
        if not self.local:  # nothing is ever claimed there
            return out
        for name in self.folder.list_names():
            path = self.folder / name
            if name.endswith(".json") and not name.startswith(".") and _NAME.fullmatch(name[:-5]):
                record = self.read(name[:-5])
                if (record is None and self._unreadable_stale(name[:-5])) or (record is not None and self.stale(record)):
                    out.append(path)
            elif name.startswith("."):
                with contextlib.suppress(OSError):
                    if self.clock() - path.stat().st_mtime >= grace_seconds:
                        out.append(path)
        return out

    # -- helpers --------------------------------------------------------------------
    def _record(self, block: str) -> ClaimRecord:
        return ClaimRecord(block=block, host=this_host(), pid=os.getpid(), token=secrets.token_hex(8), run=self.run,
                           expires=self.clock() + self.lease_seconds)

    def _path(self, block: str) -> Path:
        return self._dir / f"{block}.json"

    def _tmp(self, record: ClaimRecord) -> Path:
        return self._dir / f".{record.block}.{record.token}.{secrets.token_hex(4)}.tmp"

    def _create(self, record: ClaimRecord) -> bool:
        tmp = self._tmp(record)
        tmp.write_text(json.dumps(asdict(record)))
        try:
            os.link(tmp, self._path(record.block))
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if(self, block: str, token: str | None) -> bool:
        """Remove the claim file if it (still) holds ``token`` (None: if it is still unreadable)."""
        grave = self._dir / f".{block}.{secrets.token_hex(8)}.grave"
        try:
            os.rename(self._path(block), grave)
        except FileNotFoundError:
            return False
        moved = _read_file(grave)
        if (moved.token if moved is not None else None) == token:
            grave.unlink(missing_ok=True)
            return True
        with contextlib.suppress(FileExistsError):  # we moved someone's fresh claim: put it back
            os.link(grave, self._path(block))
        grave.unlink(missing_ok=True)
        return False

    def _unreadable_stale(self, block: str) -> bool:
        try:
            return self.clock() - self._path(block).stat().st_mtime >= self.lease_seconds
        except OSError:
            return True


def _read_file(path: Path) -> ClaimRecord | None:
    """A claim file's record, its fields type-checked; None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
        return ClaimRecord(block=str(data["block"]), host=str(data["host"]), pid=int(data["pid"]),
                           token=str(data["token"]), run=str(data["run"]), expires=float(data["expires"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _check_name(block: str) -> None:
    if not _NAME.fullmatch(block):
        raise ValueError(f"block name {block!r} is not a plain name (letters, digits, '_' and '-')")


class LeaseKeeper:
    """A heartbeat thread renewing claims every third of their lease while a block runs.

    ``lost`` lists the blocks whose claim another writer took over meanwhile (the block is still
    committed: dedup keeps one copy).
    """

    def __init__(self, held: Iterable[tuple[BlockClaims, ClaimRecord]], interval: float | None = None) -> None:
        self.held = [(c, r) for c, r in held if c.enabled]
        leases = [c.lease_seconds for c, _ in self.held]
        self.interval = interval if interval is not None else (min(leases) / 3 if leases else 1.0)
        self.lost: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew_all(self) -> None:
        kept = []
        for claims, record in self.held:
            try:
                fresh = claims.renew(record)
            except OSError as exc:
                log.warning("could not renew the claim of block %s in %s: %s", record.block, claims.folder, exc)
                fresh = record
            if fresh is None:
                log.warning("block %s of %s was taken over by another writer (this one stalled past its lease); both will "
                            "commit it and read-time dedup keeps one copy", record.block, claims.folder.parent)
                self.lost.append(record.block)
            else:
                kept.append((claims, fresh))
        self.held = kept

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.renew_all()

    def __enter__(self) -> LeaseKeeper:
        if self.held:
            self._thread = threading.Thread(target=self._loop, name="sak-lease", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def release_all(self) -> None:
        for claims, record in self.held:
            try:
                claims.release(record)
            except OSError as exc:  # a leftover claim expires; gc removes it
                log.warning("could not release the claim of block %s in %s: %s", record.block, claims.folder, exc)
        self.held = []
