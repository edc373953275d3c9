"""Block claims (pipeline/store/claims.py) and blocks of work (pipeline/extract/blocks.py): claim, renew,
expire, take over, release, gc of stale claims, and the in-process run's waiting for a held block."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sak.pipeline.data.datasets import open_dataset
from sak.pipeline.extract.blocks import BlockRounds, BlockWaiter, block_names, claim_blocks, pack_blocks, task_groups
from sak.pipeline.extract.job import ExtractConfig, extract, spec_for, student_size
from sak.pipeline.storage import LocalLocation, as_location
from sak.pipeline.store.claims import BlockClaims, ClaimRecord, LeaseKeeper, pid_alive
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import this_host
from sak.pipeline.teachers import create_teacher


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _claims(store: Path, run: str, clock: Clock, lease: float = 10.0, alive=lambda host, pid: True) -> BlockClaims:
    return BlockClaims(LocalLocation(store), run=run, lease_seconds=lease, clock=clock, alive=alive)


def test_claim_is_exclusive_between_runs_and_released_after_use(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _claims(tmp_path, "run-a", clock), _claims(tmp_path, "run-b", clock)
    won = a.claim("b000000-x")
    assert won.won and won.record.run == "run-a" and won.record.expires == 1010.0
    assert json.loads((tmp_path / "claims" / "b000000-x.json").read_text())["token"] == won.record.token
    lost = b.claim("b000000-x")
    assert not lost.won and lost.record == won.record and lost.record.holder == f"{this_host()}:{os.getpid()}"
    assert b.claim("b000001-y").won  # another block is free
    assert a.release(won.record)
    assert not (tmp_path / "claims" / "b000000-x.json").exists()
    assert b.claim("b000000-x").won  # free again
    assert sorted(p.name for p in (tmp_path / "claims").iterdir()) == ["b000000-x.json", "b000001-y.json"]  # no temp left


def test_same_run_takes_its_own_claim_over(tmp_path: Path) -> None:
    """A run's dask tasks are disjoint: a claim of the same run (a retried task's) never blocks it."""
    clock = Clock()
    first = _claims(tmp_path, "run-a", clock).claim("blk")
    again = _claims(tmp_path, "run-a", clock).claim("blk")
    assert again.won and again.record.token != first.record.token
    assert json.loads((tmp_path / "claims" / "blk.json").read_text())["token"] == again.record.token


def test_expired_claim_is_taken_over_only_after_its_lease(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _claims(tmp_path, "run-a", clock, lease=10.0), _claims(tmp_path, "run-b", clock, lease=10.0)
    mine = a.claim("blk").record
    clock.now = 1009.9
    assert not b.claim("blk").won
    clock.now = 1010.0
    taken = b.claim("blk")
    assert taken.won and taken.record.run == "run-b"
    assert a.renew(mine) is None  # the stalled writer learns it lost the block
    assert not a.release(mine)  # and never deletes the new holder's claim
    assert b.read("blk") == taken.record


def test_renew_extends_the_lease_so_it_is_not_taken_over(tmp_path: Path) -> None:
    clock = Clock()
    a, b = _claims(tmp_path, "run-a", clock), _claims(tmp_path, "run-b", clock)
    mine = a.claim("blk").record
    clock.now = 1008.0
    fresh = a.renew(mine)
    assert fresh is not None and fresh.expires == 1018.0 and fresh.token == mine.token
    clock.now = 1015.0  # past the first expiry, inside the renewed one
    assert not b.claim("blk").won


def test_dead_writer_claim_is_taken_over_at_once(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()  # a pid of this host that no longer runs
    assert pid_alive(this_host(), proc.pid) is False and pid_alive(this_host(), os.getpid()) is True
    assert pid_alive("another-host", proc.pid) is None  # unknown: only the lease decides
    clock = Clock()
    folder = tmp_path / "claims"
    folder.mkdir()
    dead = ClaimRecord(block="blk", host=this_host(), pid=proc.pid, token="t0", run="run-dead", expires=clock.now + 600)
    (folder / "blk.json").write_text(json.dumps(dead.__dict__))
    remote = ClaimRecord(block="far", host="another-host", pid=proc.pid, token="t1", run="run-far", expires=clock.now + 600)
    (folder / "far.json").write_text(json.dumps(remote.__dict__))
    b = BlockClaims(LocalLocation(tmp_path), run="run-b", clock=clock)  # the real pid check
    assert b.claim("blk").won
    assert not b.claim("far").won  # another host's pid cannot be checked: wait for its lease


def test_take_over_never_removes_a_claim_it_did_not_read(tmp_path: Path) -> None:
    """The race: A read a stale claim, B took it over meanwhile; A's removal must put B's claim back."""
    clock = Clock()
    b = _claims(tmp_path, "run-b", clock)
    fresh = b.claim("blk").record
    a = _claims(tmp_path, "run-a", clock)
    assert not a._remove_if("blk", "the-stale-token-a-read")
    assert a.read("blk") == fresh
    assert [p.name for p in (tmp_path / "claims").iterdir()] == ["blk.json"]


def test_unreadable_claim_blocks_for_one_lease_then_is_taken_over(tmp_path: Path) -> None:
    clock = Clock(now=time.time())
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "blk.json").write_text("{not json")
    b = _claims(tmp_path, "run-b", clock, lease=10.0)
    held = b.claim("blk")
    assert not held.won and held.record.holder == "?:0"
    clock.now += 11.0
    assert b.claim("blk").won


def test_lease_keeper_renews_while_running_and_reports_a_lost_claim(tmp_path: Path) -> None:
    a = BlockClaims(LocalLocation(tmp_path), run="run-a", lease_seconds=30.0)
    one = a.claim("one").record
    with LeaseKeeper([(a, one)], interval=0.02):  # the heartbeat thread
        deadline = time.time() + 5
        while time.time() < deadline and a.read("one").expires == one.expires:
            time.sleep(0.01)
    assert a.read("one").expires > one.expires
    two = a.claim("two").record
    keeper = LeaseKeeper([(a, a.read("one")), (a, two)])
    (tmp_path / "claims" / "two.json").unlink()  # block "two" was taken over (as after an expiry)
    taker = _claims(tmp_path, "run-b", Clock(time.time())).claim("two").record
    keeper.renew_all()
    assert keeper.lost == ["two"]
    keeper.release_all()
    assert not (tmp_path / "claims" / "one.json").exists()
    assert a.read("two") == taker  # the new holder's claim is untouched


def test_stale_claims_and_temp_files_are_gc_garbage(tmp_path: Path) -> None:
    clock = Clock(now=time.time())
    a = _claims(tmp_path, "run-a", clock, lease=10.0)
    a.claim("live")
    b = _claims(tmp_path, "run-b", Clock(clock.now - 20), lease=10.0)  # claimed 20 s ago with a 10 s lease
    b.claim("old")
    (tmp_path / "claims" / ".old.abc.tmp").write_text("x")
    os.utime(tmp_path / "claims" / ".old.abc.tmp", (clock.now - 7200, clock.now - 7200))
    (tmp_path / "claims" / ".new.abc.tmp").write_text("x")
    viewer = _claims(tmp_path, "gc", clock, lease=10.0)
    assert sorted(p.name for p in viewer.stale_files(grace_seconds=3600)) == [".old.abc.tmp", "old.json"]


def test_gc_removes_stale_claims_of_a_store(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path / "cache", st.make_spec())
    live = BlockClaims(store.path, run="run-a").claim("live").record
    BlockClaims(store.path, run="run-b", lease_seconds=5, clock=lambda: time.time() - 10).claim("expired")
    assert sorted(p.name for p in store.gc(dry_run=True)) == ["expired.json"]
    store.gc(dry_run=False)
    assert sorted(p.name for p in (store.path / "claims").iterdir()) == ["live.json"]
    assert BlockClaims(store.path, run="run-a").read("live") == live


def test_fsspec_store_claims_nothing_and_warns(caplog) -> None:
    claims = BlockClaims(as_location("memory://claims-test/store"), run="run-a")
    assert not claims.enabled and claims.stale_files(0) == []
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.store.claims"):
        assert claims.claim("blk").won and claims.claim("blk").won  # no claim file: every writer "wins"
    assert [r.message for r in caplog.records if "block claiming is off" in r.message] != []
    assert claims.release(claims.claim("blk").record) and not claims.folder.exists()


@dataclass(frozen=True)
class _S:
    key: str
    block: str
    teachers: tuple[int, ...] = (0,)


def test_blocks_are_the_same_for_every_writer_and_packed_whole() -> None:
    keys = [(f"sha{i}", 0) for i in range(7)]
    names = block_names(keys, 3)
    assert names[0] == names[2] != names[3] and names[6] != names[5] and len(set(names)) == 3
    assert names[:3] == block_names(keys[:5], 3)[:3]  # a shorter list (--limit) shares its full blocks
    assert block_names([(f"other{i}", 0) for i in range(3)], 3)[0] != names[0]  # other keys: another name
    assert [n[:7] for n in dict.fromkeys(names)] == ["b000000", "b000001", "b000002"]
    todo = [_S(k, n) for (k, _), n in zip(keys, names, strict=True) if k not in ("sha0", "sha1", "sha4")]
    groups = pack_blocks(todo, 3)  # blocks of 1, 2 and 1 samples still to do: never split, packed up to 3
    assert [[s.key for s in g] for g in groups] == [["sha2", "sha3", "sha5"], ["sha6"]]
    assert [[s.key for s in g] for g in task_groups(todo, 3, claims=False)] == [["sha2", "sha3", "sha5"], ["sha6"]]
    assert [len(g) for g in task_groups(todo, 2, claims=False)] == [2, 2]


def test_claims_are_per_store(tmp_path: Path) -> None:
    """A block claimed for teacher A by another run is still free for teacher B."""
    clock = Clock()
    a_other = _claims(tmp_path / "A", "run-x", clock)
    a_other.claim("blk")
    mine = [_claims(tmp_path / "A", "run-me", clock), _claims(tmp_path / "B", "run-me", clock)]
    samples = [_S("k1", "blk", (0, 1)), _S("k2", "blk", (0, 1)), _S("k3", "free", (0,))]
    run, deferred, held, holders = claim_blocks(samples, mine)
    assert [(s.key, s.teachers) for s in run] == [("k1", (1,)), ("k2", (1,)), ("k3", (0,))]
    assert [(s.key, s.teachers) for s in deferred] == [("k1", (0,)), ("k2", (0,))]
    assert sorted((c.folder.parent.name, r.block) for c, r in held) == [("A", "free"), ("B", "blk")]
    assert holders == {f"{this_host()}:{os.getpid()}"}


def test_waiter_backs_off_while_nothing_moves_and_resets_after_progress(caplog) -> None:
    slept: list[float] = []
    waiter = BlockWaiter(lease_seconds=4.0, sleep=slept.append)
    with caplog.at_level(logging.INFO, logger="sak.pipeline.extract.blocks"):
        for _ in range(4):
            waiter.wait(False, 2, {"h:1", "h:2"})
        waiter.wait(True, 1, {"h:1"})
        waiter.wait(False, 1, {"h:1"})
    assert slept == [0.2, 0.4, 0.8, 1.0, 0.2]  # doubling up to a quarter of the lease; none after progress
    assert "waiting for 2 block(s) claimed by h:1, h:2" in caplog.records[0].message


def test_rounds_hand_back_deferred_samples_as_new_tasks() -> None:
    @dataclass
    class _R:
        samples: int
        deferred: list
        holders: set

    slept: list[float] = []
    rounds = BlockRounds(600, lambda todo, first: [(first, [s.key for s in todo])], first=5,
                         waiter=BlockWaiter(600, sleep=slept.append))
    assert rounds([_R(3, [], set())]) == []
    got = rounds([_R(0, [_S("k2", "b2")], {"h:9"}), _R(0, [_S("k1", "b1")], set())])
    assert got == [(5, ["k2", "k1"])] and slept == [0.2] and rounds.issued == 6


def test_extract_waits_for_a_block_another_run_holds_then_finishes_it(demo_cache, caplog) -> None:
    """In one process: another run's live claim on the first block; the run does the rest, waits, then does it."""
    cache, _ = demo_cache
    cfg = ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=4, segment_size=4,
                        layers=(1, 3), limit=8)
    store = FeatureStore.create(cache, _spec_of(cfg))
    first = block_names(_keys(cache, 8), 4)[0]
    other = BlockClaims(store.path, run="another-run", lease_seconds=60)
    held = other.claim(first).record
    timer = threading.Timer(1.0, other.release, args=(held,))
    timer.start()
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="sak.pipeline.extract.blocks"):
        report = extract(cfg)
    timer.join()
    assert time.time() - t0 >= 0.9
    assert report.teachers[0].done == 8 and store.commits().num_rows == 8
    assert any(f"waiting for 1 block(s) claimed by {held.holder}" in r.message for r in caplog.records)
    segs = sorted(store.committed_segments())
    first_rows = store.read_part(segs[-1]).column("image_sha256").to_pylist()  # the held block ran last
    assert [(k, 0) for k in first_rows] == _keys(cache, 4)


