"""What one op run sees (OpContext): shared by host ops and toolchain packages, so neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .progress import ignore


@dataclass
class OpContext:
    """What one op run sees: its params, input paths, where to write, and a results dict."""

    op_id: str
    kind: str
    params: dict[str, Any]
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    scratch: Path
    results: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    log_file: Path | None = None   # where a tool's own output goes; kept after the op (build folder logs/)
    # progress(done, total, what) of per-image work ("eval images"): shown while the op runs, never
    # part of its result (yolobuild.progress)
    progress: Callable[[int, int, str], None] = ignore

    def __post_init__(self):
        if self.log_file is None:
            self.log_file = self.scratch / f"{self.op_id}.log"
