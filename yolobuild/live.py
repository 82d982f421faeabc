"""What a running build shows: in a terminal, a live view of the running ops (elapsed time, images
done of N with an ETA); elsewhere (CI, pipes) plain lines, each op's progress at most once per
PLAIN_INTERVAL seconds and a still-running line for a long op that reports none, so logs stay readable.

Fed by the engine's events (Runner's on_op / on_event); progress never reaches the manifest or the cache.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

PLAIN_INTERVAL = 10.0      # seconds between two progress lines of one op, when not in a terminal
PLAIN_HEARTBEAT = 60.0     # seconds between two "still running" lines of an op that reports no progress
REFRESH_PER_SECOND = 4


def duration(seconds: float) -> str:
    """41 -> '41s', 80 -> '1m20s', 3720 -> '1h02m'."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def saved(seconds: float) -> str:
    """A cached op (or a build's cached ops) as the time it saved, not as its original seconds."""
    return f"saved {seconds:.1f} s"


def op_line(rec) -> str:
    """The line printed when an op finishes: a cached op says the time it saved."""
    if rec.status == "cached":
        return f"  {rec.op.id:<18} {'cached':<8} {saved(rec.seconds)}"
    mark = {"failed": "FAILED"}.get(rec.status, rec.status)
    return f"  {rec.op.id:<18} {mark:<8} {rec.seconds:7.2f}s  ({rec.reason})"


class Rate:
    """Images per second of one op's loop, from its first and latest report: the ETA is the remaining
    images at that rate, counted down from the latest report."""

    def __init__(self):
        self.first: dict[str, tuple[str, int, float]] = {}   # op id -> (what, done, at) of the first report

    def note(self, op_id: str, progress: dict) -> None:
        first = self.first.get(op_id)
        if first is None or first[0] != progress["what"] or progress["done"] < first[1]:
            self.first[op_id] = (progress["what"], progress["done"], progress["at"])

    def eta(self, op_id: str, progress: dict, began: float | None, now: float) -> float | None:
        done, total, at = progress["done"], progress["total"], progress["at"]
        if done >= total:
            return 0.0
        what, done0, at0 = self.first.get(op_id, (progress["what"], done, at))
        if done > done0 and at > at0:
            per_image = (at - at0) / (done - done0)
        elif done > 0 and began is not None and at > began:
            per_image = (at - began) / done
        else:
            return None
        return max(0.0, (total - done) * per_image - (now - at))


def progress_text(progress: dict | None, eta: float | None) -> str:
    """'eval images 37/100, ETA 1m20s'."""
    if not progress:
        return ""
    text = f"{progress['what']} {progress['done']}/{progress['total']}"
    return text if eta is None or progress["done"] >= progress["total"] else f"{text}, ETA {duration(eta)}"


class BuildView:
    """One build's on_op / on_event. `console`: a rich Console that is a terminal (the live view);
    None: plain lines through `say`, with progress lines unless `progress_lines` is off
    (YOLOBUILD_PROGRESS=0). Use as a context manager around the build."""

    def __init__(self, say: Callable[[str], None], name: str, ops: int, console=None,
                 progress_lines: bool = True, clock: Callable[[], float] = time.time):
        self.say, self.name, self.ops, self.console, self.clock = say, name, ops, console, clock
        self.progress_lines = progress_lines
        self.running: dict[str, Any] = {}       # op id -> OpRecord, in start order
        self.finished = 0
        self.rate = Rate()
        self._last_line: dict[str, float] = {}  # plain mode: when each op last printed a line
        self._lock = threading.RLock()
        self._live = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- the engine's events -------------------------------------------------------------------
    @property
    def listener(self):
        """The Runner's on_event, or None when nothing shows progress (then no op reports any)."""
        return self.on_event if self.console is not None or self.progress_lines else None

    def on_op(self, rec) -> None:
        with self._lock:
            self.running.pop(rec.op.id, None)
            self._last_line.pop(rec.op.id, None)
            self.finished += 1
            self._print(op_line(rec))
            for warning in (getattr(rec, "results", None) or {}).get("warnings") or ():   # e.g. the calibration checks
                self._print(f"  warning: {warning}")

    def on_event(self, kind: str, rec) -> None:
        with self._lock:
            now = self.clock()
            if kind == "start":
                self.running[rec.op.id] = rec
                self._last_line[rec.op.id] = rec.began or now
            elif kind == "progress" and rec.progress:
                self.running.setdefault(rec.op.id, rec)
                self.rate.note(rec.op.id, rec.progress)
                if (self._live is None and self.progress_lines
                        and now - self._last_line.get(rec.op.id, now) >= PLAIN_INTERVAL):
                    self._last_line[rec.op.id] = now
                    self.say(self.progress_line(rec, now))

    # -- what is shown -------------------------------------------------------------------------
    def progress_line(self, rec, now: float) -> str:
        eta = self.rate.eta(rec.op.id, rec.progress, rec.began, now) if rec.progress else None
        elapsed = now - (rec.began or now)
        text = progress_text(rec.progress, eta)
        return f"  {rec.op.id:<18} running  {duration(elapsed):>7}" + (f"  {text}" if text else "")

    def render(self):
        """The live region: the build's counts, then one row per running op."""
        from rich.console import Group
        from rich.text import Text

        with self._lock:
            now = self.clock()
            head = Text.assemble((f"building {self.name}", "bold"),
                                 f": {self.finished} of {self.ops} ops done, {len(self.running)} running")
            return Group(head, *(Text(self.progress_line(rec, now), no_wrap=True, overflow="ellipsis")
                                 for rec in self.running.values()))

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, highlight=False, markup=False)
        else:
            self.say(text)

    def _heartbeat(self) -> None:
        """Plain mode: a long op that reports no progress still says it is running, once a minute."""
        while not self._stop.wait(1.0):
            with self._lock:
                now = self.clock()
                for rec in list(self.running.values()):
                    if now - self._last_line.get(rec.op.id, now) >= (PLAIN_INTERVAL if rec.progress else PLAIN_HEARTBEAT):
                        self._last_line[rec.op.id] = now
                        self.say(self.progress_line(rec, now))

    def __enter__(self) -> "BuildView":
        if self.console is not None:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                              refresh_per_second=REFRESH_PER_SECOND, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        elif self.progress_lines:
            self._ticker = threading.Thread(target=self._heartbeat, name="yolobuild-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._ticker is not None:
            self._ticker.join(timeout=2)


def terminal_console(stream):
    """A rich Console on `stream` when it is a terminal and progress is shown; else None (plain lines)."""
    from .progress import shown

    if not shown() or not getattr(stream, "isatty", lambda: False)():
        return None
    from rich.console import Console

    console = Console(file=stream, highlight=False)
    return console if console.is_terminal else None