def test_a_block_held_for_one_teacher_runs_at_once_for_the_other(demo_cache) -> None:
    """Claims are per store: another run holds block 0 of test:tiny's store only."""
    cache, _ = demo_cache
    cfg = ExtractConfig(cache=str(cache), teachers=("test:tiny", "test:tiny2"), random_init=True, batch_size=4,
                        segment_size=4, layers=(1, 3), limit=8)
    tiny, tiny2 = (FeatureStore.create(cache, _spec_of(cfg, name)) for name in cfg.teachers)
    other = BlockClaims(tiny.path, run="another-run", lease_seconds=60)
    held = other.claim(block_names(_keys(cache, 8), 4)[0]).record
    timer = threading.Timer(1.0, other.release, args=(held,))
    timer.start()
    report = extract(cfg)
    timer.join()
    assert [t.done for t in report.teachers] == [8, 8]
    first_block = _keys(cache, 4)

    def rows(store: FeatureStore, seg: str) -> list[tuple[str, int]]:
        return [(k, 0) for k in store.read_part(seg).column("image_sha256").to_pylist()]

    assert rows(tiny2, sorted(tiny2.committed_segments())[0]) == first_block  # free there: ran first
    assert rows(tiny, sorted(tiny.committed_segments())[-1]) == first_block  # held there: ran last


def _keys(cache: Path, n: int) -> list[tuple[str, int]]:
    return [(h, 0) for h in open_dataset(cache, "nyud").table.column("sha256").to_pylist()[:n]]


def _spec_of(cfg: ExtractConfig, teacher: str = "test:tiny"):
    size = student_size([open_dataset(cfg.cache, "nyud")])
    return spec_for(create_teacher(teacher, random_init=True, img_size=size), replace(cfg, img_size=size))
