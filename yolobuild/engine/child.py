"""One child process for the host ops that do numpy / Pillow work (dataset generation, letterboxing).

Host ops share one interpreter, so threads only take turns on its lock: on two cores the
dataset and calibration ops ran at half speed beside the torch ops (measured), and the
model export waited for them. In a child process they use the other core. The child is
started on first use (spawn: a clean interpreter, no torch) and serves every such op of
the process; errors come back as the same yolobuild errors. The op's progress comes back through a
progress file the parent polls while it waits (yolobuild.progress).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from ..errors import ToolchainError
from ..lifetime import die_with_parent
from ..ops import OpContext, resolve_impl
from ..progress import FileReporter, FileWatcher, ignore

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def _run(impl: str, ctx: OpContext) -> dict:
    resolve_impl(impl)(ctx)
    return ctx.results


def run_in_child(impl: str, ctx: OpContext) -> None:
    """Run the op implementation `impl` on `ctx` in the child; its results land in ctx.results."""
    global _pool
    with _lock:
        if _pool is None:
            import multiprocessing

            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=die_with_parent, initargs=(os.getpid(),))
        pool = _pool
    watcher = FileWatcher(ctx.scratch / "progress.json", ctx.progress) if ctx.progress is not ignore else None
    sent = replace(ctx, progress=FileReporter(watcher.path)) if watcher else ctx
    try:
        future = pool.submit(_run, impl, sent)
        while True:
            try:
                ctx.results.update(future.result(timeout=0.5))
                break
            except FutureTimeout:
                if watcher:
                    watcher.poll()
        if watcher:
            watcher.poll()
    except BrokenProcessPool:
        stop()
        raise ToolchainError(f"{ctx.op_id}: the helper process that runs it ended unexpectedly") from None


def stop() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
