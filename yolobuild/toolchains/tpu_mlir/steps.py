"""Sophgo TPU-MLIR 1.30.2 (bm1684x bm1688 bm1684): compile a .bmodel, run it on the cmodel emulator.

Host side only: prepares the inputs (the network's float input, exactly as PyTorch sees it, as
.npz files for calibration, the step checks and the emulator), then runs tpu_mlir_worker.py inside
the isolated tpu-mlir environment (Python 3.10, see toolchain.yaml), which runs
model_transform -> run_calibration -> model_deploy (compile) and model_runner (simulate), each in
its own work folder.

The environment's install fix-ups are in environment.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...context import OpContext
from ...errors import CheckFailed, UserError
from ...runtime.arrays import canvas_to_input, load_npz, save_npz
from .. import calibration
from ..envs import call_in_env, env_dir, find_spec

# precision -> model_deploy --quantize; w8a16 is W8F16 (int8 weights, float16 activations: no calibration
# table). Which chip has which is its target YAML's `precisions`; TPU-MLIR 1.30 has no INT16 mode.
QUANTIZE = {"fp32": "F32", "fp16": "F16", "int8": "INT8", "w8a16": "W8F16"}
NO_F16 = ("bm1684",)            # chips without F16: a quantize_table keeps layers in F32 there

# dataset.preprocess -> model_transform's preprocessing flags, one table. yolobuild feeds the emulator
# and calibration the network's float input (.npz), so these flags only describe the model's input in
# the MLIR/bmodel (what a deployment's --fuse_preprocess or a jpg --test_input would apply).
PREPROCESS_FLAGS = {
    "color": {"rgb": ("--pixel_format", "rgb"), "bgr": ("--pixel_format", "bgr")},
    "resize": {"letterbox": ("--keep_aspect_ratio",), "stretch": ()},
}


def _options(params: dict) -> dict:
    """The options, complete and checked at validate (the chip's core count: its target YAML's option_choices)."""
    return params["options"]


def _preprocess_flags(p: dict) -> list[str]:
    flags = []
    for key, table in PREPROCESS_FLAGS.items():
        value = p.get(key, "rgb" if key == "color" else "letterbox")
        if value not in table:
            raise UserError(f"dataset.preprocess.{key}: {value!r} is not supported by tpu-mlir; "
                            f"allowed: {', '.join(table)}")
        flags += table[value]
    return flags


def _request(ctx: OpContext) -> dict:
    p = ctx.params
    if p["input_layout"] != "nchw_float32":
        raise UserError(f"target.input_layout: tpu-mlir runs nchw_float32 inputs, not {p['input_layout']}")
    platform = str(p["platform"]).lower()
    if p["precision"] not in QUANTIZE or (p["precision"] in ("fp16", "w8a16") and platform in NO_F16):
        raise UserError(f"precision: {p['precision']!r} is not supported by tpu-mlir on {platform}")
    opts = _options(p)
    scale = round(float(p["scale"]), 7)
    return {"platform": platform, "precision": p["precision"], "quantize": QUANTIZE[p["precision"]],
            "height": int(p["height"]), "width": int(p["width"]),
            "mean": [0.0, 0.0, 0.0], "scale": [scale, scale, scale], "preprocess_flags": _preprocess_flags(p),
            "keep_dtype": "F32" if platform in NO_F16 else "F16", **opts}


def _lock(ctx: OpContext) -> str:
    """The cmodel lock, inside the environment folder: runs for different chips re-point shared links."""
    return str(env_dir(find_spec("tpu-mlir")) / "cmodel.lock")


def _inputs_npz(canvases: np.ndarray, scale: float, folder: Path, name: str = "input") -> list[str]:
    """One .npz per image holding the float network input under the ONNX input's name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, canvas in enumerate(canvases):
        path = folder / f"{i:05d}.npz"
        np.savez(path, **{name: canvas_to_input(canvas, scale)})
        paths.append(str(path))
    return paths


def _onnx_input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def _quantize_request(ctx: OpContext, onnx_path: Path, work: Path) -> dict:
    """The request compile and layer_error share: calibration inputs (int8) and the step checks' test input."""
    req = _request(ctx)
    scale = float(ctx.params["scale"])
    input_name = _onnx_input_name(onnx_path)
    if "calib" in ctx.inputs:
        canvases = load_npz(ctx.inputs["calib"])["images"]
        if req["quantize"] == "INT8":
            req["calib"] = _inputs_npz(canvases, scale, ctx.scratch / "calib", input_name)
        test = canvases[:1]
    else:  # the step checks need one real-looking image; a mid-grey canvas keeps compile free of probe inputs
        test = np.full((1, req["height"], req["width"], 3), 114, dtype=np.uint8)
    req["test_input"] = _inputs_npz(test, scale, ctx.scratch / "test", input_name)[0]
    req.update(onnx=str(onnx_path), work=str(work), lock=_lock(ctx), input_name=input_name)
    return req


