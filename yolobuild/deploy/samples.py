"""Golden samples: a few evaluation images and the detections yolobuild's checked pipeline found in them.

The detections come from the outputs the build's own artifact (or its vendor simulator) produced on
the probe images, the very outputs parity and mAP were judged on, decoded by runtime.decode and
filtered by runtime.nms. `deploy/infer.py --check` reruns the images through its own code and the
board runtime and compares.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

# What --check allows. Box corners: 2 px plus 1% of the box's longer side, in original-image pixels: an
# fp32 rerun agrees to ~1e-4 px, a board NPU's int8 rounding against its simulator moves a box by well under a
# pixel, while the mistakes a port makes (a wrong letterbox offset, stride or anchor, a missing sigmoid) move
# boxes by tens of pixels. Score: 0.02, about ten int8 steps of a sigmoid output near 0.5.
# threshold_margin: a detection scored this close to the threshold may be missing on one side.
TOLERANCE = {"box_px": 2.0, "box_rel": 0.01, "score": 0.02, "threshold_margin": 0.02}
COUNT = 4
DEPLOY_CONF = 0.25
DEPLOY_IOU = 0.45
MAX_DET = 100


def random_weights_threshold(rows: list[np.ndarray], per_image: int = 3) -> float:
    """Random weights score everything about alike: a threshold that leaves every sample image at least
    `per_image` boxes before NMS, so expected.json holds detections in each and a moved one is noticed."""
    kth = []
    for r in rows:
        s = np.sort((r[:, 5:] * r[:, 4:5]).max(1)[r[:, 4] > 0])[::-1]
        if len(s):
            kth.append(s[min(per_image, len(s) - 1)])
    if not kth:
        return DEPLOY_CONF
    return float(np.floor(min(kth) * 1e6) / 1e6)


def topk_random_threshold(rows: list[np.ndarray], per_image: int = 3) -> float:
    """random_weights_threshold for the top-k head's rows (x1, y1, x2, y2, score, class; best first)."""
    kth = [r[min(per_image, len(r) - 1), 4] for r in rows if len(r)]
    return float(np.floor(min(kth) * 1e6) / 1e6) if kth else DEPLOY_CONF


def _source_path(name: str, root: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() else root / path


def tolerance_for(expected: list[dict], conf: float) -> dict:
    """TOLERANCE, with the threshold margin narrowed where every score sits just above the threshold (random
    weights): otherwise every detection would count as borderline and a moved one would go unnoticed."""
    scores = [d["score"] for e in expected for d in e["detections"]]
    if not scores:
        return dict(TOLERANCE)
    return {**TOLERANCE, "threshold_margin": round(min(TOLERANCE["threshold_margin"], (max(scores) - conf) / 4), 8)}


def image_detections(rows: np.ndarray, letterbox_row, hw: tuple[int, int], meta: dict, conf: float,
                     head: str = "decoded") -> list[dict]:
    """One image's decoded (or top-k) rows -> [{"class", "name", "score", "box" (x1, y1, x2, y2 in image pixels)}]."""
    from ..runtime.decode import final_detections
    from ..runtime.preprocess import Letterbox

    dets = final_detections(rows, head, meta, conf, DEPLOY_IOU, MAX_DET)
    s, px, py = (float(v) for v in letterbox_row)
    h, w = hw
    boxes = Letterbox(scale=s, pad_x=px, pad_y=py).to_image(dets[:, :4]) if len(dets) else dets[:, :4]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return [{"class": int(c), "name": meta["names"][int(c)], "score": round(float(sc), 6),
             "box": [round(float(v), 3) for v in box]} for box, sc, c in zip(boxes, dets[:, 4], dets[:, 5])]


def write_samples(outputs_npz: Path, probe_npz: Path, images: Path, meta: dict, head: str, out: Path,
                  random: bool) -> tuple[dict, dict, dict]:
    """Copy up to COUNT probe images into out/; return (expected.json content, postprocess settings, tolerance)."""
    from ..ops.check import built_outputs
    from ..ops.inputs import resolve_image_set
    from ..runtime.arrays import load_npz
    from ..runtime.decode import TOPK, nms_input, to_decoded

    _, arrays = built_outputs(outputs_npz)
    decoded = to_decoded(arrays, head, meta)
    probe = load_npz(probe_npz)
    _, _, root = resolve_image_set(images, "dataset.eval.images")
    n = min(COUNT, len(decoded), len(probe["file_names"]))
    rows = [decoded[i] if head == TOPK else nms_input(decoded[i], meta) for i in range(n)]
    conf = (topk_random_threshold(rows) if head == TOPK else random_weights_threshold(rows)) if random else DEPLOY_CONF
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        src = _source_path(str(probe["file_names"][i]), root)
        name = f"{i:02d}_{src.name}"
        shutil.copyfile(src, out / name)
        h, w = (int(v) for v in probe["image_hw"][i])
        entries.append({"file": name, "width": w, "height": h,
                        "detections": image_detections(decoded[i], probe["letterbox"][i], (h, w), meta, conf, head)})
    post = {"conf_threshold": conf, "iou_threshold": DEPLOY_IOU, "max_det": MAX_DET, "class_aware": True,
            "score": "class score" if meta.get("head_kind") == "anchor_free" else "objectness * class score",
            **({"note": "random weights: the threshold keeps a few boxes an image so the samples can be checked"}
               if random else {})}
    expected = {"source": "yolobuild's checked outputs of this build's model on these images (the ones parity "
                          "was judged on), decoded and filtered by yolobuild",
                "conf_threshold": conf, "iou_threshold": DEPLOY_IOU, "images": entries}
    return expected, post, tolerance_for(entries, conf)
