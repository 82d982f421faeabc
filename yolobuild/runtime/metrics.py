"""COCO box mAP with faster-coco-eval (imported lazily, its printing silenced)."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np


def detections_from_nms(image_id: int, rows, category_ids: Sequence[int]) -> list[dict]:
    """(K, 6) rows of x1, y1, x2, y2, score, class index (original-image pixels) -> COCO results.

    `category_ids[k]` is the COCO category id of class index k.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    out = []
    for x1, y1, x2, y2, score, cls in rows:
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_ids[int(cls)]),
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(score),
        })
    return out


def _quiet(*_args, **_kwargs):
    return None


def coco_map(detections: list[dict], annotations_path: str | Path) -> dict[str, float]:
    """{"mAP50_95", "mAP50"} of `detections` against a COCO annotation file (0.0 when none)."""
    if not detections:
        return {"mAP50_95": 0.0, "mAP50": 0.0}
    from faster_coco_eval import COCO, COCOeval_faster

    dets = [{"image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
             "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])} for d in detections]
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            gt = COCO(str(annotations_path), print_function=_quiet)
            dt = gt.loadRes(dets)
            ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=_quiet)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = ev.stats
    finally:
        logger.setLevel(level)
    return {"mAP50_95": max(float(stats[0]), 0.0), "mAP50": max(float(stats[1]), 0.0)}
