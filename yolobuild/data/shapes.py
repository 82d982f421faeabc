"""Deterministic synthetic detection data: coloured circles, squares and triangles.

Each image is `size` x `size` RGB with 1-6 shapes (about 20-120 px across at 320) on a
textured background (gradient, blobs, stripes, noise). Labels are written as one COCO
json. The same (split, count, size, seed) always gives byte-identical files; each split
draws from its own random stream (the split name is hashed with zlib.crc32, so the
result does not depend on PYTHONHASHSEED). Numpy and Pillow only.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle")

_MAX_OBJECTS = 6
_MAX_OVERLAP = 0.25  # largest share of a new box that an earlier box may cover (and vice versa)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per image: (seed, split, index) -> Generator."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode("utf-8")), int(index)])))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 HxWx3 in [0, 255]: gradient + low-frequency blobs + optional stripes + noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]

    # low-frequency texture: a coarse random grid upsampled (smooth blotches)
    cells = int(rng.integers(3, 9))
    coarse = rng.normal(0, rng.uniform(5, 35), (cells, cells, 3)).astype(np.float32)
    from PIL import Image
    blot = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC))
                     for c in range(3)], -1)
    img = img + blot

    kind = rng.integers(0, 3)
    if kind == 1:  # stripes
        period = rng.uniform(6, 40) / size
        a2 = rng.uniform(0, math.pi)
        phase = (np.cos(a2) * xx + np.sin(a2) * yy) / period
        img = img + (rng.uniform(8, 30) * np.sin(2 * math.pi * phase))[..., None]
    elif kind == 2:  # checker-ish texture
        period = rng.uniform(10, 48) / size
        chk = (np.floor(xx / period) + np.floor(yy / period)) % 2
        img = img + (rng.uniform(6, 25) * (chk - 0.5))[..., None]

    img = img + rng.normal(0, rng.uniform(2, 14), (size, size, 1)).astype(np.float32)
    return img


def _shape_vertices(cls: int, cx: float, cy: float, extent: float, angle: float) -> np.ndarray:
    """Polygon vertices (k, 2) for square (1) or triangle (2) of the given bbox-ish extent."""
    if cls == 1:
        half = extent / 2
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    else:
        r = extent / math.sqrt(3)  # equilateral triangle with side `extent`
        pts = np.array([[r * math.cos(a), r * math.sin(a)]
                        for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)])
        pts[:, 1] += r / 4  # roughly centre the triangle's box on (cx, cy)
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot + np.array([cx, cy])


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """Largest fraction of either box that their intersection covers (xyxy)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    if inter <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / min(area(a), area(b))


def _pick_colour(rng: np.random.Generator, region_mean: np.ndarray) -> tuple[int, int, int]:
    """A saturated-ish colour that stands off the local background."""
    best, best_d = None, -1.0
    for _ in range(8):
        col = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(col - region_mean))
        if d > best_d:
            best, best_d = col, d
        if d > 110:
            break
    return tuple(int(v) for v in best)


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image (HxWx3 uint8) and its objects [(class_index, [x, y, w, h]), ...]."""
    from PIL import Image, ImageDraw

    bg = _background(rng, size)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    scale = size / 320.0
    n = int(rng.integers(1, _MAX_OBJECTS + 1))
    boxes: list[np.ndarray] = []
    objects: list[tuple[int, list[float]]] = []
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(CLASS_NAMES)))
            extent = float(np.exp(rng.uniform(math.log(20), math.log(120)))) * scale
            angle = math.radians(rng.uniform(-25, 25)) if cls else 0.0
            margin = extent * 0.75 + 1
            cx, cy = rng.uniform(margin, size - margin, 2)
            if cls == 0:
                r = extent / 2
                box = np.array([cx - r, cy - r, cx + r, cy + r])
                pts = None
            else:
                pts = _shape_vertices(cls, cx, cy, extent, angle)
                box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
            box = np.clip(box, 0, size)
            if any(_covered(box, b) > _MAX_OVERLAP for b in boxes):
                continue
            x0, y0, x1, y1 = (int(v) for v in box)
            region = bg[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].reshape(-1, 3)
            colour = _pick_colour(rng, region.mean(0))
            outline = None
            if rng.random() < 0.3:
                outline = tuple(int(v * 0.5) for v in colour)
            if cls == 0:
                draw.ellipse([float(v) for v in box], fill=colour, outline=outline,
                             width=max(1, int(2 * scale)))
            else:
                draw.polygon([(float(x), float(y)) for x, y in pts], fill=colour, outline=outline)
            boxes.append(box)
            objects.append((cls, [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]))
            break
    img = np.asarray(canvas).astype(np.float32)
    img += rng.normal(0, rng.uniform(1, 6), img.shape[:2] + (1,)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def generate(out_dir, split: str, count: int, size: int = 320, seed: int = 0) -> Path:
    """Write `count` images `out_dir/images/{split}_{i:05d}.jpg` and `out_dir/annotations.json`."""
    from . import write_split

    return write_split(out_dir, split, count, size, seed, render, _rng, CLASS_NAMES, "shapes", "shape")
