"""ONNX Runtime on the host CPU: static QDQ int8 quantization, an optimized model, and its outputs.

The calibration reader, the simulator and the PyTorch reference all build the network input
with `runtime.arrays.canvas_to_input` from the same letterboxed uint8 canvases.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...context import OpContext
from ...errors import ToolchainError, UserError, one_line
from ...runtime.arrays import canvas_to_input, load_npz
from ...runtime.probe import probe_outputs, save_outputs
from ...runtime.quiet import quiet

def _session(model, optimization: str = "all", optimized_path: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ToolchainError(f"onnxruntime: cannot load {Path(model).name}: {one_line(exc)}") from None


def _input_layout(params: dict) -> str:
    layout = params.get("input_layout", "nchw_float32")
    if layout != "nchw_float32":
        raise UserError(f"target.input_layout: {layout!r} is not supported by the onnxruntime toolchain; "
                        "allowed: nchw_float32")
    return layout


class _CalibReader:
    """quantize_static's CalibrationDataReader over the calib.npz canvases, one image per batch; each
    batch handed out is reported to `progress` as "calibration images" done of all."""

    def __init__(self, canvases: np.ndarray, input_name: str, scale: float, batch: int, progress=None):
        self.canvases, self.input_name, self.scale, self.batch = canvases, input_name, scale, batch
        self.progress = progress
        self.i = 0

    def get_next(self):
        if self.i >= len(self.canvases):
            return None
        chunk = self.canvases[self.i:self.i + self.batch]
        self.i += self.batch
        x = canvas_to_input(chunk, self.scale)
        if self.progress is not None:
            self.progress(min(self.i, len(self.canvases)), len(self.canvases), "calibration images")
        if len(x) < self.batch:  # fixed-batch model: repeat the last image
            x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(x), 0)], 0)
        return {self.input_name: x}

    def rewind(self):
        self.i = 0


def _input_info(model_path: Path) -> tuple[str, list]:
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in init]
    if len(inputs) != 1:
        raise ToolchainError(f"onnxruntime: expected one graph input, found {[v.name for v in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def _prepared(src: Path, opts: dict, scratch: Path, log=print) -> tuple[Path, bool, list[str]]:
    """The float model quantize_static is handed (pre-processed, every node named) and the nodes it keeps
    in float (the head with fp32_head, then backend.options.keep_float). layer_error prepares the source the
    same way, so the names it reports are the names keep_float takes."""
    model_in, pre_processed = src, False
    if opts["pre_process"]:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = scratch / "model.pre.onnx"
        try:
            with quiet():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            model_in, pre_processed = pre, True
        except Exception as exc:  # pre-processing is an aid; quantize the exported model as is
            log(f"quantize: quant_pre_process skipped ({one_line(exc, 120)})")
    named = scratch / "model.named.onnx"
    head = _head_nodes(model_in, named)
    excluded = list(head) if opts["fp32_head"] else []
    keep = list(opts.get("keep_float") or ())
    if keep or opts.get("fp32_stem"):
        import onnx

        graph = onnx.load(str(named), load_external_data=False).graph
    if opts.get("fp32_stem"):
        excluded += [name for name in _float_scope(graph, _stem_nodes(graph)) if name not in excluded]
    if keep:
        known = {n.name for n in graph.node}
        unknown = [name for name in keep if name not in known]
        if unknown:
            raise UserError(f"backend.options.keep_float: {unknown[0]!r} is not a node of this model "
                            f"({len(unknown)} unknown); use the names the build's layers.json reports")
        excluded += [name for name in _float_scope(graph, keep) if name not in excluded]
    return named, pre_processed, excluded


def _float_scope(graph, keep: list[str]) -> list[str]:
    """The nodes to exclude so each kept layer's output stays float: QDQ quantizes tensors where a quantized
    node reads them, so the layer and every node reading its output are excluded (their other inputs stay
    quantized)."""
    outputs = {n.name: set(n.output) for n in graph.node}
    wanted = {t for name in keep for t in outputs[name]}
    readers = [n.name for n in graph.node if wanted & set(n.input)]
    return list(dict.fromkeys(list(keep) + readers))


def _stem_nodes(graph) -> list[str]:
    """The convolutions that read the network input (the stem). Kept in float, ONNX Runtime runs them in its
    NCHWc float kernels: its int8 convolution is slower than float on three input channels (measured on bench,
    YOLOv8n 320: 436 against 178 us on two threads), and the image then needs no uint8 copy."""
    inputs = {v.name for v in graph.input} - {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def _head_nodes(model_path: Path, out_path: Path) -> list[str]:
    """Names of the nodes from the last Conv before each graph output to that output (the detection head).

    One activation scale per output tensor is what costs YOLO int8 most: a raw level packs box, objectness
    and class logits into one tensor, a decoded head packs pixels and probabilities. Unnamed nodes get names
    (written to out_path) so they can be excluded.
    """
    import onnx

    proto = onnx.load(str(model_path))
    g = proto.graph
    for i, node in enumerate(g.node):
        if not node.name:
            node.name = f"yolobuild_node_{i}"
    producer = {o: n for n in g.node for o in n.output}
    seen: dict[str, None] = {}
    stack = [o.name for o in g.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen[node.name] = None
        if node.op_type != "Conv":
            stack.extend(node.input)
    onnx.save(proto, str(out_path))
    by_name = {n.name: n for n in g.node}
    if not any(by_name[name].op_type == "Conv" for name in seen):
        return []  # no conv head in front of the outputs: nothing to keep in float
    return list(seen)


def _calibrated_ranges(model: Path, reader, scratch: Path, opts: dict, method, cache: Path) -> dict:
    """Each activation's range from the calibration images, written to `cache` for quantize_static (which then
    skips its own calibration). With shared_scales, the tensors that Concat, Split, Resize and MaxPool join get
    one range, the union of theirs: ONNX Runtime's int8 Concat then copies its inputs' bytes instead of
    requantizing each through a lookup table, pixel by pixel (Split, Resize and MaxPool keep their input's
    scale anyway). -> {"shared_groups": n, "shared_tensors": n}."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    extra = {"entropy": {"num_bins": int(opts["num_bins"]), "num_quantized_bins": 128},
             "percentile": {"percentile": float(opts["percentile"])}}.get(opts["calibrate_method"], {})
    # quantize_static's own entropy calibrator has 128 histogram bins for 128 quantized bins, which leaves one
    # candidate threshold (the full range, i.e. minmax): calibrating here with a finer histogram fixes that too
    calibrator = create_calibrator(Path(model), ops, augmented_model_path=str(scratch / "augmented.onnx"),
                                   calibrate_method=method, extra_options=extra)
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    shared = _share_ranges(model, ranges) if opts.get("shared_scales") else []
    save_tensors_data(ranges, cache)
    return {"shared_groups": len(shared), "shared_tensors": sum(len(g) for g in shared)}


