"""Numeric checks of a built model: per-field parity with PyTorch, and COCO mAP of both (against labels, or
against the fp32 PyTorch model's own detections where the evaluation images have none)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, ToolchainError, UserError
from . import OpContext
from .inputs import load_npz, read_coco

FIELDS = ("boxes", "objectness", "class_scores", "scores")   # scores: the top-k layout's rows
# Class scores are trained only where there is an object: on background anchors they are noise
# that no decision reads. They are compared where PyTorch's objectness reaches this value
# (all anchors when none does, as with random weights).
FOREGROUND_OBJECTNESS = 0.1


def built_outputs(path) -> tuple[list[str], list[np.ndarray]]:
    """outputs.npz -> (names in model order, arrays stacked over probe images)."""
    z = load_npz(path)
    if "__names__" not in z:
        raise ToolchainError(f"simulate: {path} has no __names__ entry")
    names = [str(n) for n in z["__names__"].tolist()]
    missing = [n for n in names if n not in z]
    if missing:
        raise ToolchainError(f"simulate: {path} lacks output(s) {', '.join(missing)}")
    return names, [z[n] for n in names]


def decode_built(path, head: str, meta: dict, ref: np.ndarray | None = None) -> np.ndarray | tuple:
    """The built model's outputs decoded; with `ref` (PyTorch's decoded rows), (built, reference) brought to one
    shape (runtime.decode.comparable: the top-k layout compares detections)."""
    from ..runtime.decode import comparable, to_decoded

    _, arrays = built_outputs(path)
    try:
        return to_decoded(arrays, head, meta) if ref is None else comparable(arrays, head, ref, meta)
    except (ValueError, IndexError) as exc:
        raise ToolchainError(f"check: the built model's outputs do not decode as a {head} head: {exc}") from None


def field_stats(got: np.ndarray, ref: np.ndarray, meta: dict | None = None,
                layout: str = "decoded") -> dict[str, dict[str, float]]:
    from ..runtime.decode import fields

    out = {}
    fg, fr = fields(got, meta, layout), fields(ref, meta, layout)
    # anchor-free heads have no objectness: their foreground is where a class score reaches the bar
    score = fr["objectness"] if "objectness" in fr else fr["scores"] if "scores" in fr else fr["class_scores"].max(-1)
    foreground = score >= FOREGROUND_OBJECTNESS
    for name in (f for f in FIELDS if f in fr):
        x, y = np.asarray(fg[name], dtype=np.float64), np.asarray(fr[name], dtype=np.float64)
        if name == "class_scores" and foreground.any():
            x, y = x[foreground], y[foreground]
        x, y = x.ravel(), y.ravel()
        nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        if nx == 0.0 and ny == 0.0:
            cos = 1.0
        elif nx == 0.0 or ny == 0.0:
            cos = 0.0
        else:
            cos = float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))
        out[name] = {"cosine": cos, "max_abs": float(np.max(np.abs(x - y))) if x.size else 0.0}
    return out


def fmt_below(value: float, threshold: float) -> str:
    """`value` with enough decimals to read below `threshold`, truncated (never rounded up to it)."""
    import math

    text = repr(float(threshold))
    digits = max(6, (len(text.split(".")[1]) if "." in text and "e" not in text else 9) + 2)
    return f"{math.floor(value * 10 ** digits) / 10 ** digits:.{digits}f}"


def _meta(path) -> dict:
    return json.loads(Path(path).read_text())


def check_parity(ctx: OpContext) -> None:
    p = ctx.params
    meta = _meta(ctx.inputs["meta"])
    got, ref = decode_built(ctx.inputs["outputs"], p["head"], meta, load_npz(ctx.inputs["reference"])["decoded"])
    n = min(int(p["count"]), len(ref), len(got))
    if got.shape[1:] != ref.shape[1:]:
        raise ToolchainError(f"check_parity: the built model decodes to {list(got.shape[1:])} per image, "
                             f"PyTorch to {list(ref.shape[1:])}")
    if n < 1:
        raise ToolchainError("check_parity: no probe images to compare")
    stats = field_stats(got[:n], ref[:n], meta, p["head"])
    threshold = float(p["thresholds"]["cosine"])
    ctx.outputs["parity.json"].write_text(json.dumps(stats, indent=2) + "\n")
    ctx.results["parity"] = stats
    ctx.results["parity_images"] = n
    ctx.results["parity_threshold"] = threshold
    bad = [f"{k} cosine {fmt_below(v['cosine'], threshold)} < {threshold} (target threshold)"
           for k, v in stats.items() if not v["cosine"] >= threshold]   # NaN (inf outputs) fails
    if bad:
        raise CheckFailed(f"parity: {'; '.join(bad)} over {n} probe image(s)")


def _category_map(names: list[str], coco: dict) -> tuple[list[int], str]:
    cats = coco.get("categories") or []
    by_name = {str(c["name"]).lower(): int(c["id"]) for c in cats}
    if names and all(str(n).lower() in by_name for n in names):
        return [by_name[str(n).lower()] for n in names], "names"
    return sorted(int(c["id"]) for c in cats), "sorted ids"


def _detections(decoded: np.ndarray, probe: dict, cat_ids: list[int], conf: float, iou: float,
                sizes: dict[int, tuple[float, float]], layout: str = "decoded", meta: dict | None = None,
                progress=None, what: str = "eval images") -> list[dict]:
    from ..runtime.decode import final_detections
    from ..runtime.metrics import detections_from_nms
    from ..runtime.preprocess import Letterbox

    dets = []
    for i in range(len(decoded)):
        if progress is not None:
            progress(i, len(decoded), what)
        rows = final_detections(decoded[i], layout, meta, conf, iou)
        rows = rows[rows[:, 5] < len(cat_ids)] if len(rows) else rows
        if not len(rows):
            continue
        s, px, py = (float(v) for v in probe["letterbox"][i])
        iid = int(probe["image_ids"][i])
        rows = rows.copy()
        rows[:, :4] = Letterbox(scale=s, pad_x=px, pad_y=py).to_image(rows[:, :4])
        h, w = sizes.get(iid, (None, None))
        if h is None and "image_hw" in probe:
            h, w = (float(v) for v in probe["image_hw"][i])
        if h is not None:
            rows[:, [0, 2]] = rows[:, [0, 2]].clip(0, w)
            rows[:, [1, 3]] = rows[:, [1, 3]].clip(0, h)
        dets.extend(detections_from_nms(iid, rows, cat_ids))
    if progress is not None:
        progress(len(decoded), len(decoded), what)
    return dets


def _subset_file(coco: dict, ids: set[int], path: Path) -> Path:
    """The annotations of the images that were run: unseen images must not count as misses."""
    subset = dict(coco)
    subset["images"] = [im for im in coco["images"] if int(im["id"]) in ids]
    subset["annotations"] = [a for a in coco.get("annotations", []) if int(a["image_id"]) in ids]
    subset.setdefault("categories", [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(subset))
    return path


def _scores(m: dict) -> dict:
    return {k: round(float(v), 6) for k, v in m.items()}


def evaluate(ctx: OpContext) -> None:
    """COCO mAP of PyTorch fp32 and the built model: against the annotations when there are any
    ("kind": "labels"), else against the fp32 PyTorch model's own detections ("kind": "agreement")."""
    from ..runtime.metrics import coco_map

    p = ctx.params
    meta = _meta(ctx.inputs["meta"])
    probe = load_npz(ctx.inputs["probe"])
    got, ref = decode_built(ctx.inputs["outputs"], p["head"], meta, load_npz(ctx.inputs["reference"])["decoded"])
    n = len(probe["images"])
    if len(ref) != n or len(got) != n:
        raise ToolchainError(f"evaluate: {n} probe images but {len(ref)} reference and {len(got)} built outputs")
    conf, iou = float(p["conf_thres"]), float(p["iou_thres"])
    head = p["head"]
    if "annotations" not in ctx.inputs:
        metrics = _agreement(ctx, meta, probe, ref, got, conf, iou)
    else:
        coco = read_coco(ctx.inputs["annotations"])
        ids = {int(i) for i in probe["image_ids"].tolist()}
        images = [im for im in coco["images"] if int(im["id"]) in ids]
        if not images:
            raise UserError(f"dataset.eval.annotations: {ctx.inputs['annotations']} describes none of the probe images")
        ann_file = _subset_file(coco, ids, Path(ctx.scratch) / "annotations.eval.json")
        cat_ids, mapping = _category_map(meta.get("names") or [], coco)
        if not cat_ids:
            raise UserError(f"dataset.eval.annotations: {ctx.inputs['annotations']} has no categories")
        sizes = {int(im["id"]): (float(im["height"]), float(im["width"]))
                 for im in images if "height" in im and "width" in im}
        m_ref = coco_map(_detections(ref, probe, cat_ids, conf, iou, sizes, head, meta, ctx.progress,
                                     "eval images, PyTorch"), ann_file)
        m_got = coco_map(_detections(got, probe, cat_ids, conf, iou, sizes, head, meta, ctx.progress,
                                     "eval images, built"), ann_file)
        metrics = {
            "kind": "labels",
            "pytorch_fp32": _scores(m_ref),
            "built": _scores(m_got),
            "delta_mAP50_95": round((m_got["mAP50_95"] - m_ref["mAP50_95"]) * 100.0, 4),
            "images": n,
        }
        ctx.results["category_mapping"] = mapping
    ctx.outputs["metrics.json"].write_text(json.dumps(metrics, indent=2) + "\n")
    ctx.results["metrics"] = metrics


