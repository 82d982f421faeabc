"""Progress of one op's per-image work (`done` of `total` "eval images"): how it crosses processes.

An op reports `ctx.progress(done, total, what)`. In yolobuild's own interpreter that is a call into
the engine; an op in another process (engine.child's helper, a toolchain worker in its own venv, a
process that worker starts) writes the latest figures to a small file named by YOLOBUILD_PROGRESS_FILE,
replaced in one step, and the host polls it while it waits. Progress is never part of an op's result:
nothing here is hashed, cached or written to a manifest.

Only the standard library is imported: this module runs inside vendor environments too.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE_ENV = "YOLOBUILD_PROGRESS_FILE"   # where a process in another environment writes its progress
SWITCH_ENV = "YOLOBUILD_PROGRESS"      # 0 / off: no live view, no progress lines
MIN_WRITE_INTERVAL = 0.2               # seconds between two writes of one file (the last report always lands)


def shown() -> bool:
    """Whether progress is shown at all (YOLOBUILD_PROGRESS=0 turns it off)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def ignore(done: int, total: int, what: str) -> None:
    """The progress of an op nobody watches (a module-level function: an OpContext stays picklable)."""


def read(path: Path) -> dict | None:
    """The latest figures in a progress file, or None (not written yet, or being replaced)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"done", "total", "what"} <= set(data) else None


class FileReporter:
    """`progress(done, total, what)` that writes the figures to `path` (tmp file + rename).

    Plain data, so it pickles into engine.child's helper process. Reports closer than
    MIN_WRITE_INTERVAL are dropped, except the last one of a loop (done == total)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._last = 0.0

    def __call__(self, done: int, total: int, what: str) -> None:
        now = time.time()
        if done < total and now - self._last < MIN_WRITE_INTERVAL:
            return
        self._last = now
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"done": int(done), "total": int(total), "what": str(what), "at": now}, f)
            os.replace(tmp, self.path)
        except OSError:   # progress is a courtesy: a full disk must not fail the op
            pass


def report(done: int, total: int, what: str) -> None:
    """For code running in a toolchain environment: report to the file the host named, if any."""
    path = os.environ.get(FILE_ENV)
    if path:
        _reporter(path)(done, total, what)


_reporters: dict[str, FileReporter] = {}


def _reporter(path: str) -> FileReporter:
    if path not in _reporters:
        _reporters[path] = FileReporter(path)
    return _reporters[path]


class FileWatcher:
    """Host side: forward a progress file's changes to `progress` (call `poll()` while waiting)."""

    def __init__(self, path: Path, progress):
        self.path, self.progress = Path(path), progress
        self._seen: tuple | None = None
        self.path.unlink(missing_ok=True)

    def poll(self) -> None:
        state = read(self.path)
        if state is None:
            return
        key = (state["done"], state["total"], state["what"])
        if key != self._seen:
            self._seen = key
            self.progress(*key)
