"""Checks of a calibration set, before any quantizer reads it: int8 ranges taken from the wrong images
give a model that compiles and runs and is quietly worse.

Each check returns {"check", "ok", "detail"}; a failed one's detail is the one line the build prints
as a warning (the calibrate op records them all in the manifest). Numpy only.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

MIN_IMAGES = 16          # fewer and min/max or histogram ranges follow single images
# Statistics (with at least MIN_IMAGES on each side): a channel's mean apart by more than this many of the
# evaluation images' pixel standard deviations, or brightness histograms (32 bins) whose total variation
# distance exceeds TV_LIMIT. Two disjoint draws of 16-24 demo shapes images sit within 0.45 std and 0.14
# TV (8 images: 0.95 and 0.26, hence the minimum); the same images at 0.6x brightness at 1.16 and 0.61,
# saved as BGR at 1.99 (blue) on a camera's warm tint.
MEAN_SHIFT_LIMIT = 1.0
TV_LIMIT = 0.35
BORDER_SHARE = 0.25      # this share of the images with uniform bands along two opposite edges: pre-letterboxed
ASPECT_LIMIT = 0.2       # median aspect ratios (w / h) apart by more than 20%


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def count_check(used: int, requested: int, available: int, key: str = "dataset.calib") -> dict:
    if available < requested:
        return _check("count", False, f"{key}.path: {requested} calibration images asked for "
                                      f"(dataset.calib.count), {available} available; using {used}")
    if used < MIN_IMAGES:
        return _check("count", False, f"{key}.count: {used} calibration image(s); int8 ranges from fewer than "
                                      f"{MIN_IMAGES} follow single images: give at least {MIN_IMAGES}")
    return _check("count", True, f"{used} images")


def duplicate_check(canvases: np.ndarray, names: Sequence[str]) -> dict:
    """Identical network inputs (the letterboxed canvas hashed): each copy weighs its image again."""
    first: dict[str, int] = {}
    pairs = []
    for i, canvas in enumerate(canvases):
        digest = hashlib.sha256(np.ascontiguousarray(canvas).tobytes()).hexdigest()
        if digest in first:
            pairs.append((first[digest], i))
        else:
            first[digest] = i
    if not pairs:
        return _check("duplicates", True, "no two images alike")
    a, b = pairs[0]
    return _check("duplicates", False, f"dataset.calib.path: {len(pairs)} of {len(canvases)} calibration images "
                                       f"duplicate others after letterbox (e.g. {names[b]} = {names[a]}); each copy "
                                       "weighs that image again in the int8 ranges: remove them")


def _content(canvases: np.ndarray, boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The pixels of the images themselves (letterbox padding left out), (N, 3) float32."""
    parts = []
    for canvas, (scale, px, py), (h, w) in zip(canvases, boxes, sizes):
        nh, nw = max(1, round(float(h) * float(scale))), max(1, round(float(w) * float(scale)))
        top, left = int(py), int(px)
        parts.append(canvas[top:top + nh, left:left + nw].reshape(-1, 3)[::7])   # every 7th pixel is plenty
    return np.concatenate(parts).astype(np.float32)


def _luma_hist(px: np.ndarray) -> np.ndarray:
    luma = px @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    hist, _ = np.histogram(luma, bins=32, range=(0, 256))
    return hist / max(hist.sum(), 1)


def _mean_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.mean(0) - b.mean(0)) / np.maximum(b.std(0), 1.0)


def statistics_check(calib: tuple, evaluation: tuple) -> dict:
    """Calibration pixels against the evaluation images' (each (canvases, letterbox rows, original h/w))."""
    if min(len(calib[0]), len(evaluation[0])) < MIN_IMAGES:
        return _check("statistics", True, f"skipped: {len(calib[0])} calibration and {len(evaluation[0])} "
                                          f"evaluation images; fewer than {MIN_IMAGES} on a side tell nothing")
    c, e = _content(*calib), _content(*evaluation)
    shift = _mean_shift(c, e)
    tv = float(0.5 * np.abs(_luma_hist(c) - _luma_hist(e)).sum())
    figures = (f"channel means apart by {', '.join(f'{s:.2f}' for s in shift)} evaluation std (R, G, B), "
               f"brightness histogram distance {tv:.2f}")
    if shift.max() <= MEAN_SHIFT_LIMIT and tv <= TV_LIMIT:
        return _check("statistics", True, figures)
    hint = ""
    swapped = _mean_shift(c[:, ::-1], e)
    if swapped.max() < 0.5 * shift.max() and shift.max() > MEAN_SHIFT_LIMIT:
        hint = "; red and blue look swapped (images saved as BGR?)"
    elif c.mean() < 0.8 * e.mean():
        hint = "; the calibration images are darker"
    elif c.mean() > 1.25 * e.mean():
        hint = "; the calibration images are brighter"
    return _check("statistics", False, f"dataset.calib.path: the calibration images are far from the evaluation "
                                       f"images ({figures}){hint}: int8 ranges fit what the model will not see; "
                                       "calibrate on images like the ones it will run on")


def uniform_bands(rgb: np.ndarray, share: float = 0.02) -> float | None:
    """The value of uniform bands along two opposite edges (an image letterboxed or padded already), else None."""
    h, w = rgb.shape[:2]
    for axis, side in ((0, h), (1, w)):
        k = max(2, int(round(side * share)))
        if side < 4 * k:
            continue
        first = rgb[:k] if axis == 0 else rgb[:, :k]
        last = rgb[-k:] if axis == 0 else rgb[:, -k:]
        if first.std() < 2.0 and last.std() < 2.0 and abs(float(first.mean()) - float(last.mean())) < 4.0:
            return float(first.mean())
    return None


def letterbox_check(bands: Sequence[float | None], sizes: Sequence[tuple[int, int]], pad_value: int,
                    height: int, width: int, eval_sizes: Sequence[tuple[int, int]] | None) -> list[dict]:
    """What the recipe's letterbox cannot see: images padded before (another pad value, another size) and
    calibration images of another shape than the evaluation images (resized or cropped before)."""
    out = []
    padded = [(b, s) for b, s in zip(bands, sizes) if b is not None
              and (abs(b - pad_value) > 8 or tuple(s) != (height, width))]
    if bands and len(padded) >= BORDER_SHARE * len(bands):
        value, (h, w) = padded[0]
        out.append(_check("letterbox", False, f"dataset.calib.path: {len(padded)} of {len(bands)} calibration images "
                                              f"carry uniform borders already (value {value:.0f}, e.g. {w}x{h}): they "
                                              f"look letterboxed or padded before; yolobuild letterboxes to {width}x"
                                              f"{height} with pad {pad_value} (dataset.preprocess) itself: give the "
                                              "original images"))
    else:
        out.append(_check("letterbox", True, f"{len(padded)} of {len(bands)} images padded before"))
    if eval_sizes is not None and len(eval_sizes) and len(sizes):
        ratio_c = float(np.median([w / h for h, w in sizes]))
        ratio_e = float(np.median([w / h for h, w in eval_sizes]))
        apart = abs(ratio_c - ratio_e) / ratio_e
        ok = apart <= ASPECT_LIMIT
        out.append(_check("aspect", ok, f"median aspect (width / height) {ratio_c:.2f} for calibration, "
                                        f"{ratio_e:.2f} for evaluation images" if ok else
                          f"dataset.calib.path: the calibration images are {ratio_c:.2f}:1 (median width / height), "
                          f"the evaluation images {ratio_e:.2f}:1: resized or cropped before? objects then reach "
                          "the network at other scales than at deploy; give images as the camera takes them"))
    return out
