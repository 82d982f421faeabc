"""TensorRT on an NVIDIA GPU (pip install "yolobuild[tensorrt]"), measured in one run:

  demo fp32 / fp16 / int8: engine vs PyTorch cosine per output field, mAP50-95 PyTorch -> engine
  yolov5s 640 (random weights) fp32 / fp16 / int8: engine latency p50 / p90 after warm-up
      (enqueue to stream synchronized, input already on the device, batch 1)

Without a GPU it says so in one line and exits 3, before anything is built.

Usage: python benchmarks/bench_tensorrt.py            (WARMUP=50 ITERATIONS=500 to change the timing)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from buildrun import build  # noqa: E402

from yolobuild.toolchains.tensorrt import gpu  # noqa: E402  (ctypes only: no tensorrt import here)

PRECISIONS = ("fp32", "fp16", "int8")


def _require_gpu() -> gpu.Gpu:
    try:
        return gpu.find_gpus()[0]
    except gpu.NoGpu as why:
        print(f"bench_tensorrt: needs an NVIDIA GPU: {why}; nothing was built", file=sys.stderr)
        sys.exit(3)


def _latency(engine_path: Path, shape: tuple[int, ...], warmup: int, iterations: int) -> tuple[float, float]:
    import numpy as np

    from yolobuild.toolchains.tensorrt import vendor
    from yolobuild.toolchains.tensorrt.execution import EngineRunner
    from yolobuild.toolchains.tensorrt.logger import file_logger

    trt, cudart = vendor.load_tensorrt(), vendor.load_cudart()
    logger = file_logger(trt, engine_path.with_suffix(".bench.log"))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with EngineRunner(trt, cudart, engine_path.read_bytes(), logger, input_shape=shape) as engine:
        times = engine.time(x, warmup=warmup, iterations=iterations)
    logger.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def main() -> None:
    device = _require_gpu()
    warmup, iterations = int(os.environ.get("WARMUP", 50)), int(os.environ.get("ITERATIONS", 500))
    root = Path(tempfile.mkdtemp(prefix="yolobuild-bench-tensorrt-"))
    print(f"GPU 0: {device.name} (compute capability {device.compute_capability})")

    print("demo, engine vs PyTorch: cosine per output field; mAP50-95 PyTorch fp32 -> engine")
    for precision in PRECISIONS:
        wall, m, _ = build(["recipe=demo", "target=tensorrt", f"precision={precision}"], root)
        fields = "  ".join(f"{f} {v['cosine']:.6f}" for f, v in m["parity"].items())
        metrics = m.get("metrics") or {}
        ref = (metrics.get("pytorch_fp32") or {}).get("mAP50_95")
        got = (metrics.get("built") or {}).get("mAP50_95")
        acc = f"{ref:.4f} -> {got:.4f} ({100 * (got - ref):+.2f} points)" if ref is not None and got is not None \
            else "not evaluated"
        print(f"  {precision}: {fields}  |  mAP50-95 {acc}  |  build {wall:.1f} s")

    print(f"yolov5s 640x640 random weights, engine latency (ms, {warmup} warm-up runs, {iterations} timed)")
    for precision in PRECISIONS:
        wall, _, name = build(["recipe=yolov5s", "model.weights=random", "input.width=640", "input.height=640",
                               "target=tensorrt", f"precision={precision}"], root)
        p50, p90 = _latency(root / "ws" / name / "model.engine", (1, 3, 640, 640), warmup, iterations)
        print(f"  {precision}: p50 {p50:.3f}  p90 {p90:.3f}  |  build {wall:.1f} s")


if __name__ == "__main__":
    main()
