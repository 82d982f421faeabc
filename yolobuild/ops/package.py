"""Package a compiled model with what an application needs to feed it and decode its outputs."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from . import OpContext


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _onnx_io(path: Path) -> tuple[list[dict], list[dict]] | None:
    """Input / output names, shapes and element types of an ONNX file, or None when unreadable."""
    try:
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype
    except ImportError:
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None

    def desc(v):
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        try:
            dtype = tensor_dtype_to_np_dtype(t.elem_type).name
        except (KeyError, TypeError, ValueError):
            dtype = None
        return {"name": v.name, "shape": shape, "dtype": dtype}

    init = {i.name for i in proto.graph.initializer}
    return [desc(v) for v in proto.graph.input if v.name not in init], [desc(v) for v in proto.graph.output]


def package(ctx: OpContext) -> None:
    from .export import INPUT_NAME, output_names

    p = ctx.params
    meta = json.loads(Path(ctx.inputs["meta"]).read_text())
    model_path = Path(ctx.inputs["model"])
    out = Path(ctx.outputs["deploy"])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # multi-file artifacts (model.xml + model.bin): the other files come as inputs of their own, each
    # under its own name (cached objects are stored by content, never side by side)
    files = [model_path] + [Path(path) for slot, path in ctx.inputs.items() if slot.startswith("also:")]
    copied = {}
    for f in files:
        shutil.copyfile(f, out / f.name)
        copied[f.name] = _sha256(out / f.name)
    (out / "labels.txt").write_text("".join(f"{n}\n" for n in meta["names"]))

    h, w = int(p["height"]), int(p["width"])
    layout = p.get("input_layout", "nchw_float32")
    io = _onnx_io(model_path) if model_path.suffix == ".onnx" else None
    if io:
        inputs, outputs = io
    else:
        shape = [1, 3, h, w] if layout == "nchw_float32" else [1, h, w, 3]
        inputs = [{"name": INPUT_NAME, "shape": shape, "dtype": "float32" if layout == "nchw_float32" else "uint8"}]
        outputs = [{"name": n, "shape": None, "dtype": None} for n in output_names(p["head"], meta["strides"])]
    from ..deploy import bundle, describe, samples

    post, sample_spec = {"conf_threshold": samples.DEPLOY_CONF, "iou_threshold": samples.DEPLOY_IOU,
                         "max_det": samples.MAX_DET, "class_aware": True}, None
    if "outputs" in ctx.inputs:   # golden samples from the outputs the checks were run on
        expected, post, tolerance = samples.write_samples(
            Path(ctx.inputs["outputs"]), Path(ctx.inputs["probe"]), Path(ctx.inputs["images"]), meta, p["head"],
            out / "samples", bool(meta.get("random")))
        (out / "samples" / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        sample_spec = {"folder": "samples", "expected": "samples/expected.json", "tolerance": tolerance,
                       "images": [e["file"] for e in expected["images"]]}
    deploy = describe.deploy_document(p, meta, model_path.name, copied, inputs, outputs, post, sample_spec)
    bundle.write_scripts(out, p.get("toolchain"))
    (out / "deploy.json").write_text(json.dumps(deploy, indent=2) + "\n")
    ctx.results.update({"files": sorted(f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()),
                        "model_bytes": sum((out / f).stat().st_size for f in copied)})
