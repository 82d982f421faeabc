"""Per-layer error of a QDQ model: every node's output exposed as a graph output, in the float model and in
the quantized one, run on the same probe images (numbers in runtime.layer_error).

A float node's output `t` is found in the QDQ graph as the DequantizeLinear output that follows it (what its
consumers see: the output's own quantization included), or as `t` itself where the quantizer left it float.
A float copy of each quantized layer, fed the same dequantized inputs inside the QDQ graph, gives the error
that quantizing the layer alone adds (the ranking's key, per channel).
Layers are named by ONNX node name, the names quantize_static's nodes_to_exclude takes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ToolchainError, one_line
from ...runtime.arrays import canvas_to_input
from ...runtime.layer_error import LayerStats


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    ref: str              # the tensor in the float model
    got: str              # the tensor in the QDQ model
    shadow: str | None    # in the QDQ model: the layer run in float on the same (quantized) inputs
    inputs: tuple[str, ...]
    quantized: bool


def _float_tensors(proto) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    return {v.name for v in list(g.value_info) + list(g.output) + list(g.input)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def match(float_proto, qdq_proto, kept_float: set[str]) -> list[Layer]:
    """The float model's nodes (graph order) whose output has a counterpart in the QDQ model."""
    fg, qg = float_proto.graph, qdq_proto.graph
    floats = _float_tensors(float_proto)
    producer = {o: n.name for n in fg.node for o in n.output}
    q_nodes = {n.name: n for n in qg.node}
    consumers: dict[str, list] = {}
    for n in qg.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dq_output = {n.output[0] for n in qg.node if n.op_type == "DequantizeLinear"}
    layers = []
    for node in fg.node:
        out = node.output[0] if node.output else ""
        if out not in floats or node.name not in q_nodes or node.op_type in ("Constant", "Shape"):
            continue
        got = out
        for q in consumers.get(out, ()):
            if q.op_type == "QuantizeLinear":
                dq = [d for d in consumers.get(q.output[0], ()) if d.op_type == "DequantizeLinear"]
                if dq:
                    got = dq[0].output[0]
                    break
        q_node = q_nodes[node.name]
        quantized = node.name not in kept_float and any(i in dq_output for i in q_node.input)
        inputs = tuple(dict.fromkeys(producer[i] for i in node.input if i in producer))
        shadow = f"{SHADOW}{out}" if quantized and len(node.input) == len(q_node.input) else None
        layers.append(Layer(node.name, node.op_type, out, got, shadow, inputs, quantized))
    return layers


SHADOW = "yolobuild_float/"


def add_shadows(qdq_proto, float_proto, layers: list[Layer]) -> None:
    """Beside each quantized layer of the QDQ graph, a float copy of it (the float model's node, its float
    weights) reading the same dequantized inputs: the two differ by what quantizing that layer alone costs
    (weights, bias and output), whatever error its inputs carry."""
    import onnx

    weights = {t.name: t for t in float_proto.graph.initializer}
    float_nodes = {n.name: n for n in float_proto.graph.node}
    q_nodes = {n.name: n for n in qdq_proto.graph.node}
    copied: set[str] = set()
    for layer in layers:
        if layer.shadow is None:
            continue
        fn, qn = float_nodes[layer.name], q_nodes[layer.name]
        inputs = []
        for k, name in enumerate(fn.input):
            if name in weights:
                if name not in copied:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(weights[name])
                    tensor.name = SHADOW + name
                    qdq_proto.graph.initializer.append(tensor)
                    copied.add(name)
                inputs.append(SHADOW + name)
            else:
                inputs.append(qn.input[k])
        shadow = onnx.helper.make_node(fn.op_type, inputs, [SHADOW + o for o in fn.output],
                                       name=SHADOW + fn.name, domain=fn.domain)
        shadow.attribute.extend(fn.attribute)
        qdq_proto.graph.node.append(shadow)


def _exposing(proto, tensors: list[str]) -> bytes:
    """The model with `tensors` added as graph outputs (float32), serialized."""
    import onnx

    present = {o.name for o in proto.graph.output}
    for t in tensors:
        if t not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
            present.add(t)
    return proto.SerializeToString()


def _session(model_bytes: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # every tensor as the graph has it
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ToolchainError(f"onnxruntime: cannot run the model with its layers exposed: {one_line(exc)}") from None


def layer_errors(float_path: Path, qdq_path: Path, canvases: np.ndarray, scale: float,
                 kept_float: set[str]) -> dict:
    """layers.json for the QDQ model against its float model, over `canvases` (one image at a time)."""
    import onnx

    fp, qp = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    layers = match(fp, qp, kept_float)
    if not layers:
        raise ToolchainError("onnxruntime: no layer of the float model was found in the quantized model")
    input_name = next(i.name for i in fp.graph.input if i.name not in {t.name for t in fp.graph.initializer})
    ref_names = [layer.ref for layer in layers]
    add_shadows(qp, fp, layers)
    got_names = list(dict.fromkeys([layer.got for layer in layers] + [layer.shadow for layer in layers if layer.shadow]))
    ref_sess, got_sess = _session(_exposing(fp, ref_names)), _session(_exposing(qp, got_names))
    batch = fp.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    stats = LayerStats()
    for k in range(len(canvases)):
        x = canvas_to_input(canvases[k:k + 1], scale)
        if batch > 1:
            x = np.repeat(x, batch, 0)
        ref = dict(zip(ref_names, ref_sess.run(ref_names, {input_name: x})))
        got = dict(zip(got_names, got_sess.run(got_names, {input_name: x})))
        for layer in layers:
            stats.add(layer.name, layer.op, ref[layer.ref], got[layer.got], inputs=layer.inputs,
                      quantized=layer.quantized, local=(got[layer.shadow], got[layer.got]) if layer.shadow else None)
    return stats.document("onnxruntime intermediate outputs (float ONNX vs QDQ ONNX)", images=len(canvases))
