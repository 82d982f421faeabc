"""Spine speed bars, measured in one run and printed as ratios to `python -c "import torch"`.

  validate / plan wall time      <= 0.25 x import torch
  no-op rebuild wall time        <= 0.30 x import torch, and it imports no torch

Usage: python benchmarks/bench_spine.py [--repeat N]
Runs with a private cache and workspace (temp folders), so it measures a cold build once
and then rebuilds with nothing changed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def wall(cmd: list[str], env: dict, repeat: int, fresh_cache: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    """Median wall time; fresh_cache gives every run an empty cache (no composition memo)."""
    times, last = [], None
    for _ in range(repeat):
        if fresh_cache:
            env = {**env, "YOLOBUILD_CACHE": tempfile.mkdtemp(prefix="yolobuild-bench-cold-")}
        t = time.perf_counter()
        last = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if last.returncode != 0:
            sys.exit(f"command failed ({last.returncode}): {' '.join(cmd)}\n{last.stderr}")
    return statistics.median(times), last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="yolobuild-bench-")
    env = {**os.environ, "YOLOBUILD_CACHE": os.path.join(tmp, "cache")}
    yb = [sys.executable, "-m", "yolobuild"]
    ws = f"workspace.path={os.path.join(tmp, 'ws')}"

    torch_s, _ = wall([sys.executable, "-c", "import torch"], env, args.repeat)
    validate = yb + ["validate", "recipe=yolov5s", "target=rk3588", "precision=int8", "dataset=shapes"]
    plan = yb + ["plan", "recipe=yolov5s", "target=onnxruntime", "precision=int8", "input.width=736",
                 "input.height=416", ws]
    validate_cold_s, _ = wall(validate, env, args.repeat, fresh_cache=True)
    plan_cold_s, _ = wall(plan, env, args.repeat, fresh_cache=True)
    validate_s, _ = wall(validate, env, args.repeat)
    plan_s, _ = wall(plan, env, args.repeat)
    cold_s, _ = wall(yb + [ws], env, 1)
    noop_s, _ = wall(yb + [ws], env, args.repeat)
    probe = subprocess.run([sys.executable, "-X", "importtime"] + yb[1:] + [ws], env=env,
                           capture_output=True, text=True)
    imported_torch = any(line.rstrip().endswith("| torch") for line in probe.stderr.splitlines())

    print(f"import torch                   {torch_s:7.3f} s   (median of {args.repeat})")
    print(f"yolobuild validate, first run  {validate_cold_s:7.3f} s   ratio {validate_cold_s / torch_s:.3f}  (bar <= 0.25)")
    print(f"yolobuild plan, first run      {plan_cold_s:7.3f} s   ratio {plan_cold_s / torch_s:.3f}  (bar <= 0.25)")
    print(f"yolobuild validate, memoised   {validate_s:7.3f} s   ratio {validate_s / torch_s:.3f}")
    print(f"yolobuild plan, memoised       {plan_s:7.3f} s   ratio {plan_s / torch_s:.3f}")
    print(f"demo build, cold cache         {cold_s:7.3f} s")
    print(f"demo rebuild, no change        {noop_s:7.3f} s   ratio {noop_s / torch_s:.3f}  (bar <= 0.30)")
    print(f"no-op rebuild imports torch: {'YES' if imported_torch else 'no'}")


if __name__ == "__main__":
    main()
