"""A lock that holds across hosts on a shared file system (NFS), and is broken only when its holder is gone.

flock alone does not do there: over NFS a lock held by a host that died can stay held until that
host comes back (NFSv3's lock manager), or for the server's lease time. So the lock is a lease file
`NAME.lease` that appears whole in one step: written beside it, then hard-linked into place
(link() is atomic on NFSv3+ and fails when the name exists). It names its holder: host, pid, the
pid's start time, boot id and pid namespace. Its modification time is the heartbeat: a thread of
the holder touches the file it made (through its open descriptor, never by name, so it can never
touch a successor's lease) every `heartbeat` seconds.

A waiter breaks a lease only when its holder is provably gone:
  - same machine (host, boot id and pid namespace equal): the pid is gone, or is another process now
    (its start time differs): at once;
  - the same host name with another boot id: that host rebooted since: at once;
  - otherwise (another host, another container): the heartbeat stood still for `stale_after` seconds
    as this waiter saw it on its own clock, or is older than that by the wall clock and stood still
    while this waiter watched three heartbeats (two hosts' clocks may differ; a file is opened
    before it is read, which makes NFS fetch its attributes afresh).
Breakers take turns through a short lease of the same kind (`NAME.lease.break`), and a lease is
broken by renaming it aside and checking that the file moved is the very one judged dead, so two
waiters never both win; a holder releasing takes that turn too, so it never removes a successor.
"""
from __future__ import annotations

import errno
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HEARTBEAT = 5.0        # seconds between the holder's touches of its lease
STALE_AFTER = 60.0     # a lease whose heartbeat stood still this long (another host's) is broken
BREAK_STALE = 10.0     # a break turn (held for milliseconds) left standing this long is broken
_NO_HARD_LINKS = {getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK") if hasattr(errno, name)}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


HOST = socket.gethostname() or "host"
BOOT_ID = _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


PID_NS = _pid_namespace()


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): tells a reused pid apart."""
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseTimeout(TimeoutError):
    pass


@dataclass
class _Seen:
    """What a waiter saw of one lease (by inode and token): its heartbeat and, on its own clock, when it last moved."""
    heartbeat_ns: int
    changed_at: float
    first_at: float


@dataclass
class Holder:
    record: dict[str, Any]
    inode: int
    heartbeat_ns: int     # the lease file's modification time

    @property
    def key(self) -> tuple[int, str]:
        return self.inode, str(self.record.get("token", ""))


def read_holder(path: Path) -> Holder | None:
    """The lease at `path` (None when there is none). Opened first, then stat'ed: fresh attributes on NFS."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        record = json.loads(raw)
        record = record if isinstance(record, dict) else {}
    except ValueError:
        record = {}   # not a lease this code wrote: judged by its modification time alone
    return Holder(record, st.st_ino, st.st_mtime_ns)


