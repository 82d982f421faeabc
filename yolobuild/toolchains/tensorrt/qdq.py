"""The Q/DQ rules TensorRT's ONNX parser holds an int8 model to, checked on the host before a GPU is involved.

TensorRT quantizes symmetrically: every zero point must be an int8 zero (a QuantizeLinear without one
means uint8), and DequantizeLinear takes only activation types, so an int32 bias behind a DQ is refused
at parse time. A model that breaks a rule is caught here, on any machine, with the node named.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def check(path: Path) -> tuple[dict[str, int], list[str]]:
    """(counts of QuantizeLinear / DequantizeLinear, problems), one problem per offending node."""
    import onnx

    graph = onnx.load(str(path)).graph
    values = _constants(graph)
    counts = Counter(n.op_type for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    problems: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zero_point is None:
            if node.op_type == "QuantizeLinear":
                problems.append(f"{label} has no zero point, so it quantizes to uint8; TensorRT takes int8")
        elif zero_point not in values:
            problems.append(f"{label}: its zero point is computed at run time; TensorRT needs a constant 0")
        else:
            zp = values[zero_point]
            if zp.dtype.name != "int8":
                problems.append(f"{label}: zero point is {zp.dtype.name}; TensorRT takes int8")
            elif zp.any():
                problems.append(f"{label}: zero point {int(zp.flat[int(abs(zp).argmax())])} is not 0 "
                                "(asymmetric); TensorRT quantizes symmetrically")
        if node.op_type == "DequantizeLinear" and node.input[0] in values \
                and values[node.input[0]].dtype.name == "int32":
            problems.append(f"{label} dequantizes an int32 constant (a quantized bias); TensorRT's DequantizeLinear "
                            "takes only int8 inputs: keep biases float")
    return {"QuantizeLinear": counts["QuantizeLinear"], "DequantizeLinear": counts["DequantizeLinear"]}, problems
