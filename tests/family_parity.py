"""The bar every model family is held to, written once: patch -> export (each head layout) ->
onnxruntime on demo images, compared with the unpatched PyTorch model per field (cosine) and
after NMS (the same detections). Family tests call `assert_export_parity`; the reference is
PyTorch, the runtime under test is onnxruntime, neither is the code that decodes the other."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from yolobuild.ops import OP_KINDS, OpContext, resolve_impl
from yolobuild.runtime.decode import fields, nms_input, to_decoded
from yolobuild.runtime.nms import non_max_suppression

HEADS = ("raw", "split", "decoded")


def run_op(kind: str, root: Path, params: dict, inputs: dict, outputs, impl: str | None = None) -> tuple[dict, dict]:
    """Run one op by hand: outputs land in root/<kind>/<name>; returns (outputs, results)."""
    d = Path(root) / kind
    (d / "scratch").mkdir(parents=True, exist_ok=True)
    outs = {n: d / n for n in outputs}
    ctx = OpContext(op_id=kind, kind=kind, params=params, inputs={k: Path(v) for k, v in inputs.items()},
                    outputs=outs, scratch=d / "scratch", log=lambda _msg: None)
    resolve_impl(impl or OP_KINDS[kind].impl)(ctx)
    for name, path in outs.items():
        assert path.exists(), f"{kind} did not write {name}"
    return outs, ctx.results


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def nms_rows(decoded, meta, conf_thres: float = 0.25):
    return [non_max_suppression(d, conf_thres=conf_thres, iou_thres=0.45) for d in nms_input(decoded, meta)]


def assert_same_detections(got, ref, meta, conf_thres: float = 0.25) -> int:
    """Same boxes, scores and classes after NMS; returns how many detections were compared.

    NMS lists equal scores in either order, so each of PyTorch's detections is paired with the
    closest one of the same class (each used once) before comparing."""
    n = 0
    for a, b in zip(nms_rows(got, meta, conf_thres), nms_rows(ref, meta, conf_thres)):
        assert len(a) == len(b), f"{len(a)} detections vs PyTorch's {len(b)}"
        free = np.ones(len(a), bool)
        for row in b:
            d = np.abs(a[:, :4] - row[:4]).sum(1) + np.where(free & (a[:, 5] == row[5]), 0, np.inf)
            j = int(np.argmin(d))
            assert np.isfinite(d[j]), f"no class-{int(row[5])} detection matches PyTorch's box {row[:4]}"
            np.testing.assert_allclose(a[j, :4], row[:4], rtol=1e-4, atol=0.02)   # pixels: 1/50 px
            np.testing.assert_allclose(a[j, 4], row[4], atol=1e-4)               # score
            free[j] = False
        n += len(a)
    return n


def demo_images(root: Path, count: int, height: int, width: int) -> np.ndarray:
    """`count` images of the shipped demo dataset, letterboxed to (count, 3, height, width) float32."""
    from yolobuild.data.shapes import generate
    from yolobuild.runtime.images import list_images
    from yolobuild.runtime.preprocess import preprocess

    folder = generate(Path(root) / "demo-images", "eval", count, size=max(height, width), seed=0)
    paths = list_images(folder)[:count]
    return np.concatenate([preprocess(p, height, width)[0] for p in paths]).astype(np.float32)


def lively(model: torch.nn.Module, images: np.ndarray, seed: int = 1) -> torch.nn.Module:
    """Random weights made to look at the image: BatchNorm statistics measured on demo images (default
    init shrinks activations layer by layer until every cell predicts the same, and NMS then picks among
    exact ties), plus spread class biases. Returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # a cumulative average over the passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.from_numpy(images))
    g = torch.Generator().manual_seed(seed)
    head = model.detect
    convs = list(getattr(head, "m", [])) if getattr(head, "na", None) else []
    seen: list[torch.Tensor] = []
    hooks = [c.register_forward_hook(lambda _m, _i, out: seen.append(out)) for c in convs]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(images))
    for h in hooks:
        h.remove()
    with torch.no_grad():       # anchor-based heads: a few confident cells per image, classes spread apart
        for conv, out in zip(convs, seen):
            b = conv.bias.view(head.na, -1)
            obj = out.view(out.shape[0], head.na, -1, *out.shape[2:])[:, :, 4]
            b[:, 4] += 1.0 - torch.quantile(obj.flatten(), 0.995)
            b[:, 5:] += torch.randn(b[:, 5:].shape, generator=g) * 2
    return model.eval()


def assert_export_parity(root: Path, model_pt: Path, head: str, height: int, width: int, patches=(),
                         fuse: bool = True, images: int = 2, min_detections: int = 1) -> dict:
    """patch + export_onnx one head layout; onnxruntime on demo images vs the unpatched PyTorch model.

    Returns {field: cosine, "detections": n}. `min_detections` keeps the NMS comparison from passing
    vacuously on a model that detects nothing (give random-weight models confident biases)."""
    import onnxruntime as ort

    from yolobuild.ops.building import load_checkpoint

    meta = json.loads((Path(model_pt).parent / "model.json").read_text())
    work = Path(root) / f"parity_{head}_{'fused' if fuse else 'unfused'}"
    p, pres = run_op("patch", work, dict(head=head, patches=list(patches), fuse=fuse, height=height, width=width),
                     {"model": model_pt}, ["patched.pt", "patch_check.json"])
    e, _ = run_op("export_onnx", work, dict(opset=13, head=head, batch=1, height=height, width=width),
                  {"model": p["patched.pt"]}, ["model.onnx"])
    sess = ort.InferenceSession(str(e["model.onnx"]), providers=["CPUExecutionProvider"])
    x = demo_images(root, images, height, width)
    got = np.concatenate([to_decoded(sess.run(None, {"images": x[i:i + 1]}), head, meta) for i in range(len(x))])
    _, model = load_checkpoint(model_pt)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    figures = {}
    for name, f in fields(got, meta).items():
        figures[name] = cosine(f, fields(ref, meta)[name])
        assert figures[name] >= 0.99999, f"{head}: {name} cosine {figures[name]:.7f} < 0.99999"
    figures["detections"] = assert_same_detections(got, ref, meta)
    assert figures["detections"] >= min_detections, f"{head}: only {figures['detections']} detections compared"
    figures["patch_check"] = pres["patch_check"]
    return figures