# ops whose inputs and outputs share a scale in the shared_scales option (Concat: all inputs; the others: input 0)
SCALE_JOINING_OPS = ("Concat", "Split", "Resize", "MaxPool")


def _share_ranges(model: Path, ranges) -> list[list[str]]:
    """Give every group of tensors joined through SCALE_JOINING_OPS the union of their ranges (in place)."""
    import onnx
    from onnxruntime.quantization.calibrate import TensorData

    graph = onnx.load(str(model), load_external_data=False).graph
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for node in graph.node:
        if node.op_type in SCALE_JOINING_OPS:
            joined = list(node.input if node.op_type == "Concat" else node.input[:1]) + list(node.output)
            for t in joined[1:]:
                if t in ranges and joined[0] in ranges:
                    parent[root(t)] = root(joined[0])
    groups: dict[str, list[str]] = {}
    for t in parent:
        groups.setdefault(root(t), []).append(t)
    shared = [g for g in groups.values() if len(g) > 1]
    for group in shared:
        low = min(float(np.min(ranges[t].range_value[0])) for t in group)
        high = max(float(np.max(ranges[t].range_value[1])) for t in group)
        for t in group:
            ranges[t] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    return shared


# precision -> (activation bits, weight bits) of the static QDQ model. 16-bit Q/DQ needs opset 21, which
# quantize_static moves the model to by itself (ONNX Runtime's CPU EP runs it).
QDQ_BITS = {"int8": (8, 8), "w8a16": (16, 8), "int16": (16, 16)}


