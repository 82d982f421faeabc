"""Confidence filtering and class-aware greedy NMS in numpy (no torchvision here)."""
from __future__ import annotations

import numpy as np


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    out[:, 0:2] = b[:, 0:2] - b[:, 2:4] / 2
    out[:, 2:4] = b[:, 0:2] + b[:, 2:4] / 2
    return out


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-9)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou_one_to_many(boxes[i], boxes[order[1:]])
        order = order[1:][ious <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


def non_max_suppression(decoded: np.ndarray, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        max_det: int = 300, max_wh: float = 7680.0) -> np.ndarray:
    """One image's (N, 5+nc) predictions -> (K, 6) rows of x1, y1, x2, y2, score, class."""
    pred = decoded[decoded[:, 4] > conf_thres]
    if not len(pred):
        return np.zeros((0, 6), dtype=np.float32)
    scores_all = pred[:, 5:] * pred[:, 4:5]
    cls = scores_all.argmax(1)
    score = scores_all[np.arange(len(pred)), cls]
    mask = score > conf_thres
    boxes, score, cls = xywh_to_xyxy(pred[mask, :4]), score[mask], cls[mask]
    if not len(boxes):
        return np.zeros((0, 6), dtype=np.float32)
    keep = greedy_nms(boxes + cls[:, None] * max_wh, score, iou_thres)[:max_det]
    return np.concatenate((boxes[keep], score[keep, None], cls[keep, None].astype(boxes.dtype)), 1).astype(np.float32)
