"""Decode head outputs on the host, in numpy, for every head layout and head kind.

Every layout is reduced to the same fields so parity is checked per field: one overall cosine
hides collapsed scores.

* anchor-based heads (yolov5, mmyolo-yolov5, yolov3): decoded (bs, N, 5+nc) = xywh, objectness,
  class scores; fields boxes, objectness, class_scores.
* anchor-free heads (yolov8, `meta["head_kind"] == "anchor_free"`): decoded (bs, N, 4+nc) = xywh,
  class scores (upstream's output transposed); there is no objectness, so fields are boxes and
  class_scores only. `nms_input` inserts an objectness of 1 so the shared NMS (score = obj * cls)
  ranks by class score alone.
* the end-to-end top-k layout (YOLO26 `graph.head=topk`): (bs, K, 6) rows x1, y1, x2, y2, score,
  class, already the final detections (no NMS). PyTorch's decoded reference is brought to the same
  rows by `topk_rows` (numpy, written from upstream's description: the K best anchor points by their
  best class, then the K best (point, class) pairs among them) and compared row by row after
  `match_topk`; fields boxes and scores.
"""
from __future__ import annotations

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_raw(levels: list[np.ndarray], anchors_px: list[list[float]], strides: list[float], nc: int) -> np.ndarray:
    """Per-level conv outputs (bs, na*(5+nc), ny, nx) -> (bs, N, 5+nc) decoded like Detect."""
    no = nc + 5
    outs = []
    for t, anchors, stride in zip(levels, anchors_px, strides):
        bs, c, ny, nx = t.shape
        na = c // no
        y = _sigmoid(t.reshape(bs, na, no, ny, nx).transpose(0, 1, 3, 4, 2).astype(np.float64))
        yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        grid = np.stack((xv, yv), -1)[None, None] - 0.5
        anchor = np.asarray(anchors, dtype=np.float64).reshape(1, na, 1, 1, 2)
        xy = (y[..., 0:2] * 2 + grid) * stride
        wh = (y[..., 2:4] * 2) ** 2 * anchor
        outs.append(np.concatenate((xy, wh, y[..., 4:]), -1).reshape(bs, -1, no))
    return np.concatenate(outs, 1).astype(np.float32)


def decode_raw_dfl(levels: list[np.ndarray], strides: list[float], nc: int) -> np.ndarray:
    """Anchor-free (YOLOv8) per-level outputs (bs, 4*reg_max+nc, ny, nx) -> (bs, N, 4+nc).

    Box: softmax over reg_max bins per side, expectation = distance (left, top, right, bottom) in
    grid units from the cell centre; class scores: sigmoid. reg_max 1 (YOLO26, no DFL): the box
    channels are the distances themselves."""
    outs = []
    for t, stride in zip(levels, strides):
        bs, c, ny, nx = t.shape
        reg_max = (c - nc) // 4
        t = t.astype(np.float64).reshape(bs, c, ny * nx)
        box = t[:, :4 * reg_max].reshape(bs, 4, reg_max, -1)
        if reg_max == 1:
            dist = box[:, :, 0]
        else:
            e = np.exp(box - box.max(2, keepdims=True))
            dist = (e / e.sum(2, keepdims=True) * np.arange(reg_max).reshape(1, 1, -1, 1)).sum(2)   # (bs, 4, A)
        yv, xv = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5, indexing="ij")
        pts = np.stack((xv.ravel(), yv.ravel()), 0)[None]                                       # (1, 2, A)
        lt, rb = dist[:, :2], dist[:, 2:]
        xy = (pts + (rb - lt) / 2) * stride
        wh = (lt + rb) * stride
        outs.append(np.concatenate((xy, wh, _sigmoid(t[:, 4 * reg_max:])), 1).transpose(0, 2, 1))
    return np.concatenate(outs, 1).astype(np.float32)


def decode_raw_darknet(levels: list[np.ndarray], anchors_px: list[list[float]], strides: list[float], nc: int,
                       scale_x_y: float = 1.0) -> np.ndarray:
    """Darknet [yolo] layers: xy = (sigmoid * s - (s - 1) / 2 + cell) * stride, wh = exp(t) * anchor."""
    no = nc + 5
    outs = []
    for t, anchors, stride in zip(levels, anchors_px, strides):
        bs, c, ny, nx = t.shape
        na = c // no
        t = t.reshape(bs, na, no, ny, nx).transpose(0, 1, 3, 4, 2).astype(np.float64)
        yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        grid = np.stack((xv, yv), -1)[None, None]
        anchor = np.asarray(anchors, dtype=np.float64).reshape(1, na, 1, 1, 2)
        xy = (_sigmoid(t[..., 0:2]) * scale_x_y - (scale_x_y - 1) / 2 + grid) * stride
        wh = np.exp(t[..., 2:4]) * anchor
        outs.append(np.concatenate((xy, wh, _sigmoid(t[..., 4:])), -1).reshape(bs, -1, no))
    return np.concatenate(outs, 1).astype(np.float32)


def is_anchor_free(meta: dict | None) -> bool:
    return bool(meta) and meta.get("head_kind") == "anchor_free"