def quantize(ctx: OpContext, *, symmetric_activations: bool = False, quantize_bias: bool = True) -> None:
    """Static QDQ int8. symmetric_activations (int8, zero point 0) and quantize_bias=False (float biases)
    are TensorRT's Q/DQ rules: the tensorrt toolchain's quantize asks for both."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    p = ctx.params
    _input_layout(p)
    if p.get("precision") not in QDQ_BITS:
        raise UserError(f"precision: {p.get('precision')!r} is not supported by onnxruntime quantize; "
                        f"allowed: {', '.join(QDQ_BITS)}")
    act_bits, weight_bits = QDQ_BITS[p["precision"]]
    act_type = {(8, True): QuantType.QInt8, (8, False): QuantType.QUInt8,
                (16, True): QuantType.QInt16, (16, False): QuantType.QUInt16}[(act_bits, symmetric_activations)]
    opts = p["options"]   # complete and checked at validate (toolchain.yaml options)
    src = Path(ctx.inputs["model"])
    calib = load_npz(ctx.inputs["calib"])["images"]
    if not len(calib):
        raise UserError("dataset.calib: the calibration set is empty")
    input_name, dims = _input_info(src)
    batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1
    scratch = Path(ctx.scratch)
    scratch.mkdir(parents=True, exist_ok=True)

    model_in, pre_processed, excluded = _prepared(src, opts, scratch, ctx.log)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts["calibrate_method"]]
    extra = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True, "QuantizeBias": quantize_bias}
    out = Path(ctx.outputs["model.onnx"])
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = _CalibReader(calib, input_name, float(p.get("scale", 1 / 255.0)), batch, ctx.progress)
    cache = scratch / "calibration.json"
    cache.unlink(missing_ok=True)
    try:
        with quiet():
            shared = _calibrated_ranges(model_in, reader, scratch, opts, method, cache)
            quantize_static(str(model_in), str(out), None, quant_format=QuantFormat.QDQ,
                            per_channel=bool(opts["per_channel"]), reduce_range=bool(opts["reduce_range"]),
                            activation_type=act_type,
                            weight_type=QuantType.QInt16 if weight_bits == 16 else QuantType.QInt8,
                            calibrate_method=method, extra_options=extra, nodes_to_exclude=excluded,
                            calibration_cache_path=str(cache))
    except Exception as exc:
        raise ToolchainError(f"onnxruntime: quantize_static failed: {one_line(exc)}") from None
    ops = _op_counts(out)
    if not ops.get("QuantizeLinear") or not ops.get("DequantizeLinear"):
        raise ToolchainError("onnxruntime: quantize_static produced no QuantizeLinear/DequantizeLinear nodes")
    ctx.results.update({"calibrate_method": opts["calibrate_method"], "per_channel": bool(opts["per_channel"]),
                        **({"num_bins": int(opts["num_bins"])} if opts["calibrate_method"] == "entropy" else {}),
                        "calib_images": int(len(calib)), "pre_processed": pre_processed,
                        "excluded_nodes": len(excluded), "keep_float": len(opts.get("keep_float") or ()), **shared,
                        "QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"],
                        "nodes": sum(ops.values())})


def compile(ctx: OpContext) -> None:  # noqa: A001 - the toolchain interface's name
    import onnxruntime as ort

    p = ctx.params
    _input_layout(p)
    src = Path(ctx.inputs["model"])
    out = Path(ctx.outputs["model.ort.onnx"])
    out.parent.mkdir(parents=True, exist_ok=True)
    sess = _session(src, "basic", optimized_path=out)
    if not out.is_file():
        raise ToolchainError("onnxruntime: the session wrote no optimized model")
    # the optimized file must load on its own, as an application will load it
    check = _session(out, "all")
    ops = _op_counts(out)
    ctx.results.update({
        "onnxruntime": ort.__version__, "providers": sess.get_providers(), "optimization": "ORT_ENABLE_BASIC",
        "nodes": sum(ops.values()), "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
        "inputs": {i.name: i.shape for i in check.get_inputs()},
        "outputs": {o.name: o.shape for o in check.get_outputs()},
    })


def simulate(ctx: OpContext) -> None:
    p = ctx.params
    _input_layout(p)
    probe = load_npz(ctx.inputs["probe"])
    canvases = probe["images"]
    scale = float(p.get("scale", probe.get("input_scale", 1 / 255.0)))
    sess = _session(ctx.inputs["model"], "all")
    inp = sess.get_inputs()
    if len(inp) != 1:
        raise ToolchainError(f"onnxruntime: expected one model input, found {[i.name for i in inp]}")
    name, shape = inp[0].name, inp[0].shape
    h, w = canvases.shape[1:3]
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) and tuple(shape[2:]) != (h, w):
        raise ToolchainError(f"onnxruntime: the model takes {shape[2]}x{shape[3]} input, the probe images are {h}x{w}")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    names = [o.name for o in sess.get_outputs()]
    arrays = probe_outputs(canvases, scale, batch, names, lambda x: sess.run(names, {name: x}), "onnxruntime",
                           ctx.progress)
    save_outputs(ctx.outputs["outputs.npz"], names, arrays)
    ctx.results.update({"images": int(len(canvases)), "outputs": {n: list(a.shape) for n, a in arrays.items()}})


def layer_error(ctx: OpContext) -> None:
    """Cosine and SQNR of every node's output, QDQ model against the float model quantize was handed
    (prepared here the same way, so layer names are the names keep_float takes)."""
    from ...runtime.layer_error import write
    from .layers import layer_errors

    p = ctx.params
    _input_layout(p)
    scratch = Path(ctx.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    float_model, _, excluded = _prepared(Path(ctx.inputs["source"]), p["options"], scratch, ctx.log)
    probe = load_npz(ctx.inputs["probe"])
    canvases = probe["images"][:max(1, int(p.get("count", 4)))]
    doc = layer_errors(float_model, Path(ctx.inputs["built"]), canvases,
                       float(p.get("scale", probe.get("input_scale", 1 / 255.0))), set(excluded))
    write(ctx.outputs["layers.json"], doc)
    ctx.results["accuracy"] = {"method": doc["method"], "images": doc["images"], "layers": len(doc["layers"]),
                               "worst": doc["worst"][:5]}
