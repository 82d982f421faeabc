"""OpenVINO's steps: compile (ONNX -> IR, int8 through NNCF, then the probe run) and simulate (the CPU plugin).

compile ends by running the probe images on the model.xml + model.bin it has just written, read back
from disk as an application reads them, so the IR that parity and mAP judge is the IR that ships.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...context import OpContext
from ...errors import ToolchainError, UserError, one_line
from ...runtime.arrays import load_npz
from ...runtime.probe import probe_outputs, save_outputs

PRECISIONS = ("fp32", "fp16", "int8")


def _check_params(params: dict) -> None:
    layout = params.get("input_layout", "nchw_float32")
    if layout != "nchw_float32":
        raise UserError(f"target.input_layout: {layout!r} is not supported by the openvino toolchain; "
                        "allowed: nchw_float32")
    if params.get("precision") not in PRECISIONS:
        raise UserError(f"precision: {params.get('precision')!r} is not supported by openvino; "
                        f"allowed: {', '.join(PRECISIONS)}")


def _static_batch(model) -> int:
    if len(model.inputs) != 1:
        raise ToolchainError(f"openvino: expected one model input, found {[i.get_any_name() for i in model.inputs]}")
    shape = model.inputs[0].get_partial_shape()
    return shape[0].get_length() if shape.rank.is_static and shape[0].is_static else 1


def _convert(src: Path):
    import openvino as ov

    try:
        return ov.convert_model(str(src))
    except Exception as exc:
        raise ToolchainError(f"openvino: convert_model cannot read {src.name}: {one_line(exc)}") from None


def compile(ctx: OpContext) -> None:  # noqa: A001 - the toolchain interface's name
    import openvino as ov

    p = ctx.params
    _check_params(p)
    src = Path(ctx.inputs["model"])
    xml, weights = Path(ctx.outputs["model.xml"]), Path(ctx.outputs["model.bin"])
    xml.parent.mkdir(parents=True, exist_ok=True)
    model = _convert(src)
    results: dict = {"openvino": ov.__version__, "precision": p["precision"]}
    if p["precision"] == "int8":
        from .quantization import quantize

        if "calib" not in ctx.inputs:
            raise ToolchainError("openvino: int8 compile needs the calibration set (no calib input)")
        canvases = load_npz(ctx.inputs["calib"])["images"]
        model, stats = quantize(model, canvases, float(p.get("scale", 1 / 255.0)), _static_batch(model),
                                p["options"])
        results.update(stats)
    # fp16: weights stored as float16 and widened by the plugin; int8: what NNCF left in float stays fp32
    try:
        ov.save_model(model, str(xml), compress_to_fp16=p["precision"] == "fp16")
    except Exception as exc:
        raise ToolchainError(f"openvino: save_model failed: {one_line(exc)}") from None
    saved = xml.with_suffix(".bin")
    if saved != weights:   # save_model names the weights after the xml
        saved.replace(weights)
    if not weights.is_file():
        raise ToolchainError("openvino: save_model wrote no model.bin")
    results.update({"ops": len(model.get_ops()), "bin_bytes": weights.stat().st_size,
                    "inputs": {i.get_any_name(): str(i.get_partial_shape()) for i in model.inputs},
                    "outputs": {o.get_any_name(): str(o.get_partial_shape()) for o in model.outputs}})
    ctx.results.update(results)
    if "probe" in ctx.inputs and "outputs.npz" in ctx.outputs:
        _run_probe(ctx, xml, weights)


def _read_ir(xml: Path, weights: Path):
    import openvino as ov

    for path in (xml, weights):
        if not path.is_file():
            raise ToolchainError(f"openvino: {path.name} is missing (an IR is model.xml with model.bin beside it)")
    try:
        return ov.Core().read_model(str(xml), str(weights))
    except Exception as exc:
        raise ToolchainError(f"openvino: cannot read the IR {xml.name} + {weights.name}: {one_line(exc)}") from None


def _run_probe(ctx: OpContext, xml: Path, weights: Path) -> None:
    """The IR on OpenVINO's CPU plugin over the probe canvases -> outputs.npz (names in model order)."""
    import openvino as ov

    p = ctx.params
    probe = load_npz(ctx.inputs["probe"])
    canvases = probe["images"]
    scale = float(p.get("scale", probe.get("input_scale", 1 / 255.0)))
    model = _read_ir(xml, weights)
    batch = _static_batch(model)
    shape = model.inputs[0].get_partial_shape()
    h, w = canvases.shape[1:3]
    if shape.rank.is_static and len(shape) == 4 and shape[2].is_static and shape[3].is_static \
            and (shape[2].get_length(), shape[3].get_length()) != (h, w):
        raise ToolchainError(f"openvino: the model takes {shape[2]}x{shape[3]} input, the probe images are {h}x{w}")
    precision = p["options"]["inference_precision"]
    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    except Exception as exc:
        raise ToolchainError(f"openvino: the CPU plugin cannot compile {xml.name}: {one_line(exc)}") from None
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def infer(x):
        request.infer({0: x})
        return [np.array(request.get_output_tensor(k).data) for k in range(len(names))]

    arrays = probe_outputs(canvases, scale, batch, names, infer, "openvino", ctx.progress)
    save_outputs(ctx.outputs["outputs.npz"], names, arrays)
    ctx.results.update({"images": int(len(canvases)), "device": "CPU", "inference_precision": precision,
                        "outputs_shapes": {n: list(a.shape) for n, a in arrays.items()}})


def simulate(ctx: OpContext) -> None:
    """The IR (input `model`, its weights as input `weights` or beside it) on the probe images."""
    _check_params(ctx.params)
    xml = Path(ctx.inputs["model"])
    weights = Path(ctx.inputs["weights"]) if "weights" in ctx.inputs else xml.with_suffix(".bin")
    _run_probe(ctx, xml, weights)


def layer_error(ctx: OpContext) -> None:
    """Cosine and SQNR of every op's output, the int8 IR against the float model converted from the same
    ONNX; names are OpenVINO op names (what keep_float and ignored_scope names take)."""
    from ...runtime.layer_error import write
    from .layers import layer_errors
    from .quantization import head_ops

    p = ctx.params
    _check_params(p)
    opts = p["options"]
    float_model = _convert(Path(ctx.inputs["source"]))
    xml = Path(ctx.inputs["built"])
    quantized = _read_ir(xml, Path(ctx.inputs["also:model.bin"]) if "also:model.bin" in ctx.inputs
                         else xml.with_suffix(".bin"))
    kept = set(head_ops(float_model) if opts["fp32_head"] else ()) | set(opts["ignored_scope"]["names"]) \
        | set(opts.get("keep_float") or ())
    probe = load_npz(ctx.inputs["probe"])
    canvases = probe["images"][:max(1, int(p.get("count", 4)))]
    doc = layer_errors(float_model, quantized, canvases, float(p.get("scale", probe.get("input_scale", 1 / 255.0))),
                       _static_batch(float_model), kept, opts["inference_precision"])
    write(ctx.outputs["layers.json"], doc)
    ctx.results["accuracy"] = {"method": doc["method"], "images": doc["images"], "layers": len(doc["layers"]),
                               "worst": doc["worst"][:5]}
