"""Decode head outputs on the host, in numpy, for every head layout and head kind.

Every layout is reduced to the same fields so parity is checked per field: one overall cosine
hides collapsed scores.

* anchor-based heads (yolov5, mmyolo-yolov5, yolov3): decoded (bs, N, 5+nc) = xywh, objectness,
  class scores; fields boxes, objectness, class_scores.
* anchor-free heads (yolov8, `meta["head_kind"] == "anchor_free"`): decoded (bs, N, 4+nc) = xywh,
  class scores (upstream's output transposed); there is no objectness, so fields are boxes and
  class_scores only. `nms_input` inserts an objectness of 1 so the shared NMS (score = obj * cls)
  ranks by class score alone.
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
    if layout == "decoded":
        return outputs[0]
    raise ValueError(f"unknown head layout {layout!r}")


def fields(decoded: np.ndarray, meta: dict | None = None) -> dict[str, np.ndarray]:
    """Split a decoded array into the fields parity is judged on (no objectness for anchor-free heads)."""
    if is_anchor_free(meta):
        return {"boxes": decoded[..., 0:4], "class_scores": decoded[..., 4:]}
    return {"boxes": decoded[..., 0:4], "objectness": decoded[..., 4], "class_scores": decoded[..., 5:]}


def nms_input(decoded: np.ndarray, meta: dict | None = None) -> np.ndarray:
    """(…, 5+nc) rows for runtime.nms: anchor-free rows get objectness 1 (score = class score)."""
    if not is_anchor_free(meta):
        return decoded
    ones = np.ones(decoded.shape[:-1] + (1,), dtype=decoded.dtype)
    return np.concatenate((decoded[..., :4], ones, decoded[..., 4:]), -1)
