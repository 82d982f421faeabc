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
from .. import calibration

# precision -> rknn-toolkit2's config(quantized_dtype=...); fp16 is a build without quantization. Which chip
# takes which dtype is the target YAML's `precisions` (config() refuses w8a16 on all but rk3562).
QUANTIZED_DTYPE = {"int8": "w8a8", "w8a16": "w8a16", "int16": "w16a16i_dfp"}


# accuracy_analysis dumps every layer of the float and the simulated model as text: some 270 MB and 25 s of
# reading per 320x320 image on an idle core, so the per-layer figures come from the first two probe images
ANALYSIS_IMAGES = 2


def _request(ctx: OpContext, onnx_path: Path) -> dict:
    p = ctx.params
    if p["input_layout"] != "nhwc_uint8":
        raise UserError(f"target.input_layout: rknn-toolkit2 runs nhwc_uint8 inputs, not {p['input_layout']}")
    if p["precision"] not in (*QUANTIZED_DTYPE, "fp16"):
        raise UserError(f"precision: {p['precision']!r} is not supported by rknn-toolkit2; "
                        f"allowed: fp16, {', '.join(QUANTIZED_DTYPE)}")
    std = round(1.0 / float(p["scale"]), 6)
    req = {"onnx": str(onnx_path), "platform": p["platform"], "precision": p["precision"],
           "mean": [0.0, 0.0, 0.0], "std": [std, std, std], **p["options"],
           "quantized_dtype": QUANTIZED_DTYPE.get(p["precision"], "w8a8"), "dataset": None}
    if p["precision"] in QUANTIZED_DTYPE:
        _check_keep_float(req["keep_float"], onnx_path)
        req["dataset"] = str(_calibration_list(ctx))
    return req


def _check_keep_float(names, onnx_path: Path) -> None:
    """keep_float names are tensors of the model (as layer_error reports them): one line for any other."""
    if not names:
        return
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    tensors = {out for node in graph.node for out in node.output}
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise UserError(f"backend.options.keep_float: {', '.join(unknown[:3])} is not a layer of this model; "
                        "names are the tensors rknn-toolkit2's layer_error reports (layers.json), e.g. "
                        "/model.22/cv3.2/cv3.2.2/Conv_output_0")


def _call(ctx: OpContext, function: str, req: dict) -> dict:
    return calibration.call_worker(ctx, "rknn-toolkit2", f"yolobuild.toolchains.rknn2.worker:{function}", req)


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
    result = _call(ctx, "compile_and_simulate", req)
    names = result["outputs"]
    arrays = {n: np.load(out_dir / f"{i}.npy") for i, n in enumerate(names)}
    save_npz(ctx.outputs["outputs.npz"], __names__=np.array(names), **arrays)
    ctx.results["compile"] = {
        "bytes": result["bytes"], "seconds_in_toolkit": result["_seconds"], "toolkit_window": result["_window"],
        "seconds_building": result["seconds_building"], "seconds_simulating": result["seconds_simulating"],
        "simulated_images": result["images"], "float_layers": result.get("float_layers", 0),
        **{k: req[k] for k in ("platform", "precision", "quantized_dtype", "quantized_algorithm", "quantized_method")}}


def layer_error(ctx: OpContext) -> None:
    """Per-layer error with rknn-toolkit2's own accuracy_analysis. The PC simulator runs only in the session
    that built the model, so the worker builds it again exactly as compile does (same request, same
    calibration list) and analyses that build on the first `count` probe images (ANALYSIS_IMAGES at most),
    one at a time (each image's dumps are written to the op's scratch and deleted once read)."""
    from ...runtime.layer_error import write

    req = _request(ctx, ctx.inputs["source"])
    probe = load_npz(ctx.inputs["probe"])
    folder = ctx.scratch / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(probe["images"][:max(1, min(ANALYSIS_IMAGES, int(ctx.params.get("count", 4))))]):
        np.save(folder / f"{i:05d}.npy", np.ascontiguousarray(image.transpose(2, 0, 1)[None]))
    req.update(images_dir=str(folder), work=str(ctx.scratch / "analysis"))
    result = _call(ctx, "layer_error", req)
    doc = result["doc"]
    write(ctx.outputs["layers.json"], doc)
    ctx.results["accuracy"] = {"method": doc["method"], "images": doc["images"], "layers": len(doc["layers"]),
                               "worst": doc["worst"][:5], "seconds_in_toolkit": result["_seconds"]}
