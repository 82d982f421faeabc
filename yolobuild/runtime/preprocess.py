"""Letterbox preprocessing, the one the recipe states (resize keeping aspect, pad, RGB, /255).

Calibration, parity and evaluation all call this one function so the numbers a
vendor calibrator sees match what the detector was checked with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, list_images  # noqa: F401  (re-exported for callers)


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the network input: scale, then (left, top) padding."""

    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        out = boxes_xyxy.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        return out


def load_rgb(path: str | Path) -> np.ndarray:
    """HWC uint8 RGB; raises ValueError naming the file when it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def letterbox(rgb: np.ndarray, height: int, width: int, pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize with unchanged aspect ratio into (height, width), centred, padded with pad_value."""
    from PIL import Image

    h0, w0 = rgb.shape[:2]
    scale = min(height / h0, width / w0)
    nh, nw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    resized = rgb if (nh, nw) == (h0, w0) else np.asarray(
        Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas, Letterbox(scale=scale, pad_x=float(left), pad_y=float(top))


def to_tensor(canvas: np.ndarray) -> np.ndarray:
    """HWC uint8 RGB -> 1x3xHxW float32 in [0, 1]."""
    return (canvas.transpose(2, 0, 1)[None].astype(np.float32)) / 255.0


def preprocess(path: str | Path, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    canvas, box = letterbox(load_rgb(path), height, width)
    return to_tensor(canvas), box