def to_decoded(outputs: list[np.ndarray], layout: str, meta: dict) -> np.ndarray:
    """Any head layout's outputs -> one (bs, N, 5+nc) array ((bs, N, 4+nc) for anchor-free heads)."""
    if layout == "raw":
        kind = meta.get("decode", "yolov5")
        if kind == "dfl":
            return decode_raw_dfl(outputs, meta["strides"], meta["nc"])
        if kind == "darknet":
            return decode_raw_darknet(outputs, meta["anchors_px"], meta["strides"], meta["nc"],
                                      float(meta.get("scale_x_y", 1.0)))
        return decode_raw(outputs, meta["anchors_px"], meta["strides"], meta["nc"])
    if layout == "split":
        return np.concatenate(outputs, -1)
    if layout in ("decoded", TOPK):
        return outputs[0]
    raise ValueError(f"unknown head layout {layout!r}")


TOPK = "topk"


def topk_rows(decoded: np.ndarray, k: int) -> np.ndarray:
    """Anchor-free decoded (bs, N, 4+nc) xywh + class scores -> (bs, k, 6) x1, y1, x2, y2, score, class: the k
    anchor points with the highest best-class score, then the k highest (point, class) scores among them, best
    first (ties: the lower index first, as a stable sort gives)."""
    bs, n, c = decoded.shape
    k = min(k, n)
    out = np.zeros((bs, k, 6), dtype=np.float32)
    for b in range(bs):
        rows = decoded[b].astype(np.float64)
        scores = rows[:, 4:]
        points = np.argsort(-scores.max(1), kind="stable")[:k]
        cand = scores[points]                                   # (k, nc)
        flat = np.argsort(-cand.ravel(), kind="stable")[:k]
        pt, cls = points[flat // cand.shape[1]], flat % cand.shape[1]
        xy, wh = rows[pt, :2], rows[pt, 2:4]
        out[b] = np.concatenate((xy - wh / 2, xy + wh / 2, cand.ravel()[flat, None], cls[:, None]), 1)
    return out


def match_topk(got: np.ndarray, decoded: np.ndarray, rel: float = 1e-3) -> np.ndarray:
    """The reference rows to compare `got`'s top-k rows (bs, k, 6) with, from PyTorch's decoded rows (bs, N, 4+nc).

    Scores: the reference's own top-k scores, place by place (both lists are sorted, so equal scores that two
    runtimes rank in another order do not matter). Boxes and classes: for each built row, the reference's
    (anchor point, class) pair of that class whose score is within `rel` of the best score and whose box is
    nearest: near-equal scores (random weights score every point alike) may pick other pairs of equal
    score, which are as right. A built row without such a pair is compared with the reference row in its place,
    so a wrong class or box shows in the boxes field."""
    ref = topk_rows(decoded, got.shape[1])
    out = ref.copy()
    for b in range(len(got)):
        rows = decoded[b].astype(np.float64)
        xyxy = np.concatenate((rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2), 1)
        scores = rows[:, 4:].copy()
        tol = rel * max(float(scores.max(initial=0.0)), 1e-12)
        for i, (x1, y1, x2, y2, score, c) in enumerate(got[b].astype(np.float64)):
            c = int(c)
            if not 0 <= c < scores.shape[1]:
                continue
            cand = np.flatnonzero(np.abs(scores[:, c] - score) <= tol)
            if not len(cand):
                continue
            j = cand[np.argmin(np.abs(xyxy[cand] - (x1, y1, x2, y2)).sum(1))]
            out[b, i, :4], out[b, i, 5] = xyxy[j], c
            scores[j, c] = np.inf                   # each pair stands beside one built row
    return out


def comparable(got_outputs: list[np.ndarray], layout: str, ref_decoded: np.ndarray,
               meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """(built, reference) in one shape for the per-field comparison: decoded rows, or for the top-k layout the
    built rows and the reference rows they are (match_topk)."""
    got = to_decoded(got_outputs, layout, meta)
    if layout != TOPK:
        return got, ref_decoded
    return got, match_topk(got, ref_decoded)


def final_detections(rows: np.ndarray, layout: str, meta: dict | None, conf: float, iou: float,
                     max_det: int = 300) -> np.ndarray:
    """One image's decoded (or top-k) rows -> (K, 6) x1, y1, x2, y2, score, class: NMS over decoded rows; the
    top-k layout's rows are final already (score above `conf`, best first)."""
    if layout == TOPK:
        return rows[rows[:, 4] > conf][:max_det].astype(np.float32)
    from .nms import non_max_suppression

    return non_max_suppression(nms_input(rows, meta), conf_thres=conf, iou_thres=iou, max_det=max_det)


def fields(decoded: np.ndarray, meta: dict | None = None, layout: str = "decoded") -> dict[str, np.ndarray]:
    """Split a decoded array into the fields parity is judged on (no objectness for anchor-free heads; the
    top-k layout's rows: corner boxes and scores)."""
    if layout == TOPK:
        return {"boxes": decoded[..., 0:4], "scores": decoded[..., 4]}
    if is_anchor_free(meta):
        return {"boxes": decoded[..., 0:4], "class_scores": decoded[..., 4:]}
    return {"boxes": decoded[..., 0:4], "objectness": decoded[..., 4], "class_scores": decoded[..., 5:]}


def nms_input(decoded: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """(…, 5+nc) rows for runtime.nms: anchor-free rows get objectness 1 (score = class score)."""
    if not is_anchor_free(meta):
        return decoded
    ones = np.ones(decoded.shape[:-1] + (1,), dtype=decoded.dtype)
    return np.concatenate((decoded[..., :4], ones, decoded[..., 4:]), -1)
