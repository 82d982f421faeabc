"""Rockchip bars, measured in one run (rknn-toolkit2 environment installed on first use):

  rk3588 fp16, demo: simulator vs PyTorch cosine per output field   (bar >= 0.9999)
  rk3588 int8, demo: mAP50-95 drop vs PyTorch fp32                  (bar <= 1.5 points)
  yolov5s 640 int8: yolobuild's own share of the build's wall time  (bar <= 15%)
      = (wall time - time inside the rknn worker, which builds, exports and simulates in one session) / wall time

Usage: python benchmarks/bench_rknn.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from buildrun import build  # noqa: E402


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
    c = ops["compile"]["results"]["compile"]
    inside = c["toolkit_window"][1] - c["toolkit_window"][0]
    print(f"yolov5s 640 int8 rk3588, cold cache: wall {wall:.1f} s, inside the rknn worker {inside:.1f} s "
          f"(build + export {c['seconds_building']:.1f} s, simulator on {c['simulated_images']} images "
          f"{c['seconds_simulating']:.1f} s), yolobuild's own share {100 * (wall - inside) / wall:.1f}% (bar <= 15%)")
    print("    op                 start    seconds   (after the run began; ops overlap)")
    for op in sorted(m["ops"], key=lambda o: o["started"]):
        print(f"    {op['id']:<17} {op['started']:6.2f} s {op['seconds']:7.2f} s")


if __name__ == "__main__":
    main()
