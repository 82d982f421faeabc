"""TensorRT's log into the op's log file, with its errors kept for the one-line message."""
from __future__ import annotations

from pathlib import Path


def file_logger(trt, path: Path):
    """A trt.ILogger writing every message to `path`; `.errors` holds the ERROR / INTERNAL_ERROR ones."""

    class FileLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")   # noqa: SIM115 - closed with the op
            self.errors: list[str] = []

        def log(self, severity, msg):
            self.file.write(f"[{severity.name}] {msg}\n")
            self.file.flush()
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(" ".join(str(msg).split()))

        def close(self):
            self.file.close()

    return FileLogger()
