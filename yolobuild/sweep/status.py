"""Each sweep job's status file, `jobs/<n>/status.json`: what the job is doing now (its build, ops done
of all, the running ops with their progress), replaced in one step by the job as its build runs and
read by the sweep's live view. Launchers run jobs in other processes (joblib, Ray, submitit) or on
other hosts; a file in the sweep folder (on a shared filesystem) reaches the parent from all of them."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..storage import write_atomic

STATUS_FILE = "status.json"
WRITE_INTERVAL = 1.0   # seconds between two writes for progress alone (a state change is written at once)


class JobStatus:
    """The job side: on_op / on_event of the job's build, and its start and end."""

    def __init__(self, folder: Path, job: int, overrides: list[str]):
        self.path = Path(folder) / STATUS_FILE
        self.state = {"job": job, "overrides": list(overrides), "state": "running", "host": socket.gethostname(),
                      "pid": os.getpid(), "started": time.time(), "build": None, "ops": 0, "done": 0,
                      "ran": 0, "cached": 0, "failed": 0, "running": {}}
        self._written = 0.0
        self.write(force=True)

    def begin(self, build: str, ops: int) -> None:
        self.state.update(build=build, ops=ops)
        self.write(force=True)

    def on_op(self, rec) -> None:
        self.state["running"].pop(rec.op.id, None)
        self.state["done"] += 1
        key = {"ran": "ran", "handoff": "ran", "cached": "cached", "failed": "failed"}.get(rec.status)
        if key:
            self.state[key] += 1
        self.write(force=True)

    def on_event(self, kind: str, rec) -> None:
        self.state["running"][rec.op.id] = {"began": rec.began, "progress": rec.progress}
        finished_loop = bool(rec.progress) and rec.progress["done"] >= rec.progress["total"]
        self.write(force=kind == "start" or finished_loop)   # the end of a loop is never dropped

    def finish(self, row: dict) -> None:
        self.state.update(state="failed" if row.get("status") == "failed" else "done", status=row.get("status"),
                          reason=row.get("reason"), seconds=row.get("seconds"), build_dir=row.get("build_dir"),
                          running={})
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < WRITE_INTERVAL:
            return
        self._written = now
        self.state["updated"] = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.state))
        except OSError:   # the view is a courtesy: the build goes on without it
            pass


def read_statuses(sweep_dir: Path) -> list[dict]:
    """Every job's latest status, by job number (a file being replaced right now is skipped this time)."""
    found = []
    for path in Path(sweep_dir).glob(f"jobs/*/{STATUS_FILE}"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda s: int(s.get("job") or 0))
