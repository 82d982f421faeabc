"""Per-layer error of an NNCF-quantized IR against the float model it came from: every op's output added as a
model output (`Model.add_outputs`) in both, run on the CPU plugin over the probe images (numbers in
runtime.layer_error).

A float op's output is found in the quantized IR by the op's name (NNCF keeps them) and, where NNCF put a
FakeQuantize after it, as that FakeQuantize's output (what its consumers see). Names are OpenVINO op
names: what NNCF's ignored_scope names, and backend.options.keep_float, take.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ToolchainError, one_line
from ...runtime.arrays import canvas_to_input
from ...runtime.layer_error import LayerStats
from .quantization import _DATA_OPS


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    ref: object           # openvino Output in the float model
    got: object           # openvino Output in the quantized model
    before: object        # the op's output before the FakeQuantize NNCF put after it (None: none)
    inputs: tuple[str, ...]
    quantized: bool


def _fed_by_fake_quantize(node) -> bool:
    return any(v.get_node().get_type_name() == "FakeQuantize" for v in node.input_values())


def match(float_model, quantized_model, kept_float: set[str]) -> list[Layer]:
    from openvino import Type

    q_ops = {op.get_friendly_name(): op for op in quantized_model.get_ops()}
    layers = []
    for op in float_model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        if kind in _DATA_OPS or kind in ("ShapeOf",) or name not in q_ops or op.get_output_size() < 1:
            continue
        if op.output(0).get_element_type() != Type.f32 or not op.output(0).get_partial_shape().is_static:
            continue
        q_op = q_ops[name]
        got, before = q_op.output(0), None
        for target in got.get_target_inputs():
            if target.get_node().get_type_name() == "FakeQuantize":
                got, before = target.get_node().output(0), q_op.output(0)
                break
        inputs = tuple(dict.fromkeys(v.get_node().get_friendly_name() for v in op.input_values()
                                     if v.get_node().get_type_name() not in _DATA_OPS))
        quantized = name not in kept_float and _fed_by_fake_quantize(q_op)
        layers.append(Layer(name, kind, op.output(0), got, before, inputs, quantized))
    return layers


def _runner(model, outputs: list, precision: str):
    """An infer function returning the arrays of `outputs` (added to the model as outputs) per input."""
    import openvino as ov

    names = []
    for k, out in enumerate(outputs):   # a name of our own per tensor, beside the names it has
        out.get_tensor().add_names({f"yolobuild_layer_{k}"})
        names.append(set(out.get_names()))
    model.add_outputs([f"yolobuild_layer_{k}" for k in range(len(outputs))])
    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    except Exception as exc:
        raise ToolchainError(f"openvino: cannot compile the model with its layers exposed: {one_line(exc)}") from None
    request = compiled.create_infer_request()
    by_name = {name: k for k, o in enumerate(compiled.outputs) for name in o.get_names()}
    index = []
    for wanted in names:
        found = [by_name[n] for n in wanted if n in by_name]
        if not found:
            raise ToolchainError(f"openvino: the compiled model lost the output {sorted(wanted)[0]!r}")
        index.append(found[0])

    def infer(x):
        request.infer({0: x})
        return [np.array(request.get_output_tensor(k).data) for k in index]

    return infer


def layer_errors(float_model, quantized_model, canvases: np.ndarray, scale: float, batch: int,
                 kept_float: set[str], precision: str) -> dict:
    layers = match(float_model, quantized_model, kept_float)
    if not layers:
        raise ToolchainError("openvino: no op of the float model was found in the quantized IR")
    ref_run = _runner(float_model, [layer.ref for layer in layers], precision)
    befores = [layer for layer in layers if layer.before is not None]
    got_run = _runner(quantized_model, [layer.got for layer in layers] + [layer.before for layer in befores],
                      precision)
    stats = LayerStats()
    for k in range(len(canvases)):
        x = canvas_to_input(canvases[k:k + 1], scale)
        if batch > 1:
            x = np.repeat(x, batch, 0)
        got_all = got_run(x)
        before = {layer.name: got_all[len(layers) + i] for i, layer in enumerate(befores)}
        for layer, ref, got in zip(layers, ref_run(x), got_all):
            local = (before[layer.name], got) if layer.name in before else None
            stats.add(layer.name, layer.op, ref, got, inputs=layer.inputs, quantized=layer.quantized, local=local)
    return stats.document("openvino intermediate outputs (float model vs NNCF int8 IR, CPU plugin)",
                          images=len(canvases))