def _call(ctx: OpContext, function: str, req: dict) -> dict:
    return calibration.call_worker(ctx, "tpu-mlir", f"yolobuild.toolchains.tpu_mlir.worker:{function}", req)


def compile(ctx: OpContext) -> None:
    req = _quantize_request(ctx, Path(ctx.inputs["model"]), ctx.scratch / "tpu-mlir")
    req["out"] = str(ctx.outputs["model.bmodel"])
    result = _call(ctx, "compile", req)
    steps = result["steps"]
    ctx.results["steps"] = steps
    ctx.results["compile"] = {"bytes": result["bytes"], "seconds_in_toolkit": result["_seconds"],
                              "step_seconds": result["step_seconds"], "outputs": result["outputs"],
                              "quantize_table": result.get("quantize_table", []),
                              **{k: req[k] for k in ("platform", "quantize", "num_core", "asymmetric")}}
    calibrated = req["quantize"] in ("INT8", "W8F16")
    threshold = float(req["tolerance"]) if calibrated else 0.99
    low = {name: c for name, c in steps["bmodel_vs_top"]["cosine"].items() if not c >= threshold}
    if low:
        worst = min(low, key=low.get)
        hint = ("; keys that may help: backend.options.quantize_table (keep layers in higher precision, e.g. head), "
                "more calibration images (dataset.calib.count), backend.options.calibration_method"
                if calibrated else "")
        raise CheckFailed(f"compile: bmodel output {worst} cosine {low[worst]:.6f} vs the top MLIR is below "
                          f"the tolerance {threshold} (backend.options.tolerance){hint}; "
                          f"top MLIR vs ONNX: min cosine {min(steps['top_vs_onnx']['cosine'].values()):.6f}")


def simulate(ctx: OpContext) -> None:
    req = _request(ctx)
    probe = load_npz(ctx.inputs["probe"])
    images = ctx.scratch / "probe_inputs.npy"
    np.save(images, canvas_to_input(probe["images"], float(ctx.params["scale"])))
    out_dir = ctx.scratch / "sim"
    out_dir.mkdir(parents=True, exist_ok=True)
    import onnx

    graph = onnx.load(str(ctx.inputs["source"]), load_external_data=False).graph
    req.update(model=str(ctx.inputs["model"]), images=str(images), out_dir=str(out_dir), work=str(ctx.scratch / "run"),
               lock=_lock(ctx), input_name=_onnx_input_name(ctx.inputs["source"]), names=[o.name for o in graph.output])
    result = call_in_env(ctx, "tpu-mlir", "yolobuild.toolchains.tpu_mlir.worker:simulate", req)
    names = result["outputs"]
    arrays = {n: np.load(out_dir / f"{i}.npy") for i, n in enumerate(names)}
    save_npz(ctx.outputs["outputs.npz"], __names__=np.array(names), **arrays)
    ctx.results["simulate"] = {"images": result["images"], "seconds_in_toolkit": result["_seconds"],
                               "bmodel_outputs": result["bmodel_outputs"]}


def layer_error(ctx: OpContext) -> None:
    """Per-layer error with TPU-MLIR's own tools: the top (float) MLIR against the quantized tpu MLIR that
    model_deploy lowers with the same calibration and quantize table as compile, both run by TPU-MLIR's
    MLIR interpreter with every tensor dumped on the first `count` probe inputs (the bmodel itself runs
    only as a whole on the emulator). Layer names are top-MLIR op names, as --quantize_table takes them."""
    from ...runtime.layer_error import write

    req = _quantize_request(ctx, Path(ctx.inputs["source"]), ctx.scratch / "tpu-mlir")
    probe = load_npz(ctx.inputs["probe"])
    images = ctx.scratch / "probe_inputs.npy"
    np.save(images, canvas_to_input(probe["images"][:max(1, int(ctx.params.get("count", 4)))],
                                    float(ctx.params["scale"])))
    req["images"] = str(images)
    result = _call(ctx, "layer_error", req)
    doc = result["doc"]
    write(ctx.outputs["layers.json"], doc)
    ctx.results["accuracy"] = {"method": doc["method"], "images": doc["images"], "layers": len(doc["layers"]),
                               "worst": doc["worst"][:5], "step_seconds": result["step_seconds"]}
