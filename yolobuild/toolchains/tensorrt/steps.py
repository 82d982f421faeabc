"""The TensorRT steps: quantize (host, ONNX Runtime's Q/DQ quantizer held to TensorRT's rules), compile
(a serialized engine on the GPU) and simulate (that engine, through TensorRT's runtime, on the probe images).

Why int8 comes from a Q/DQ ONNX and not a TensorRT calibrator: implicit quantization (IInt8Calibrator) is
deprecated in TensorRT 10 and runs only on the GPU, while the Q/DQ model is made on any machine, is checked
against TensorRT's parser rules before a GPU is involved, is cached apart from the engine (rebuilding the
engine with another workspace or optimization level reuses the scales), and uses the same calibration code
and knobs as the onnxruntime target.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path


from ...context import OpContext
from ...errors import ToolchainError, UserError
from ...runtime.arrays import load_npz
from ...runtime.probe import probe_outputs, save_outputs
from . import builder, qdq, vendor
from .execution import EngineRunner
from .logger import file_logger

# tensorrt's quantize options, handed to ONNX Runtime's quantizer under the same names
QUANTIZER_OPTIONS = ("calibrate_method", "percentile", "num_bins", "keep_float")
# what TensorRT's Q/DQ import needs whatever the user asks: per-channel weights, full int8 range; TensorRT
# picks its own kernels, so none of ONNX Runtime's CPU speed choices (a float stem, shared Concat ranges)
QUANTIZER_FIXED = {"per_channel": True, "reduce_range": False, "pre_process": True, "fp32_stem": False,
                   "shared_scales": False}


def _input_layout(params: dict) -> None:
    layout = params.get("input_layout", "nchw_float32")
    if layout != "nchw_float32":
        raise UserError(f"target.input_layout: {layout!r} is not supported by the tensorrt toolchain; "
                        "allowed: nchw_float32")


def _onnxruntime_quantize():
    """ONNX Runtime's quantize step, asked for symmetric int8 activations and float biases."""
    from ..onnxruntime import steps as onnxruntime_steps

    quantize = onnxruntime_steps.quantize
    wanted = {"symmetric_activations", "quantize_bias"}
    if not wanted <= set(inspect.signature(quantize).parameters):
        raise ToolchainError("tensorrt: int8 needs the onnxruntime toolchain's quantize to take symmetric_activations "
                             "and quantize_bias (TensorRT's Q/DQ rules); this yolobuild's does not")
    return quantize


def _onnxruntime_options(options: dict) -> dict:
    """The onnxruntime quantizer's complete option set: its declared defaults, then tensorrt's choices."""
    from ..registry import get

    return {**get("onnxruntime").option_defaults(), **QUANTIZER_FIXED, **{k: options[k] for k in QUANTIZER_OPTIONS},
            "fp32_head": bool(options["float_head"])}


def quantize(ctx: OpContext) -> None:
    """The Q/DQ model compile reads. Runs on the CPU, but asks for the GPU first: without one the build
    cannot finish, and the user should hear that, not wait for calibration."""
    p = ctx.params
    vendor.require_gpus()
    _input_layout(p)
    if p.get("precision") != "int8":
        raise UserError(f"precision: {p.get('precision')!r} is not quantized by the tensorrt toolchain; allowed: int8")
    onnxruntime_quantize = _onnxruntime_quantize()
    inner = dataclasses.replace(ctx, params={**p, "options": _onnxruntime_options(p["options"])})
    onnxruntime_quantize(inner, symmetric_activations=True, quantize_bias=False)
    counts, problems = qdq.check(Path(ctx.outputs["model.onnx"]))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ToolchainError(f"tensorrt: the quantized model breaks TensorRT's Q/DQ rules: {problems[0]}{more}")
    ctx.results.update({"qdq": "symmetric int8, float biases", **counts})


def _output_names(onnx_path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]


def compile(ctx: OpContext) -> None:  # noqa: A001 - the toolchain interface's name
    p = ctx.params
    gpus = vendor.require_gpus()   # before anything else: a machine without one learns it in one line
    _input_layout(p)
    options = p["options"]
    target = vendor.pick_gpu(gpus, int(options["device"]))
    src = Path(ctx.inputs["model"])
    counts, problems = qdq.check(src)
    if p["precision"] == "int8" and not counts["QuantizeLinear"]:
        raise ToolchainError(f"tensorrt: int8 needs a Q/DQ model and {src.name} has no QuantizeLinear node "
                             "(TensorRT would build a float engine and call it int8)")
    if problems:
        raise ToolchainError(f"tensorrt: {src.name} breaks TensorRT's Q/DQ rules: {problems[0]}")
    trt = vendor.load_tensorrt()
    vendor.load_cudart()   # simulate needs it: say so now, not after the build
    logger = file_logger(trt, Path(ctx.log_file))
    try:
        built = builder.build(trt, logger, src, Path(ctx.outputs["model.engine"]), precision=p["precision"],
                              options=options, height=int(p["height"]), width=int(p["width"]))
    finally:
        logger.close()
    expected = _output_names(src)
    if sorted(built["outputs"]) != sorted(expected):
        raise ToolchainError(f"tensorrt: the engine's outputs {built['outputs']} are not the model's {expected}")
    ctx.results.update({**built, "precision": p["precision"], "gpu": target.name,
                        "compute_capability": target.compute_capability,
                        "note": "an engine runs only on this GPU model with this TensorRT version"})


def _model_order(engine: EngineRunner, source: Path | None) -> list[str]:
    """Output names in the ONNX model's order (decoding reads raw levels by position); engine order without it."""
    in_engine = [t.name for t in engine.tensors if not t.is_input]
    if source is None:
        return in_engine
    names = _output_names(Path(source))
    if sorted(names) != sorted(in_engine):
        raise ToolchainError(f"tensorrt: the engine's outputs {in_engine} are not the model's {names}")
    return names


def simulate(ctx: OpContext) -> None:
    """The built engine's raw outputs on the probe canvases, in outputs.npz, names in the model's order.

    A step apart from compile (reading the very model.engine that ships) so that changing the probe or
    evaluation images re-runs seconds of inference, not minutes of tactic timing."""
    p = ctx.params
    gpus = vendor.require_gpus()
    _input_layout(p)
    options = p["options"]
    target = vendor.pick_gpu(gpus, int(options["device"]))
    trt, cudart = vendor.load_tensorrt(), vendor.load_cudart()
    probe = load_npz(ctx.inputs["probe"])
    canvases = probe["images"]
    scale = float(p.get("scale", probe.get("input_scale", 1 / 255.0)))
    h, w = canvases.shape[1:3]
    logger = file_logger(trt, Path(ctx.log_file))
    try:
        with EngineRunner(trt, cudart, Path(ctx.inputs["model"]).read_bytes(), logger, device=int(options["device"]),
                          input_shape=(1, 3, h, w)) as engine:
            shape = engine.input.shape
            if tuple(shape[2:]) != (h, w):
                raise ToolchainError(f"tensorrt: the engine takes {shape[2]}x{shape[3]} input, "
                                     f"the probe images are {h}x{w}")
            batch = shape[0]
            names = _model_order(engine, ctx.inputs.get("source"))
            arrays = probe_outputs(canvases, scale, batch, names,
                                   lambda x: [engine.run(x)[n] for n in names], "tensorrt", ctx.progress)
    finally:
        logger.close()
    save_outputs(ctx.outputs["outputs.npz"], names, arrays)
    ctx.results.update({"images": int(len(canvases)), "gpu": target.name, "tensorrt": trt.__version__,
                        "outputs": {n: list(a.shape) for n, a in arrays.items()}})
