"""Anchors for anchor-based heads, fitted to the training boxes."""
from __future__ import annotations

import numpy as np


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    inter = np.minimum(wh[:, None], anchors[None]).prod(2)
    return inter / (wh.prod(1)[:, None] + anchors.prod(1)[None] - inter)


def fit_anchors(wh: np.ndarray, n: int = 9, seed: int = 0, iters: int = 300, restarts: int = 8) -> np.ndarray:
    """k-means on box (w, h) with 1 - IoU distance; best of several restarts by mean best IoU."""
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centers = wh[rng.choice(len(wh), n, replace=False)].copy()
        for _ in range(iters):
            assign = wh_iou(wh, centers).argmax(1)
            new = np.array([np.median(wh[assign == k], 0) if np.any(assign == k) else centers[k] for k in range(n)])
            if np.allclose(new, centers):
                break
            centers = new
        fit = wh_iou(wh, centers).max(1).mean()
        if fit > best_fit:
            best, best_fit = centers, fit
    return best[np.argsort(best.prod(1))]


def anchor_report(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> str:
    r = wh[:, None] / anchors[None]
    worst = np.maximum(r, 1 / r).max(2)  # (n, 9)
    bpr = (worst.min(1) < thr).mean()
    per_target = (worst < thr).sum(1).mean()
    return f"best possible recall {bpr:.4f}, anchors above threshold per target {per_target:.2f}, " \
           f"mean best IoU {wh_iou(wh, anchors).max(1).mean():.3f}"
