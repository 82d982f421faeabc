"""Rockchip RKNN-Toolkit2 (rk3588 rk3576 rk3568 rk3566 rk3562 rv1106): compile + PC simulator.

Host side only: prepares the inputs (the calibration list as .npy files of the exact letterboxed
canvases, so the toolkit applies nothing but the recipe's mean/std), then runs
worker.py inside the isolated rknn-toolkit2 environment, which builds, exports and
simulates in one session.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...context import OpContext
from ...errors import UserError
from ...runtime.arrays import load_npz, save_npz
from ..envs import call_in_env


def _request(ctx: OpContext, onnx_path: Path) -> dict:
    p = ctx.params
    if p["input_layout"] != "nhwc_uint8":
        raise UserError(f"target.input_layout: rknn-toolkit2 runs nhwc_uint8 inputs, not {p['input_layout']}")
    std = round(1.0 / float(p["scale"]), 6)
    req = {"onnx": str(onnx_path), "platform": p["platform"], "precision": p["precision"],
           "mean": [0.0, 0.0, 0.0], "std": [std, std, std], "quantized_dtype": "w8a8", **p["options"]}
    if p["precision"] == "int8":
        req["dataset"] = str(_calibration_list(ctx))
    return req


def _calibration_list(ctx: OpContext) -> Path:
    """dataset.txt naming one .npy per calibration canvas (uint8, NCHW, already letterboxed).

    rknn-toolkit2 applies the configured mean/std to .npy entries exactly as to images (measured:
    identical simulator outputs to a PNG list) and reads them ~50x faster than PNGs are written."""
    canvases = load_npz(ctx.inputs["calib"])["images"]          # (n, H, W, 3) uint8
    folder = ctx.scratch / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, canvas in enumerate(canvases):
        path = folder / f"{i:05d}.npy"
        np.save(path, np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]))
        lines.append(str(path))
    listing = ctx.scratch / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def compile(ctx: OpContext) -> None:
    """Build the .rknn and, in the same toolkit session, run the PC simulator on the probe images:
    the simulated model is the shipped one (a second build would differ in ~1k bytes)."""
    req = _request(ctx, ctx.inputs["model"])
    req["out"] = str(ctx.outputs["model.rknn"])
    probe = load_npz(ctx.inputs["probe"])
    images = ctx.scratch / "probe_images.npy"
    np.save(images, probe["images"])
    out_dir = ctx.scratch / "sim"
    out_dir.mkdir(parents=True, exist_ok=True)
    req.update(images=str(images), out_dir=str(out_dir))
    result = call_in_env(ctx, "rknn-toolkit2", "yolobuild.toolchains.rknn2.worker:compile_and_simulate", req)
    names = result["outputs"]
    arrays = {n: np.load(out_dir / f"{i}.npy") for i, n in enumerate(names)}
    save_npz(ctx.outputs["outputs.npz"], __names__=np.array(names), **arrays)
    ctx.results["compile"] = {
        "bytes": result["bytes"], "seconds_in_toolkit": result["_seconds"], "toolkit_window": result["_window"],
        "seconds_building": result["seconds_building"], "seconds_simulating": result["seconds_simulating"],
        "simulated_images": result["images"],
        **{k: req[k] for k in ("platform", "precision", "quantized_algorithm", "quantized_method")}}
