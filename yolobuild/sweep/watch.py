"""The sweep's live view in a terminal: jobs done / running / failed, and each running job's op with its
elapsed time and progress, read from the jobs' status files (yolobuild.sweep.status) whatever launcher
runs them. Each job's outcome is printed above the view as it ends."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ..live import REFRESH_PER_SECOND, Rate, duration, progress_text
from .status import read_statuses


def outcome_line(status: dict) -> str:
    """The line printed when a job ends."""
    head = f"[{status.get('job')}] {' '.join(status.get('overrides') or [])}"
    if status.get("state") == "failed":
        return f"{head}: failed: {status.get('reason') or 'see its build folder'}"
    return (f"{head}: {status.get('status')} {status.get('build') or ''}, {status.get('ran', 0)} ops ran, "
            f"{status.get('cached', 0)} cached, {duration(status.get('seconds') or 0.0)}")


class SweepView:
    """Polls `sweep_dir/jobs/*/status.json` while the launcher runs; `jobs`: how many the sweep has,
    when known (a sweeper such as optuna decides as it goes)."""

    def __init__(self, sweep_dir: Path, console, jobs: int | None = None, clock=time.time):
        self.sweep_dir, self.console, self.jobs, self.clock = Path(sweep_dir), console, jobs, clock
        self.rate = Rate()
        self._ended: set = set()
        self._lock = threading.Lock()
        self._live = None

    def render(self):
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            statuses = read_statuses(self.sweep_dir)
            now = self.clock()
            for s in statuses:
                if s.get("state") in ("done", "failed") and s.get("job") not in self._ended:
                    self._ended.add(s.get("job"))
                    if self._live is not None:
                        self._live.console.print(outcome_line(s), highlight=False, markup=False)
            done = sum(s.get("state") == "done" for s in statuses)
            failed = sum(s.get("state") == "failed" for s in statuses)
            running = [s for s in statuses if s.get("state") == "running"]
            of = f" of {self.jobs}" if self.jobs else ""
            head = Text.assemble(("sweep", "bold"), f": {done} done, {len(running)} running, {failed} failed{of}")
            return Group(head, *(Text(self.job_line(s, now)) for s in running))

    def job_line(self, status: dict, now: float) -> str:
        head = f"  [{status.get('job')}] {' '.join(status.get('overrides') or [])}"
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

    def __enter__(self) -> "SweepView":
        from rich.live import Live

        self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                          refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self.render()   # the last outcomes, printed above the view before it goes
            self._live.stop()
            self._live = None