@dataclass
class Lease:
    """`with Lease(path): ...` holds `path` against every process on every host that shares the folder.

    heartbeat=None: no heartbeat thread (a lease held for milliseconds: the break turn)."""

    path: Path
    heartbeat: float | None = HEARTBEAT
    stale_after: float = STALE_AFTER
    on_break: Callable[[dict[str, Any]], None] | None = None
    poll: float = 0.05
    _fd: int | None = field(default=None, init=False, repr=False)
    _inode: int | None = field(default=None, init=False, repr=False)
    _stop: threading.Event | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    lost: bool = field(default=False, init=False)

    def __post_init__(self):
        self.path = Path(self.path)

    # -- holding -------------------------------------------------------------------------------
    def acquire(self, timeout: float = -1) -> None:
        deadline = None if timeout < 0 else time.monotonic() + timeout
        seen: dict[tuple[int, str], _Seen] = {}
        delay = self.poll
        while True:
            if self._try_create():
                return
            holder = read_holder(self.path)
            if holder is None:
                time.sleep(self.poll / 10)
                continue   # released between our try and our look: try again
            why = self._dead(holder, seen)
            if why:
                self._break(holder, why)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseTimeout(f"{self.path}: held by {describe(holder.record)}")
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, 0.5)

    def _try_create(self) -> bool:
        token = uuid.uuid4().hex
        record = {"host": HOST, "pid": os.getpid(), "pid_start": process_start(os.getpid()), "boot_id": BOOT_ID,
                  "pid_ns": PID_NS, "started": time.time(), "token": token, "heartbeat_s": self.heartbeat}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{token}.new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
            no_links = False
            try:
                os.link(tmp, self.path)
                linked = True
            except FileExistsError:
                linked = False
            except OSError as exc:   # NFS may answer a link that did happen with an error: the link count tells
                linked = os.fstat(fd).st_nlink == 2
                no_links = not linked and exc.errno in _NO_HARD_LINKS
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.unlink(tmp)
        if not linked:
            os.close(fd)
            return self._create_in_place(record) if no_links else False
        return self._hold(fd)

    def _create_in_place(self, record: dict[str, Any]) -> bool:
        """Where the file system has no hard links: create-exclusive on the name itself (atomic on NFSv3+);
        a reader may see it empty for a moment, which judges it by its fresh modification time."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        return self._hold(fd)

    def _hold(self, fd: int) -> bool:
        self._fd, self._inode, self.lost = fd, os.fstat(fd).st_ino, False
        if self.heartbeat:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._beat, name=f"lease-{self.path.name}", daemon=True)
            self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self._fd)   # the inode this holder made, wherever its name is now
                now = os.stat(self.path).st_ino
            except OSError:
                now = None
            if now != self._inode and not self.lost:
                self.lost = True     # broken while held (this process stood still past stale_after)
                import sys

                print(f"warning: {self.path.name}: the lock was taken over while this build held it "
                      "(it stood still longer than the stale timeout); work may be done twice", file=sys.stderr)

    def release(self) -> None:
        if self._fd is None:
            return
        if self._stop:
            self._stop.set()
            self._thread.join()
        turn = self._break_turn()
        try:
            if turn:
                try:
                    turn.acquire(timeout=BREAK_STALE + 5)
                except LeaseTimeout:
                    turn = None
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        finally:
            if turn:
                turn.release()
            os.close(self._fd)
            self._fd = self._inode = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    # -- judging and breaking ------------------------------------------------------------------
    def _dead(self, holder: Holder, seen: dict[tuple[int, str], _Seen]) -> str | None:
        """Why the holder is provably gone, or None while it may be alive."""
        r = holder.record
        if r.get("host") == HOST and BOOT_ID and r.get("boot_id") == BOOT_ID and r.get("pid_ns") == PID_NS:
            pid = r.get("pid")
            if not isinstance(pid, int) or not pid_alive(pid):
                return f"its process {pid} on this host is gone"
            if r.get("pid_start") and process_start(pid) not in (None, r["pid_start"]):
                return f"its process {pid} on this host is gone (the pid is another process's now)"
            return None
        if r.get("host") == HOST and BOOT_ID and r.get("boot_id") and r.get("boot_id") != BOOT_ID:
            return "this host rebooted since it was taken"
        now = time.monotonic()
        s = seen.get(holder.key)
        if s is None:
            s = seen[holder.key] = _Seen(holder.heartbeat_ns, now, now)
        elif s.heartbeat_ns != holder.heartbeat_ns:
            s.heartbeat_ns, s.changed_at = holder.heartbeat_ns, now
        beat = r.get("heartbeat_s") if isinstance(r.get("heartbeat_s"), (int, float)) else None
        stale = max(self.stale_after, 3 * beat) if beat else self.stale_after
        still = now - s.changed_at
        age = time.time() - holder.heartbeat_ns / 1e9
        if still >= stale:
            return f"its heartbeat stood still for {still:.0f} s"
        if age > stale and still >= 3 * (beat or self.poll):
            return f"its heartbeat is {age:.0f} s old"
        return None

    def _break_turn(self) -> Lease | None:
        if self.heartbeat is None:
            return None   # this is a break turn itself: held for milliseconds, broken without a turn
        return Lease(self.path.with_name(self.path.name + ".break"), heartbeat=None, stale_after=BREAK_STALE)

    def _break(self, judged: Holder, why: str) -> None:
        turn = self._break_turn()
        if turn:
            turn.acquire()
        try:
            now = read_holder(self.path)
            if now is None or now.key != judged.key:
                return   # released or replaced meanwhile: judge afresh
            aside = self.path.with_name(f"{self.path.name}.broken.{uuid.uuid4().hex}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            if os.stat(aside).st_ino != judged.inode:   # not the file judged dead: put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            else:
                event = {"lock": self.path.name, "holder": describe(judged.record), "why": why,
                         "action": "broken: its holder is gone"}
                if self.on_break:
                    self.on_break(event)
            os.unlink(aside)
        finally:
            if turn:
                turn.release()


class HostQueuedLease:
    """A lease (holds across hosts, engine.lease) taken behind a flock on a file of this host's own temp
    folder: this host's waiters queue in the kernel (woken at once, released even by a killed process)
    and only one of them at a time polls the shared lease file. The flock is never on the shared
    folder, where a host that died could leave it held."""

    def __init__(self, local: Path, lease: Lease):
        self.local, self.lease = local, lease

    def __enter__(self):
        from filelock import FileLock

        self.local.parent.mkdir(parents=True, exist_ok=True)
        self._flock = FileLock(str(self.local))
        self._flock.acquire()
        try:
            self.lease.acquire()
        except BaseException:
            self._flock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.lease.release()
        finally:
            self._flock.release()


def describe(record: dict[str, Any]) -> str:
    return f"host {record.get('host', '?')} pid {record.get('pid', '?')}"
