"""Sophgo TPU-MLIR bars, measured in one run (tpu-mlir environment installed on first use):

  bm1684x fp32, demo 320: cmodel vs PyTorch cosine per output field   (bar >= 0.99999)
  bm1684x fp16, demo 320: cmodel vs PyTorch cosine per output field   (bar >= 0.9999)
  bm1684x int8, demo 320: mAP50-95 drop vs PyTorch fp32               (bar <= 1.5 points)
  a second identical int8 build: every op cached, no worker (so no Python 3.10 process) started
and the figures at every step: top MLIR vs ONNX, bmodel vs top MLIR, per output; seconds per step.

The cmodel emulator is slow (about 9 s per 320x320 image in int8, a minute or more in fp16/fp32 on
2 cores), so fp32/fp16 parity is measured on PARITY_IMAGES probe images and int8 mAP on EVAL_IMAGES
evaluation images of the demo set (all 100: EVAL_IMAGES=100, about 15 minutes).

Usage: python benchmarks/bench_tpu_mlir.py      (env: PARITY_IMAGES=2 EVAL_IMAGES=40)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from buildrun import build  # noqa: E402

PARITY_IMAGES = int(os.environ.get("PARITY_IMAGES", "2"))
EVAL_IMAGES = int(os.environ.get("EVAL_IMAGES", "40"))


def steps(m: dict) -> None:
    ops = {op["id"]: op for op in m["ops"]}
    res = ops["compile"]["results"]
    for step in ("top_vs_onnx", "bmodel_vs_top"):
        cos = res["steps"][step]["cosine"]
        print(f"    {step:<14} " + "  ".join(f"{k} {v:.7f}" for k, v in cos.items()))
    print("    seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res["compile"]["step_seconds"].items())
          + f", simulate (cmodel, {ops['simulate']['results']['simulate']['images']} images) {ops['simulate']['seconds']:.1f}")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="yolobuild-bench-tpu-"))
    t = time.perf_counter()
    env_ready = subprocess.run([sys.executable, "-m", "yolobuild", "toolchain", "install", "tpu-mlir"],
                               capture_output=True, text=True)
    if env_ready.returncode != 0:
        sys.exit(env_ready.stderr)
    print(f"tpu-mlir environment ready in {time.perf_counter() - t:.1f} s (0 when already installed)")

    few = ["evaluate.enabled=false", f"check.parity_images={PARITY_IMAGES}"]
    for precision, bar in (("fp32", 0.99999), ("fp16", 0.9999)):
        wall, m, _ = build(["target=bm1684x", f"precision={precision}", *few], root)
        print(f"bm1684x {precision} demo 320, cmodel vs PyTorch cosine per field on {PARITY_IMAGES} image(s) "
              f"(bar >= {bar}), build {wall:.0f} s:")
        for field, v in m["parity"].items():
            print(f"  {field:<13} {v['cosine']:.7f}  {'ok' if v['cosine'] >= bar else 'BELOW BAR'}")
        steps(m)

    int8 = ["target=bm1684x", "precision=int8", f"dataset.generator.eval_count={EVAL_IMAGES}"]
    wall, m, _ = build(int8, root)
    ref, got = m["metrics"]["pytorch_fp32"]["mAP50_95"], m["metrics"]["built"]["mAP50_95"]
    print(f"bm1684x int8 demo 320 ({m['metrics']['images']} eval images), build {wall:.0f} s: mAP50-95 PyTorch fp32 "
          f"{ref:.4f}, cmodel {got:.4f}, drop {100 * (ref - got):.2f} points (bar <= 1.5)")
    print("  parity: " + ", ".join(f"{k} {v['cosine']:.5f}" for k, v in m["parity"].items()))
    steps(m)

    wall, m, _ = build(int8, root)
    statuses = {op["status"] for op in m["ops"]}
    print(f"second identical int8 build: {wall:.1f} s, op statuses {sorted(statuses)} "
          f"({'cache hit, no worker started' if statuses == {'cached'} else 'NOT a cache hit'})")

    # the other chips and the recipe keys of part 2, each checked against PyTorch on the probe images
    for extra in (["target=bm1684", "precision=int8"],
                  ["target=bm1688", "precision=int8", "backend.options.num_core=2"],
                  ["target=bm1684x", "precision=int8", "backend.options.asymmetric=true"]):
        wall, m, _ = build([*extra, *few], root)
        c = {op["id"]: op for op in m["ops"]}["compile"]["results"]["compile"]
        print(f"{' '.join(extra)}: build {wall:.0f} s, {c['bytes']} bytes, cmodel vs PyTorch on {PARITY_IMAGES} "
              "image(s): " + ", ".join(f"{k} {v['cosine']:.5f}" for k, v in m["parity"].items()))


if __name__ == "__main__":
    main()
