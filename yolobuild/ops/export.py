"""Export ops: the patched model to ONNX (`export_onnx`), its simplification (`simplify`), TorchScript."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ToolchainError, UserError
from ..runtime.quiet import quiet
from . import OpContext

INPUT_NAME = "images"


def output_names(head: str, strides=(8, 16, 32)) -> list[str]:
    """ONNX output names of a head layout: raw -> out8/out16/out32, split -> xy/wh/conf, decoded -> output,
    topk -> detections."""
    if head == "raw":
        return [f"out{int(s)}" for s in strides]
    if head == "split":
        return ["xy", "wh", "conf"]
    if head == "decoded":
        return ["output"]
    if head == "topk":
        return ["detections"]
    raise UserError(f"graph.head: {head!r} is not allowed; allowed: raw, split, decoded, topk")


def _value_shape(v) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]


def describe_onnx(proto) -> dict:
    g = proto.graph
    init = {i.name for i in g.initializer}
    return {
        "inputs": {v.name: _value_shape(v) for v in g.input if v.name not in init},
        "outputs": {v.name: _value_shape(v) for v in g.output},
        "nodes": len(g.node),
        "op_types": dict(sorted(Counter(n.op_type for n in g.node).items())),
    }


def export_onnx(ctx: OpContext) -> None:
    import onnx
    import torch

    from .building import load_patched

    p = ctx.params
    head = p["head"]
    model = load_patched(ctx.inputs["model"])
    if model.detect.layout != head:
        raise UserError(f"graph.head: export asks for {head!r} but the patched model carries {model.detect.layout!r}")
    names = output_names(head, [int(s) for s in model.detect.stride.tolist()])
    x = torch.zeros(int(p.get("batch", 1)), 3, int(p["height"]), int(p["width"]))
    out = ctx.outputs["model.onnx"]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(model, x, str(out), dynamo=False, opset_version=int(p["opset"]),
                              input_names=[INPUT_NAME], output_names=names, do_constant_folding=True,
                              export_params=True)
    except Exception as exc:  # the exporter raises many kinds; one line is what the user needs
        raise ToolchainError(f"export_onnx: torch.onnx.export failed at opset {p['opset']}: "
                             f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}") from None
    proto = onnx.load(str(out))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ToolchainError(f"export_onnx: the exported model fails onnx.checker: {' '.join(str(exc).split())[:300]}") \
            from None
    info = describe_onnx(proto)
    if list(info["outputs"]) != names:
        raise ToolchainError(f"export_onnx: exported outputs {list(info['outputs'])}, expected {names}")
    ctx.results.update({"opset": int(p["opset"]), "head": head, **info})


def _ort_run(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _random_feeds(proto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {i.name for i in proto.graph.initializer}
    feeds = {}
    for v in proto.graph.input:
        if v.name in init:
            continue
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in _value_shape(v)]
        feeds[v.name] = rng.random(shape, dtype=np.float32)
    return feeds


def simplify(ctx: OpContext) -> None:
    import onnx
    import onnxslim

    proto = onnx.load(str(ctx.inputs["model"]))
    before = describe_onnx(proto)    # plain data, taken before onnxslim may rewrite `proto` in place
    try:
        with quiet():
            slim = onnxslim.slim(proto)
    except Exception as exc:
        raise ToolchainError(f"simplify: onnxslim failed: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}") \
            from None
    if slim is None:
        raise ToolchainError("simplify: onnxslim returned no model")
    after = describe_onnx(slim)
    if list(after["inputs"]) != list(before["inputs"]) or list(after["outputs"]) != list(before["outputs"]):
        raise ToolchainError(f"simplify: onnxslim renamed the graph's inputs/outputs "
                             f"({list(before['inputs'])} -> {list(after['inputs'])}, "
                             f"{list(before['outputs'])} -> {list(after['outputs'])})")
    try:
        onnx.checker.check_model(slim)
    except Exception as exc:
        raise ToolchainError(f"simplify: the simplified model fails onnx.checker: {' '.join(str(exc).split())[:300]}") \
            from None
    ctx.outputs["model.onnx"].parent.mkdir(parents=True, exist_ok=True)
    onnx.save(slim, str(ctx.outputs["model.onnx"]))
    ctx.results.update({"nodes_before": before["nodes"], "nodes_after": after["nodes"], "op_types": after["op_types"]})


def check_simplify(ctx: OpContext) -> None:
    """The simplified model computes what the exported one does (onnxruntime, same random input), else
    ToolchainError. An op of its own so that it runs beside the compile, not before it."""
    import onnx

    exported, slim = onnx.load(str(ctx.inputs["exported"])), onnx.load(str(ctx.inputs["simplified"]))
    feeds = _random_feeds(exported)
    try:
        ref = _ort_run(exported.SerializeToString(), feeds)
        got = _ort_run(slim.SerializeToString(), feeds)
    except Exception as exc:
        raise ToolchainError(f"simplify: onnxruntime cannot run the models: {' '.join(str(exc).split())[:300]}") from None
    worst = {}
    for name, a, b in zip([o.name for o in slim.graph.output], ref, got):
        if a.shape != b.shape:
            raise ToolchainError(f"simplify: output {name} changed shape {list(a.shape)} -> {list(b.shape)}")
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        worst[name] = diff
        if not np.allclose(b, a, rtol=1e-4, atol=1e-4):
            raise ToolchainError(f"simplify: the simplified model's output {name} differs from the exported one "
                                 f"by up to {diff:.3g} (tolerance 1e-4)")
    ctx.outputs["simplify_check.json"].write_text(json.dumps({"max_abs_diff": worst}, indent=2) + "\n")
    ctx.results["max_abs_diff"] = worst


def export_torchscript(ctx: OpContext) -> None:
    import torch

    from .building import load_patched

    p = ctx.params
    model = load_patched(ctx.inputs["model"])
    x = torch.zeros(int(p.get("batch", 1)), 3, int(p["height"]), int(p["width"]))
    g = torch.Generator().manual_seed(0)
    probe = torch.rand(x.shape, generator=g)
    with quiet(), torch.no_grad():
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
        except Exception as exc:
            raise ToolchainError(f"export_torchscript: torch.jit.trace failed: {exc.__class__.__name__}: "
                                 f"{' '.join(str(exc).split())[:300]}") from None
        ref, got = model(probe), traced(probe)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    worst = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    if worst > 1e-4:
        raise ToolchainError(f"export_torchscript: the traced module differs from the model by {worst:.3g}")
    out = ctx.outputs["model.torchscript.pt"]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out))
    ctx.results.update({"max_abs_diff": worst, "outputs": [list(t.shape) for t in got]})
