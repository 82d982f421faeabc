"""A content-addressed cache of op results, safe to share between concurrent builds.

Layout under the cache root:
  objects/ab/<sha256>        an output file, or a folder (its hash covers names + contents)
  entries/ab/<fingerprint>.json  which objects an op run produced, its key, figures, timing
  tmp/                       where running ops write; never read as a result
  locks/<fingerprint>.lease  one runner per fingerprint at a time, on every host sharing the folder (engine.lease)
  hashes/                    stat-keyed memo of external file hashes (size, mtime, inode)
  quarantine/                objects that failed their sha256 check, moved aside (events.jsonl says when)

An entry is written (temp + rename) only after all its objects are in place, so a crash or
Ctrl-C at any point leaves either a complete entry or none. Failures are never cached.
An object is named by its sha256, and that name is checked again whenever the engine hands
the object to an op or copies it into a build folder: a disk, a sync tool or a hand can change
bytes after they were stored.

With `cache.remote=URL` (engine.remote) a local miss is looked up there before the op runs, and
an entry made here is pushed there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage import default_root, write_atomic  # noqa: F401 (the engine's callers import them from here)
from .lease import HostQueuedLease, Lease, pid_alive  # noqa: F401 (pid_alive: the engine's callers import it from here)

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: Path, file_hash=sha256_file) -> str:
    """Hash of a folder: sorted relative names with their contents' hashes."""
    h = hashlib.sha256(b"tree\n")
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(root).as_posix()}\0{file_hash(p)}\n".encode())
    return h.hexdigest()


_HOST = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname()) or "host"


@dataclass(frozen=True)
class Entry:
    fingerprint: str
    outputs: dict[str, dict[str, Any]]   # name -> {"sha256", "kind": file|dir, "size"}
    record: dict[str, Any]               # kind, key, results, seconds, created
    origin: str = "local"                # "remote": pulled from cache.remote by this build


