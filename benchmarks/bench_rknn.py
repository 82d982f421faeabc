"""Rockchip bars, measured in one run (rknn-toolkit2 environment installed on first use):

  rk3588 fp16, demo: simulator vs PyTorch cosine per output field   (bar >= 0.9999)
  rk3588 int8, demo: mAP50-95 drop vs PyTorch fp32                  (bar <= 1.5 points)
  yolov5s 640 int8: yolobuild's own share of the build's wall time  (bar <= 15%)
      = (wall time - time inside the rknn worker: compile + simulate) / wall time

Usage: python benchmarks/bench_rknn.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(args: list[str], root: Path) -> tuple[float, dict, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "yolobuild", *args, f"workspace.path={root / 'ws'}",
                        f"cache.dir={root / 'cache'}"], capture_output=True, text=True, cwd=root)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"build failed ({r.returncode}): {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    name = next(line.split()[-1] for line in r.stdout.splitlines() if line.startswith("building "))
    return wall, json.loads((root / "ws" / name / "manifest.json").read_text()), name


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="yolobuild-bench-rknn-"))
    env_ready = subprocess.run([sys.executable, "-m", "yolobuild", "toolchain", "install", "rknn"],
                               capture_output=True, text=True)
    if env_ready.returncode != 0:
        sys.exit(env_ready.stderr)

    _, fp16, _ = build(["target=rk3588", "precision=fp16"], root)
    print("rk3588 fp16 demo, simulator vs PyTorch cosine per field (bar >= 0.9999):")
    for field, v in fp16["parity"].items():
        print(f"  {field:<13} {v['cosine']:.7f}")
    _, int8, _ = build(["target=rk3588", "precision=int8"], root)
    ref, got = int8["metrics"]["pytorch_fp32"]["mAP50_95"], int8["metrics"]["built"]["mAP50_95"]
    print(f"rk3588 int8 demo mAP50-95: PyTorch fp32 {ref:.4f}, simulator {got:.4f}, "
          f"drop {100 * (ref - got):.2f} points (bar <= 1.5)")

    wall, m, _ = build(["recipe=yolov5s", "model.weights=random", "target=rk3588", "precision=int8"], root)
    ops = {op["id"]: op for op in m["ops"]}
    inside = sum(ops[k]["results"].get(k, {}).get("seconds_in_toolkit", 0.0) for k in ("compile", "simulate"))
    print(f"yolov5s 640 int8 rk3588, cold cache: wall {wall:.1f} s, inside the rknn worker {inside:.1f} s, "
          f"yolobuild's own share {100 * (wall - inside) / wall:.1f}% (bar <= 15%)")
    for op in m["ops"]:
        print(f"    {op['id']:<17} {op['seconds']:6.2f} s")


if __name__ == "__main__":
    main()
