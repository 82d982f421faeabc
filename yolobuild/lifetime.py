"""Helper processes end with the build that started them, even when it is killed (SIGKILL).

A killed build cannot clean up, so each helper watches for itself: Linux's parent-death signal
(prctl PR_SET_PDEATHSIG) kills it the moment its parent goes, and a watchdog thread that polls
the parent's pid covers the systems (and thread-parent cases) where that signal does not fire.
"""
from __future__ import annotations

import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent_preexec() -> None:
    """For subprocess.Popen(preexec_fn=...): runs in the child between fork and exec."""
    _pdeathsig()


def die_with_parent(parent: int | None = None, poll: float = 0.5) -> None:
    """In a helper process: end it when its parent (the build) is gone."""
    _pdeathsig()
    parent = parent or os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="yolobuild-parent-watch", daemon=True).start()
