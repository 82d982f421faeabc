"""The benchmark op: time the shipped artifact on this machine's runtimes (batch 1, after warm-up)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ToolchainError
from . import OpContext


def benchmark(ctx: OpContext) -> None:
    from ..deploy.timing import benchmark_deploy

    p = ctx.params
    try:
        figures = benchmark_deploy(Path(ctx.inputs["deploy"]), int(p["runs"]), int(p["warmup"]), int(p["threads"]),
                                   float_model=Path(ctx.inputs["float"]) if "float" in ctx.inputs else None)
    except Exception as exc:   # a runtime that cannot load what compile checked is a toolchain problem
        raise ToolchainError(f"benchmark: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}") from None
    if not any("p50_ms" in r for r in figures["runtimes"].values()):
        why = "; ".join(f"{k}: {v['error']}" for k, v in figures["runtimes"].items()) or "none installed"
        raise ToolchainError(f"benchmark: no runtime on this machine runs {figures['model']} ({why})")
    ctx.outputs["benchmark.json"].write_text(json.dumps(figures, indent=2) + "\n")
    ctx.results["benchmark"] = figures
