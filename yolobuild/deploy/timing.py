"""Time a deploy folder's artifact on the runtimes this machine has: batch 1, after warm-up.

ONNX Runtime on the CPU for .onnx files, OpenVINO on the CPU for IR (.xml) files and, where the
openvino package is installed, for .onnx files too. The input is a letterboxed grey canvas shaped
as deploy.json says: latency does not depend on pixel values.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _input(spec: dict) -> np.ndarray:
    feed = spec["preprocessing"]["feed"]
    h, w = spec["input"]["height"], spec["input"]["width"]
    shape = (1, 3, h, w) if feed["layout"] == "nchw" else (1, h, w, 3)
    return np.full(shape, 114 / 255.0 if feed["dtype"] == "float32" else 114, dtype=feed["dtype"])


def _onnxruntime(model: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    used = threads or os.cpu_count() or 1   # ORT's default: one intra-op thread per core
    return (lambda x: sess.run(None, {name: x})), used, f"onnxruntime {ort.__version__} CPUExecutionProvider"


def _openvino(model: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    compiled = core.compile_model(str(model), "CPU", config)
    used = int(compiled.get_property("INFERENCE_NUM_THREADS") or 0) or threads or os.cpu_count() or 1
    request = compiled.create_infer_request()
    return (lambda x: request.infer([x])), used, f"openvino {ov.__version__} CPU"


def runtimes_for(model: Path) -> dict:
    """The runners this machine has for the artifact (name -> opener)."""
    import importlib.util

    found = {}
    if model.suffix == ".onnx" and importlib.util.find_spec("onnxruntime"):
        found["onnxruntime"] = _onnxruntime
    if model.suffix in (".onnx", ".xml") and importlib.util.find_spec("openvino"):
        found["openvino"] = _openvino
    return found


def _timed(run, x: np.ndarray, n: int) -> list[float]:
    """n calls, each one's wall time in ms."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def measure(run, x: np.ndarray, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        run(x)
    return {**_figures(_timed(run, x, runs)), "runs": runs, "warmup": warmup, "batch": 1}


def _figures(times) -> dict:
    t = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3),
            "mean_ms": round(float(t.mean()), 3),
            "min_ms": round(float(t.min()), 3),   # the least disturbed call: on a busy machine, the steadiest figure
            "throughput_ips": round(1000.0 / float(t.mean()), 2)}


BLOCK = 10   # calls of one model in a row when two are timed in turn
SETTLE_S = 0.1   # uncounted calls lead each block for at least this long


def _block(run, x: np.ndarray, n: int) -> list[float]:
    """n timed calls (ms) after uncounted ones for SETTLE_S (one at least): when two models take turns, the
    other one's ONNX Runtime worker threads keep spinning after its last call, and slowed this model's next
    calls for some 30 ms (measured on bench, two threads: int8 calls 2-6 of a block 7.2-9.8 ms, then 5.6)."""
    start = time.perf_counter()
    run(x)
    while time.perf_counter() - start < SETTLE_S:
        run(x)
    return _timed(run, x, n)


def measure_against(run, run_float, x: np.ndarray, runs: int, warmup: int) -> tuple[dict, dict]:
    """The artifact and the float model it came from, timed in turn (same input, same threads): blocks of
    BLOCK calls each, so a machine that gets busier during the run slows both alike. Each block starts with
    uncounted calls (_block): ONNX Runtime's worker threads spin for a while after a run,
    and call for call they slowed the other model by up to 1.9x (measured: bench fp32 9.4 ms alone, 17.1 ms
    alternating)."""
    _block(run, x, warmup)
    _block(run_float, x, warmup)
    built, floats = [], []
    while len(built) < runs:
        for f, into in ((run, built), (run_float, floats)):
            into += _block(f, x, min(BLOCK, runs - len(into)))
    return ({**_figures(built), "runs": runs, "warmup": warmup, "batch": 1},
            {**_figures(floats), "runs": runs})


def _float_runner(opener, float_model: Path | None, threads: int, x: np.ndarray):
    """The float model's runner where it takes the artifact's input as is (a model with the preprocessing
    folded in takes pixels the float ONNX does not), else None: then the artifact is timed alone."""
    if opener is None:
        return None
    try:
        run, _, _ = opener(float_model, threads)
        run(x)
        return run
    except Exception:   # noqa: BLE001  (another input type or layout: nothing to compare in turn)
        return None


def benchmark_deploy(deploy_dir: Path, runs: int = 30, warmup: int = 5, threads: int = 0,
                     only: tuple[str, ...] | None = None, float_model: Path | None = None) -> dict:
    """{"machine": ..., "runtimes": {name: figures}} for the deploy folder's artifact; with `float_model` (the
    float ONNX a quantized artifact came from) each runtime that opens both times them in turn and adds
    "float": {its figures} and "vs_float": p50 ratio."""
    spec = json.loads((deploy_dir / "deploy.json").read_text())
    model = deploy_dir / spec["model"]["file"]
    x = _input(spec)
    float_runners = runtimes_for(float_model) if float_model is not None else {}
    results = {}
    for name, opener in runtimes_for(model).items():
        if only and name not in only:
            continue
        try:
            run, used, what = opener(model, threads)
            run_float = _float_runner(float_runners.get(name), float_model, threads, x)
            if run_float is not None:
                figures, floats = measure_against(run, run_float, x, runs, warmup)
                figures.update(float=floats, vs_float=round(figures["p50_ms"] / floats["p50_ms"], 3))
            else:
                figures = measure(run, x, runs, warmup)
            results[name] = {**figures, "threads": used, "runtime": what}
        except Exception as exc:   # one runtime refusing the artifact does not hide the others' figures
            results[name] = {"error": f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"}
    return {"model": spec["model"]["file"], "precision": spec["model"].get("precision"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "system": platform.system()},
            "runtimes": results}
