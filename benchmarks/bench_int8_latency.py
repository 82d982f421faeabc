"""ONNX Runtime int8 against fp32 on the bench recipe, measured in one run: latency ratio and the AP it costs.

Builds `recipe=bench target=onnxruntime` at fp32 and int8 (the toolchain's defaults, or the extra
overrides given on the command line, applied to the int8 build), then times both shipped models in
this one process, alternating one call of each so a busy machine slows both alike: same input,
same intra-op threads, batch 1, after warm-up. Prints each build's own benchmark.json p50 too.

Usage: python benchmarks/bench_int8_latency.py [backend.options.KEY=VALUE ...]
       (RUNS=200 WARMUP=20 THREADS=0 to change the timing; THREADS=0: one per core, as the benchmark op)
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

from yolobuild.deploy.timing import _input, _onnxruntime  # noqa: E402

BASE = ["recipe=bench", "target=onnxruntime"]
BAR = 0.6


def _interleaved(models: dict[str, Path], runs: int, warmup: int, threads: int) -> dict[str, np.ndarray]:
    runners = {}
    for name, deploy in models.items():
        spec = json.loads((deploy / "deploy.json").read_text())
        run, used, _ = _onnxruntime(deploy / spec["model"]["file"], threads)
        runners[name] = (run, _input(spec))
    times = {name: [] for name in runners}
    for i in range(warmup + runs):
        for name, (run, x) in runners.items():
            t = time.perf_counter()
            run(x)
            if i >= warmup:
                times[name].append((time.perf_counter() - t) * 1000.0)
    return {name: np.asarray(t) for name, t in times.items()}, used


def main() -> None:
    runs, warmup = int(os.environ.get("RUNS", 200)), int(os.environ.get("WARMUP", 20))
    threads = int(os.environ.get("THREADS", 0))
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
              f"min {own.get('min_ms')} ms")
    times, used = _interleaved({p: d / "deploy" for p, (_, d) in builds.items()}, runs, warmup, threads)
    p50 = {p: float(np.percentile(t, 50)) for p, t in times.items()}
    mean = {p: float(t.mean()) for p, t in times.items()}
    low = {p: float(t.min()) for p, t in times.items()}
    print(f"interleaved, {runs} runs each after {warmup} warm-up, {used} intra-op thread(s), batch 1:")
    for p in p50:
        print(f"  {p}: p50 {p50[p]:.3f} ms, mean {mean[p]:.3f} ms, min {low[p]:.3f} ms")
    print(f"int8 / fp32 latency (min): {low['int8'] / low['fp32']:.3f}")
    ratio = p50["int8"] / p50["fp32"]
    print(f"int8 / fp32 latency (p50): {ratio:.3f} (bar: <= {BAR}) {'ok' if ratio <= BAR else 'ABOVE THE BAR'}")
    sys.exit(0 if ratio <= BAR else 1)


if __name__ == "__main__":
    main()
