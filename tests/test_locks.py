"""The cache's locks hold across processes and hosts (a lease file, engine.lease) and are broken only when
their holder is provably gone: a dead pid on this host at once, another host's lease once its heartbeat
stands still. Other hosts are played by lease files written the way another host's yolobuild writes them."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yolobuild.engine import lease as lease_mod
from yolobuild.engine.cache import Cache
from yolobuild.engine.lease import Lease, LeaseTimeout
from yolobuild.engine.runner import Runner
from yolobuild.ops import OP_KINDS, OpKind

from .test_engine import COUNTER_ENV, TEST_KINDS, make_plan


def _fabricate(path: Path, age: float, **record) -> None:
    """A lease file as another holder leaves it: its record, its heartbeat (mtime) `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {"host": "build-node-17", "pid": 4242, "pid_start": "123", "boot_id": "0b0e0000-dead-4000-8000-000000000000",
            "pid_ns": "pid:[4026531836]", "started": time.time() - age, "token": "f" * 32, "heartbeat_s": 0.2}
    path.write_text(json.dumps({**base, **record}))
    os.utime(path, (time.time() - age, time.time() - age))


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_lease_left_by_a_dead_host_is_broken(tmp_path):
    path = tmp_path / "locks" / "op.lease"
    _fabricate(path, age=3600)
    events = []
    t0 = time.monotonic()
    with Lease(path, stale_after=2.0, on_break=events.append):
        waited = time.monotonic() - t0
        assert json.loads(path.read_text())["pid"] == os.getpid()     # ours now
    assert waited < 2.0, waited          # an hour-old heartbeat: broken once it stood still for 3 beats
    assert len(events) == 1 and "build-node-17" in events[0]["holder"] and "old" in events[0]["why"]
    assert not path.exists() and not list(path.parent.glob("*.broken.*")) and not list(path.parent.glob("*.new"))


def test_another_hosts_live_lease_is_not_broken_whatever_its_clock_says(tmp_path):
    path = tmp_path / "locks" / "op.lease"
    _fabricate(path, age=3600)
    stop = threading.Event()

    def heartbeat():   # the other host's holder: touches its lease every 0.2 s, by its own (slow) clock
        k = 0
        while not stop.wait(0.2):
            k += 1
            os.utime(path, (time.time() - 3600 + k, time.time() - 3600 + k))

    beating = threading.Thread(target=heartbeat)
    beating.start()
    events = []
    try:
        with pytest.raises(LeaseTimeout):
            Lease(path, stale_after=1.5, on_break=events.append).acquire(timeout=4)
        assert not events and json.loads(path.read_text())["host"] == "build-node-17"
    finally:
        stop.set()
        beating.join()
    os.utime(path, (time.time() + 3600, time.time() + 3600))   # its last beat, by a clock an hour ahead this time
    t0 = time.monotonic()        # the holder stops beating (its host died): broken after 1.5 s standing still
    with Lease(path, stale_after=1.5, on_break=events.append):
        assert 1.0 < time.monotonic() - t0 < 4
    assert [e["why"] for e in events] and "stood still" in events[0]["why"]


def _hold(path: str, seconds: float, ready: str) -> None:
    with Lease(Path(path), heartbeat=0.2):
        Path(ready).write_text("held")
        time.sleep(seconds)


def test_a_live_holder_on_this_host_is_never_broken(tmp_path):
    path, ready = tmp_path / "locks" / "op.lease", tmp_path / "ready"
    proc = multiprocessing.get_context("spawn").Process(target=_hold, args=(str(path), 4.0, str(ready)))
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and proc.is_alive()
            time.sleep(0.05)
        with pytest.raises(LeaseTimeout):          # alive, same machine: no timeout breaks it
            Lease(path, stale_after=0.5).acquire(timeout=2)
        with Lease(path):                          # it released: ours
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        proc.join(30)
    assert proc.exitcode == 0


def test_a_dead_pid_on_this_host_is_broken_at_once(tmp_path):
    path = tmp_path / "locks" / "op.lease"
    same = {"host": lease_mod.HOST, "boot_id": lease_mod.BOOT_ID, "pid_ns": lease_mod.PID_NS, "heartbeat_s": 5.0}
    events = []
    for record in ({**same, "pid": _dead_pid()},
                   {**same, "pid": os.getppid(), "pid_start": "1"},     # a live pid, another process than the holder
                   {**same, "pid": 4242, "boot_id": "another-boot"}):   # this host rebooted since
        _fabricate(path, age=0, **record)
        t0 = time.monotonic()
        with Lease(path, on_break=events.append):    # default stale timeout (60 s): none of it waited for
            assert time.monotonic() - t0 < 1.0
    assert ["gone" in events[0]["why"], "another process" in events[1]["why"], "rebooted" in events[2]["why"]] == [True] * 3


def test_a_sigkilled_holder_is_broken_at_once(tmp_path):
    path = tmp_path / "locks" / "op.lease"
    code = (f"import time; from pathlib import Path; from yolobuild.engine.lease import Lease\n"
            f"l = Lease(Path({str(path)!r})); l.acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    events = []
    t0 = time.monotonic()
    with Lease(path, on_break=events.append):
        assert time.monotonic() - t0 < 1.0
    assert len(events) == 1 and f"pid {proc.pid}" in events[0]["holder"]


def _contend(path: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        with Lease(Path(path), stale_after=1.0, heartbeat=0.2):
            with open(log, "a") as f:
                f.write(f"in {os.getpid()}\n")
            time.sleep(0.02)
            with open(log, "a") as f:
                f.write(f"out {os.getpid()}\n")


def test_waiters_racing_to_break_one_dead_lease_never_hold_it_together(tmp_path):
    path, log = tmp_path / "locks" / "op.lease", tmp_path / "log"
    _fabricate(path, age=3600)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_contend, args=(str(path), str(log), 5)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 * 5 * 2
    for i in range(0, len(lines), 2):           # strictly in / out of the same process: one holder at a time
        assert lines[i].startswith("in ") and lines[i + 1] == "out " + lines[i][3:], lines[i:i + 2]
    assert not path.exists()


def _build(cache_root: str, counter_path: str, statuses: str) -> None:
    os.environ[COUNTER_ENV] = counter_path
    for kind in TEST_KINDS:
        OP_KINDS[kind] = OpKind(f"tests.test_engine:op_{kind[2:]}", 1, ("numpy",))
    ex = Runner(Cache(Path(cache_root))).run(make_plan(text="contended", sleep=2.0))
    with open(statuses, "a") as f:
        f.write(" ".join(r.status for r in ex.records) + "\n")


def test_two_processes_contend_one_runs_the_other_waits_and_reuses_it(tmp_path):
    cache = tmp_path / "c"
    counter, statuses = tmp_path / "ran.txt", tmp_path / "statuses"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build, args=(str(cache), str(counter), str(statuses))) for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while not list((cache / "locks").glob("*.lease")):     # the first op's lease, while it runs
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(counter.read_text().split()) == ["first", "second"]             # each op ran once
    runs = [line.split() for line in statuses.read_text().splitlines()]
    assert [sorted(op) for op in zip(*runs)] == [["cached", "ran"], ["cached", "ran"]]   # the other reused it
    assert not list((cache / "locks").glob("*.lease")) and not list((cache / "locks").glob("*.break"))


def test_without_hard_links_the_lease_is_created_exclusively_in_place(tmp_path, monkeypatch):
    import errno

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")   # as on a file system without hard links

    monkeypatch.setattr(lease_mod.os, "link", no_links)
    path = tmp_path / "locks" / "op.lease"
    first = Lease(path, heartbeat=0.2)
    first.acquire()
    assert json.loads(path.read_text())["token"] and not list(path.parent.glob("*.new"))
    with pytest.raises(LeaseTimeout):
        Lease(path).acquire(timeout=0.5)          # held (by a live process of this host): not taken
    first.release()
    with Lease(path):
        assert path.exists()
    assert not path.exists()
