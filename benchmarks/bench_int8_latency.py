"""ONNX Runtime int8 against fp32 on the bench recipe, measured in one run: latency ratio and the AP it costs.

Builds `recipe=bench target=onnxruntime` at fp32 and int8 (the toolchain's defaults, or the extra
overrides given on the command line, applied to the int8 build), then times both shipped models in turn in
this one process (blocks of calls, as the benchmark op does) so a busy machine slows both alike:
same input, same intra-op threads, batch 1, after warm-up; once per thread setting in THREADS. Prints each
build's own benchmark.json p50 too. Exit status 1 when a setting's p50 ratio is above the bar.

Usage: python benchmarks/bench_int8_latency.py [backend.options.KEY=VALUE ...]
       (RUNS=200 WARMUP=20 THREADS=0,1 to change the timing; 0: one per core, as the benchmark op)
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from buildrun import build  # noqa: E402

from yolobuild.deploy.timing import _input, _onnxruntime, measure_against  # noqa: E402

BASE = ["recipe=bench", "target=onnxruntime"]
BAR = 0.6


def _in_turn(models: dict[str, Path], runs: int, warmup: int, threads: int):
    """Both shipped models timed in turn by the benchmark op's own mechanism (timing.measure_against)."""
    opened = {}
    for name, deploy in models.items():
        spec = json.loads((deploy / "deploy.json").read_text())
        opened[name], used, _ = _onnxruntime(deploy / spec["model"]["file"], threads)
        x = _input(spec)
    int8, fp32 = measure_against(opened["int8"], opened["fp32"], x, runs, warmup)
    return {"int8": int8, "fp32": fp32}, used


def main() -> None:
    runs, warmup = int(os.environ.get("RUNS", 200)), int(os.environ.get("WARMUP", 20))
    settings = [int(t) for t in os.environ.get("THREADS", "0,1").split(",")]
    extra = sys.argv[1:]
    root = Path(os.environ.get("BENCH_ROOT") or tempfile.mkdtemp(prefix="yolobuild-bench-int8-"))
    root.mkdir(parents=True, exist_ok=True)
    builds = {}
    for precision, more in (("fp32", []), ("int8", extra)):
        wall, m, name = build(BASE + [f"precision={precision}", *more], root)
        builds[precision] = (m, root / "ws" / name)
        own = (m.get("benchmark") or {}).get("runtimes", {}).get("onnxruntime", {})
        metrics = m.get("metrics") or {}
        print(f"{precision}: built in {wall:.1f} s; mAP50-95 {metrics.get('built', {}).get('mAP50_95')} "
              f"(PyTorch {metrics.get('pytorch_fp32', {}).get('mAP50_95')}, delta "
              f"{metrics.get('delta_mAP50_95')} AP points); its benchmark.json p50 {own.get('p50_ms')} ms, "
              f"min {own.get('min_ms')} ms" + (f", vs_float {own['vs_float']}" if "vs_float" in own else ""))
    above = []
    for threads in settings:
        figures, used = _in_turn({p: d / "deploy" for p, (_, d) in builds.items()}, runs, warmup, threads)
        print(f"in turn (blocks of calls), {runs} runs each after {warmup} warm-up, "
              f"{used} intra-op thread(s), batch 1:")
        for p, f in figures.items():
            print(f"  {p}: p50 {f['p50_ms']:.3f} ms, mean {f['mean_ms']:.3f} ms, min {f['min_ms']:.3f} ms")
        print(f"  int8 / fp32 latency (min): {figures['int8']['min_ms'] / figures['fp32']['min_ms']:.3f}")
        ratio = figures["int8"]["p50_ms"] / figures["fp32"]["p50_ms"]
        print(f"  int8 / fp32 latency (p50): {ratio:.3f} (bar: <= {BAR}) {'ok' if ratio <= BAR else 'ABOVE THE BAR'}")
        if ratio > BAR:
            above.append(used)
    sys.exit(1 if above else 0)


if __name__ == "__main__":
    main()
