"""Process-wide quiet sections: torch exporters, onnxruntime and onnxslim share global state.

torch.onnx.export and torch.jit.trace keep process-wide state (GLOBALS.in_onnx_export, the tracing
state), and quiet() swaps sys.stdout: ops running side by side (host ops, model families,
toolchain packages) take TORCH_EXPORT_LOCK around them. Lives here, imported by all of them, so
none of them imports another's module for it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings

TORCH_EXPORT_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet():
    """Silence exporter / simplifier warnings and chatter (Python warnings, stdout, their loggers)."""
    with TORCH_EXPORT_LOCK:     # process-wide state: one quiet section at a time (ops run in threads)
        loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxslim", "onnxruntime", "root")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.redirect_stdout(io.StringIO()):
                    yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
