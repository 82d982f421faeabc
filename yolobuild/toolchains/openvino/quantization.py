"""NNCF post-training int8 for an openvino.Model: the calibration dataset and the layers kept in float.

The calibration images reach NNCF as the very tensors the PyTorch reference and the parity run see:
`canvas_to_input` over the letterboxed uint8 canvases of calib.npz.
"""
from __future__ import annotations

import re

import numpy as np

from ...errors import ToolchainError, UserError, one_line
from ...runtime.arrays import canvas_to_input

# ops that hold data, not computation: never quantized, never worth naming in an ignored scope
_DATA_OPS = {"Constant", "Parameter", "Result", "Convert"}


def calibration_dataset(canvases: np.ndarray, scale: float, batch: int):
    """An nncf.Dataset yielding one network input per batch; a short last batch repeats its last image."""
    import nncf

    def to_input(start: int) -> np.ndarray:
        x = canvas_to_input(canvases[start:start + batch], scale)
        if len(x) < batch:   # fixed-batch model
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), 0)], 0)
        return x

    return nncf.Dataset(range(0, len(canvases), batch), to_input)


def head_ops(model) -> list[str]:
    """Names of the ops from each output back to the last Convolution before it (the detection head).

    A raw head level packs box, objectness and class logits into one tensor, a decoded head packs pixels
    and probabilities: one int8 scale for such a tensor is what costs a YOLO model most.
    """
    seen: dict[str, None] = {}
    found_conv = False
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    while stack:
        node = stack.pop()
        name, kind = node.get_friendly_name(), node.get_type_name()
        if kind in _DATA_OPS or name in seen:
            continue
        seen[name] = None
        if kind == "Convolution":
            found_conv = True
            continue
        stack.extend(v.get_node() for v in node.input_values())
    return list(seen) if found_conv else []   # no conv in front of the outputs: nothing to keep in float


def ignored_scope(model, options: dict) -> tuple[object, int]:
    """The nncf.IgnoredScope for the recipe's options, checked against the model's op names first."""
    import nncf

    user = options["ignored_scope"]
    ops = {n.get_friendly_name(): n.get_type_name() for n in model.get_ops()}
    missing = [n for n in user["names"] if n not in ops]
    if missing:
        raise UserError(f"backend.options.ignored_scope.names: {missing[0]!r} is not an op of the converted model")
    keep = list(options.get("keep_float") or ())   # layer_error's names: OpenVINO op names, as names takes
    missing = [n for n in keep if n not in ops]
    if missing:
        raise UserError(f"backend.options.keep_float: {missing[0]!r} is not an op of the converted model "
                        f"({len(missing)} unknown); use the names the build's layers.json reports")
    for pattern in user["patterns"]:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UserError(f"backend.options.ignored_scope.patterns: {pattern!r} is not a regular expression "
                            f"({exc})") from None
        if not any(regex.match(name) for name in ops):
            raise UserError(f"backend.options.ignored_scope.patterns: {pattern!r} matches no op of the converted model")
    unknown_types = [t for t in user["types"] if t not in set(ops.values())]
    if unknown_types:
        raise UserError(f"backend.options.ignored_scope.types: {unknown_types[0]!r} is not an op type of the "
                        f"converted model")
    head = head_ops(model) if options["fp32_head"] else []
    names = list(dict.fromkeys(head + list(user["names"]) + keep))
    scope = nncf.IgnoredScope(names=names, patterns=list(user["patterns"]), types=list(user["types"]),
                              validate=False)   # checked above, with messages that name the recipe key
    return scope, len(head)


def quantize(model, canvases: np.ndarray, scale: float, batch: int, options: dict):
    """(int8 openvino.Model, results for the manifest)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from ...runtime.quiet import quiet

    if not len(canvases):
        raise UserError("dataset.calib: the calibration set is empty")
    scope, head_count = ignored_scope(model, options)
    preset = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    model_type = {None: None, "transformer": nncf.ModelType.TRANSFORMER}
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=getattr(RangeEstimatorParametersSet, options["activation_range"].upper()))
    nncf.set_log_level(logging.ERROR)
    try:
        with quiet():
            quantized = nncf.quantize(
                model, calibration_dataset(canvases, scale, batch),
                preset=preset[options["preset"]], subset_size=int(options["subset_size"]),
                fast_bias_correction=bool(options["fast_bias_correction"]),
                model_type=model_type[options["model_type"]], ignored_scope=scope, advanced_parameters=advanced)
    except UserError:
        raise
    except Exception as exc:
        raise ToolchainError(f"openvino: nncf.quantize failed: {one_line(exc)}") from None
    fake_quantize = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    if not fake_quantize:
        raise ToolchainError("openvino: nncf.quantize inserted no FakeQuantize op")
    return quantized, {
        "nncf": nncf.__version__, "preset": options["preset"], "subset_size": int(options["subset_size"]),
        "fast_bias_correction": bool(options["fast_bias_correction"]), "activation_range": options["activation_range"],
        "calib_images": int(len(canvases)),
        "fp32_head_ops": head_count, "ignored_names": len(scope.names), "FakeQuantize": fake_quantize,
    }