class Cache:
    def __init__(self, root: Path, remote=None):
        self.root = Path(root).expanduser().absolute()   # symlinks to objects must not be relative
        self.remote = remote                             # engine.remote.RemoteCache, or None
        self.events: list[dict[str, Any]] = []           # broken locks, remote trouble: manifest.cache_events
        self._events_lock = threading.Lock()

    @classmethod
    def configured(cls, settings) -> "Cache":
        """The cache a config's `cache:` section names (dir, and remote with its options)."""
        from .remote import remote_for

        cache = cls(default_root(settings.get("dir")))
        cache.remote = remote_for(settings, cache.note)
        return cache

    def note(self, event: dict[str, Any]) -> None:
        with self._events_lock:
            self.events.append(event)

    # -- paths ---------------------------------------------------------------------------------
    def entry_path(self, fp: str) -> Path:
        return self.root / "entries" / fp[:2] / f"{fp}.json"

    _entry_path = entry_path

    def object_path(self, sha: str) -> Path:
        return self.root / "objects" / sha[:2] / sha

    def ensure_writable(self) -> None:
        for sub in ("objects", "entries", "tmp", "locks", "hashes", "quarantine"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- lookups -------------------------------------------------------------------------------
    def lookup(self, fp: str) -> Entry | None:
        path = self._entry_path(fp)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        outputs = data.get("outputs", {})
        if not all(self.object_path(o["sha256"]).exists() for o in outputs.values()):
            return None  # an object was removed by hand: treat as a miss, the op reruns
        try:
            os.utime(path)   # last use, for `cache gc`'s size budget (a read-only shared cache skips it)
        except OSError:
            pass
        return Entry(fp, outputs, data)

    def entry_record(self, fp: str) -> dict[str, Any] | None:
        """The stored entry, whether or not its objects are all present (for verify and gc)."""
        try:
            return json.loads(self._entry_path(fp).read_text())
        except (OSError, ValueError):
            return None

    def entry_fingerprints(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "entries").glob("*/*.json"))

    # -- integrity -----------------------------------------------------------------------------
    def object_intact(self, sha: str) -> bool:
        """Does the object stored under `sha` still hash to it? (read in full: no stat shortcut)."""
        path = self.object_path(sha)
        try:
            if path.is_dir():
                return sha256_tree(path) == sha
            return path.is_file() and sha256_file(path) == sha
        except OSError:
            return False

    def quarantine(self, sha: str, why: str) -> Path | None:
        """Move a bad object aside (kept for a look, never served again) and log the event."""
        src = self.object_path(sha)
        dest = self.root / "quarantine" / f"{sha}-{time.time_ns()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            dest = None
        with open(self.root / "quarantine" / "events.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "object": sha, "why": why,
                                "moved_to": dest.name if dest else None}) + "\n")
        return dest

    def drop_entry(self, fp: str) -> None:
        """Forget an op result (its object went bad): the next lookup misses and the op reruns."""
        self._entry_path(fp).unlink(missing_ok=True)

    def lock(self, name: str) -> HostQueuedLease:
        """One holder of `name` (an op's fingerprint, a build folder) among every process on every host
        sharing this cache folder; a lock whose holder is provably gone is broken (manifest.cache_events)."""
        def broken(event):
            print(f"warning: cache lock {name[:16]}: {event['holder']} held it and is gone ({event['why']}): broken")
            self.note(event)

        where = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        local = Path(tempfile.gettempdir()) / f"yolobuild-{os.getuid()}-locks" / where / f"{name}.lock"
        return HostQueuedLease(local, Lease(self.root / "locks" / f"{name}.lease", on_break=broken))

    def new_tmp(self, fp: str) -> Path:
        """A folder for one op run, named by host and pid so a later build can tell an abandoned one."""
        return Path(tempfile.mkdtemp(prefix=f"{fp[:16]}.{_HOST}.{os.getpid()}.", dir=self.root / "tmp"))

    def clean_abandoned_tmp(self) -> list[Path]:
        """Remove op folders left by builds on this host that were killed (their process is gone)."""
        removed = []
        for path in (self.root / "tmp").glob(f"*.{_HOST}.*.*"):
            pid = path.name.split(".")[-2]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    # -- stores --------------------------------------------------------------------------------
    def _put_object(self, src: Path) -> dict[str, Any]:
        if src.is_dir():
            sha, kind = sha256_tree(src), "dir"
            size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        else:
            sha, kind, size = sha256_file(src), "file", src.stat().st_size
        dest = self.object_path(sha)
        if dest.exists() and not self.object_intact(sha):   # never keep bad bytes under a good name
            self.quarantine(sha, "object already stored under this name failed its sha256 check")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, dest) if kind == "file" else os.rename(src, dest)
            except OSError:
                if not dest.exists():  # a concurrent build may have put the same object first
                    raise
        return {"sha256": sha, "kind": kind, "size": size}

    def store(self, fp: str, outputs: dict[str, Path], record: dict[str, Any]) -> Entry:
        stored = {name: self._put_object(path) for name, path in outputs.items()}
        body = {**record, "fingerprint": fp, "outputs": stored, "created": time.time()}
        write_atomic(self._entry_path(fp), json.dumps(body, indent=1, sort_keys=True))
        return Entry(fp, stored, body)

    # -- the remote (cache.remote) ------------------------------------------------------------
    def pull(self, fp: str) -> Entry | None:
        """On a local miss: the remote's entry, verified and stored here (None: a miss there too, or no remote)."""
        return self.remote.pull(self, fp) if self.remote else None

    def push(self, entry: Entry) -> None:
        if self.remote:
            self.remote.push(self, entry)

    def put_verified(self, path: Path, sha: str, kind: str) -> None:
        """An object pulled and already checked against its sha256, moved into objects/."""
        dest = self.object_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and not self.object_intact(sha):
            self.quarantine(sha, "object already stored under this name failed its sha256 check")
        try:
            os.replace(path, dest) if kind == "file" else os.rename(path, dest)
        except OSError:
            if not dest.exists():
                raise

    def adopt(self, fp: str, raw: bytes) -> Entry | None:
        """A pulled entry file (its objects in place) written here as it is."""
        write_atomic(self._entry_path(fp), raw)
        entry = self.lookup(fp)
        return Entry(entry.fingerprint, entry.outputs, entry.record, "remote") if entry else None

    # -- external inputs -----------------------------------------------------------------------
    def hash_file(self, path: Path) -> str:
        """sha256 of a user file, memoised by (path, size, mtime, inode) like git's index."""
        st = path.stat()
        stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        memo = self.root / "hashes" / hashlib.sha256(stamp.encode()).hexdigest()
        try:
            return memo.read_text().strip()
        except FileNotFoundError:
            sha = sha256_file(path)
            try:
                write_atomic(memo, sha)
            except OSError:
                pass
            return sha

    def clean_tmp(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
