"""The sweep's live view in a terminal: jobs done / running / failed, and each running job's op with its
elapsed time and progress, read from the jobs' status files (yolobuild.sweep.status) whatever launcher
runs them. Each job's outcome is printed above the view as it ends."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ..live import REFRESH_PER_SECOND, Rate, duration, progress_text
from .status import read_statuses


def _told_apart(status: dict, common: frozenset) -> str:
    """A job's overrides less those every job of the sweep shares."""
    own = status.get("overrides") or []
    return " ".join([o for o in own if o not in common] or own)


def outcome_line(status: dict, common: frozenset = frozenset()) -> str:
    """The line printed when a job ends."""
    head = f"[{status.get('job')}] {_told_apart(status, common)}"
    if status.get("state") == "failed":
        return f"{head}: failed: {status.get('reason') or 'see its build folder'}"
    return (f"{head}: {status.get('status')} {status.get('build') or ''}, {status.get('ran', 0)} ops ran, "
            f"{status.get('cached', 0)} cached, {duration(status.get('seconds') or 0.0)}")


class SweepView:
    """Polls `sweep_dir/jobs/*/status.json` twice a second while the launcher runs; `jobs`: how many the
    sweep has, when known (a sweeper such as optuna decides as it goes); `common`: the overrides every
    job shares (left out of each job's line)."""

    POLL = 0.5

    def __init__(self, sweep_dir: Path, console, jobs: int | None = None, common=(), clock=time.time):
        self.sweep_dir, self.console, self.jobs, self.clock = Path(sweep_dir), console, jobs, clock
        self.common = frozenset(common)
        self.rate = Rate()
        self.statuses: list[dict] = []
        self._ended: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._live = None
        self._poller: threading.Thread | None = None

    def poll(self) -> None:
        """Read the status files; a job that ended since the last poll gets its line above the view."""
        statuses = read_statuses(self.sweep_dir)
        with self._lock:
            self.statuses = statuses
        for s in statuses:
            if s.get("state") in ("done", "failed") and s.get("job") not in self._ended:
                self._ended.add(s.get("job"))
                self.console.print(outcome_line(s, self.common), highlight=False, markup=False)

    def render(self):
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            statuses, now = list(self.statuses), self.clock()
        done = sum(s.get("state") == "done" for s in statuses)
        failed = sum(s.get("state") == "failed" for s in statuses)
        running = [s for s in statuses if s.get("state") == "running"]
        of = f" of {self.jobs}" if self.jobs else ""
        head = Text.assemble(("sweep", "bold"), f": {done} done, {len(running)} running, {failed} failed{of}")
        return Group(head, *(Text(self.job_line(s, now), no_wrap=True, overflow="ellipsis") for s in running))

    def job_line(self, status: dict, now: float) -> str:
        head = f"  [{status.get('job')}] {_told_apart(status, self.common)}"
        ops = f"{status.get('done', 0)}/{status.get('ops') or '?'} ops"
        parts = []
        for op_id, op in (status.get("running") or {}).items():
            key = f"{status.get('job')}:{op_id}"
            progress = op.get("progress")
            eta = None
            if progress:
                self.rate.note(key, progress)
                eta = self.rate.eta(key, progress, op.get("began"), now)
            elapsed = duration(now - op["began"]) if op.get("began") else ""
            text = progress_text(progress, eta)
            parts.append(f"{op_id} {elapsed}" + (f" {text}" if text else ""))
        return f"{head}  {ops}" + (f"  {'; '.join(parts)}" if parts else "")

    def _polling(self) -> None:
        while not self._stop.wait(self.POLL):
            self.poll()

    def __enter__(self) -> "SweepView":
        from rich.live import Live

        self.poll()
        self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                          refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        self._poller = threading.Thread(target=self._polling, name="yolobuild-sweep-view", daemon=True)
        self._poller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self.poll()   # the last outcomes, printed above the view before it goes
        if self._live is not None:
            self._live.stop()
            self._live = None