def _agreement(ctx: OpContext, meta: dict, probe: dict, ref, got, conf: float, iou: float) -> dict:
    """No labels: the fp32 PyTorch model's detections scored at least `agreement_conf` are the ground
    truth. The built model's mAP against them is its agreement; PyTorch's own (about 1.0, not exactly:
    COCO's 100-detection cap and its boxes scored below the bar) is what a perfect build reaches."""
    from ..runtime.metrics import coco_map

    names = meta.get("names") or []
    cat_ids = list(range(len(names)))
    bar = float(ctx.params["agreement_conf"])
    head = ctx.params["head"]
    pseudo = _detections(ref, probe, cat_ids, bar, iou, {}, head, meta)
    if not pseudo:
        raise UserError(f"evaluate.agreement_conf: the fp32 PyTorch model detects nothing scored >= {bar} in the "
                        f"{len(probe['images'])} images of dataset.eval.images, so there is nothing to agree with; "
                        "lower it or give dataset.eval.annotations")
    hw = probe["image_hw"]
    coco = {"images": [{"id": int(i), "height": int(h), "width": int(w), "file_name": str(f)}
                       for i, (h, w), f in zip(probe["image_ids"].tolist(), hw.tolist(), probe["file_names"].tolist())],
            "annotations": [{"id": k + 1, "image_id": d["image_id"], "category_id": d["category_id"], "bbox": d["bbox"],
                             "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0} for k, d in enumerate(pseudo)],
            "categories": [{"id": k, "name": str(n)} for k, n in enumerate(names)]}
    ann_file = Path(ctx.scratch) / "agreement.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco))
    m_ref = coco_map(_detections(ref, probe, cat_ids, conf, iou, {}, head, meta, ctx.progress,
                                 "eval images, PyTorch"), ann_file)
    m_got = coco_map(_detections(got, probe, cat_ids, conf, iou, {}, head, meta, ctx.progress,
                                 "eval images, built"), ann_file)
    return {
        "kind": "agreement",
        "agreement_mAP50_95": round(float(m_got["mAP50_95"]), 6),
        "agreement_mAP50": round(float(m_got["mAP50"]), 6),
        "fp32_self_agreement": _scores(m_ref),
        "delta_agreement": round((m_got["mAP50_95"] - m_ref["mAP50_95"]) * 100.0, 4),
        "agreement_conf": bar,
        "reference_boxes": len(pseudo),
        "images": len(probe["images"]),
    }
