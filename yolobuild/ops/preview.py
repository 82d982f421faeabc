"""An honest int8 preview for hand-off builds, computed on the host: never the vendor compiler.

The exported ONNX goes through a generic int8 fake-quant (onnxruntime static QDQ: per-channel
symmetric int8 weights, per-tensor uint8 activations from min/max over the bundle's own
calibration canvases, every node quantized, the head included), runs on the probe images and is
checked like a real build: per-field parity with PyTorch (ops.check.field_stats) and, where the
build evaluates, COCO mAP (ops.check.evaluate). The figures say what int8 costs this network in
general; the vendor's quantizer and kernels decide what it costs on the chip.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import OpContext
from .check import decode_built, evaluate, field_stats
from .inputs import load_npz

LABEL = "preview, not the vendor compiler"
METHOD = ("onnxruntime quantize_static QDQ: per-channel symmetric int8 weights, per-tensor uint8 activations "
          "(min/max over the calibration set), all nodes incl. the head")


def _sub(ctx: OpContext, name: str, params: dict, inputs: dict, outputs: tuple[str, ...]) -> OpContext:
    root = Path(ctx.scratch) / name
    (root / "scratch").mkdir(parents=True, exist_ok=True)
    return OpContext(op_id=f"{ctx.op_id}.{name}", kind=name, params=params,
                     inputs={k: Path(v) for k, v in inputs.items()}, outputs={o: root / o for o in outputs},
                     scratch=root / "scratch", log=ctx.log, progress=ctx.progress)


def _at_least_opset13(path: Path, scratch: Path) -> tuple[Path, int]:
    """Per-channel QDQ needs opset 13 (DequantizeLinear's axis): convert older exports (va1 uses 10)."""
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return path, opset
    out = scratch / "model.opset13.onnx"
    scratch.mkdir(parents=True, exist_ok=True)
    onnx.save(version_converter.convert_version(proto, 13), str(out))
    return out, opset


def preview(ctx: OpContext) -> None:
    from ..toolchains.onnxruntime import steps as ort_tc
    from ..toolchains.registry import get

    p = ctx.params
    # the generic preview: ONNX Runtime's defaults, the stem and the head quantized too (what a vendor int8 does),
    # each tensor its own range (fp32_stem and shared_scales are ONNX Runtime's own speed choices)
    options = {**get("onnxruntime").option_defaults(), "calibrate_method": "minmax", "fp32_head": False,
               "fp32_stem": False, "shared_scales": False}
    common = {"precision": "int8", "input_layout": "nchw_float32", "scale": float(p["scale"]), "options": options}
    model, opset = _at_least_opset13(Path(ctx.inputs["model"]), Path(ctx.scratch))
    q = _sub(ctx, "quantize", common, {"model": model, "calib": ctx.inputs["calib"]}, ("model.onnx",))
    ort_tc.quantize(q)
    sim = _sub(ctx, "simulate", common, {"model": q.outputs["model.onnx"], "probe": ctx.inputs["probe"]},
               ("outputs.npz",))
    ort_tc.simulate(sim)

    meta = json.loads(Path(ctx.inputs["meta"]).read_text())
    ref = load_npz(ctx.inputs["reference"])["decoded"]
    got = decode_built(sim.outputs["outputs.npz"], p["head"], meta)
    n = min(int(p["count"]), len(ref), len(got))
    parity = field_stats(got[:n], ref[:n])
    threshold = (p.get("thresholds") or {}).get("cosine")
    out = {"label": LABEL, "method": METHOD, "calibration_images": q.results.get("calib_images"),
           "onnx_opset": opset if opset >= 13 else f"{opset}, converted to 13 for per-channel QDQ",
           "qdq_nodes": q.results.get("QuantizeLinear", 0) + q.results.get("DequantizeLinear", 0),
           "parity_images": n, "parity": parity}
    if threshold is not None:
        out["target_threshold"] = float(threshold)
        out["below_threshold"] = sorted(k for k, v in parity.items() if not v["cosine"] >= float(threshold))
    if p.get("evaluate"):   # against the labels, or (none) by agreement with PyTorch fp32, as evaluate does
        ev = _sub(ctx, "evaluate", {k: p[k] for k in ("head", "conf_thres", "iou_thres", "agreement_conf") if k in p},
                  {"outputs": sim.outputs["outputs.npz"], "reference": ctx.inputs["reference"],
                   "meta": ctx.inputs["meta"], "probe": ctx.inputs["probe"],
                   **({"annotations": ctx.inputs["annotations"]} if "annotations" in ctx.inputs else {})},
                  ("metrics.json",))
        evaluate(ev)
        m = ev.results["metrics"]
        if m["kind"] == "labels":
            out["metrics"] = {"kind": "labels", "pytorch_fp32": m["pytorch_fp32"], "preview_int8": m["built"],
                              "delta_mAP50_95": m["delta_mAP50_95"], "images": m["images"]}
        else:
            out["metrics"] = {**m, "preview_int8": {"mAP50_95": m["agreement_mAP50_95"],
                                                    "mAP50": m["agreement_mAP50"]}}
    ctx.outputs["preview.json"].write_text(json.dumps(out, indent=2) + "\n")
    ctx.results["preview"] = out
