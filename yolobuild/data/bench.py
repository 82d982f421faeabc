"""Deterministic synthetic detection benchmark that is hard enough for int8 to show its loss.

The shapes demo scores mAP50 = 1.0, so quantization error cannot show there. This set has 12
classes that only the class head can tell apart (a disc, a ring and a striped disc share an
outline; a square, a frame and a checkered square too), objects from about 8 px to 150 px at
320, aspect and rotation jitter, occlusion (later objects cover up to 45% of earlier ones),
objects cut by the image border, cluttered textured backgrounds with distractor strokes and
blobs that belong to no class, and uneven lighting (gain, gamma, a light gradient, blur).

Same contract as yolobuild.data.shapes: `generate(out_dir, split, count, size, seed)` writes
`images/{split}_{i:05d}.jpg` and one COCO `annotations.json`; the same arguments always give
byte-identical files, each image from its own random stream. Numpy and Pillow only.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

CLASS_NAMES = ("disc", "ring", "striped_disc", "square", "frame", "checkered_square",
               "triangle", "diamond", "hexagon", "star", "cross", "arrow")

_MIN_OBJECTS, _MAX_OBJECTS = 3, 14
_MIN_PX, _MAX_PX = 8.0, 150.0            # object extent at 320 px (scaled with the image size)
_MIN_PX_TEXTURED = 16.0                  # a stripe or checker needs a few pixels to exist at all
_MAX_OCCLUDED = 0.45                     # most of an earlier box a later object may cover
_MIN_VISIBLE = 0.6                       # least share of a box kept inside the image
_SUPERSAMPLE = 2                         # masks drawn at 2x and box-filtered: anti-aliased edges


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per image; the split name is hashed with crc32 (no PYTHONHASHSEED)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFF, zlib.crc32(b"bench:" + split.encode("utf-8")), int(index)])))


# --------------------------------------------------------------------------- outlines

def _ring_points(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack((np.cos(a), np.sin(a)), 1) * radius


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _ring_points(2 * points, 1.0, -math.pi / 2) * r[:, None]


_SQUARE = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
_CROSS = np.array([[-.33, -1], [.33, -1], [.33, -.33], [1, -.33], [1, .33], [.33, .33], [.33, 1],
                   [-.33, 1], [-.33, .33], [-1, .33], [-1, -.33], [-.33, -.33]], dtype=float)
_ARROW = np.array([[-1, -.3], [.15, -.3], [.15, -.8], [1, 0], [.15, .8], [.15, .3], [-1, .3]], dtype=float)

# class -> (outer outline in [-1, 1], hole scale or None, fill, rotation range in degrees)
_CLASSES = {
    "disc": (_ring_points(48), None, "solid", 0),
    "ring": (_ring_points(48), (0.5, 0.68), "solid", 0),
    "striped_disc": (_ring_points(48), None, "stripes", 0),
    "square": (_SQUARE, None, "solid", 15),
    "frame": (_SQUARE, (0.5, 0.68), "solid", 15),
    "checkered_square": (_SQUARE, None, "checker", 15),
    "triangle": (_ring_points(3, 1.0, -math.pi / 2) + [0, 0.25], None, "solid", 20),
    "diamond": (np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], dtype=float), None, "solid", 10),
    "hexagon": (_ring_points(6), None, "solid", 30),
    "star": (_star(), None, "solid", 36),
    "cross": (_CROSS, None, "solid", 10),
    "arrow": (_ARROW, None, "solid", 180),
}


def _place(outline: np.ndarray, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Unit outline -> image coordinates: stretched to w x h, rotated, moved to (cx, cy)."""
    pts = outline * np.array([w / 2, h / 2])
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


# --------------------------------------------------------------------------- pixels

def _value_noise(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth HxWx3 noise: a coarse random grid upsampled bicubically."""
    from PIL import Image

    coarse = rng.normal(0, amp, (cells, cells, 3)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC))
                     for c in range(3)], -1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 HxWx3: gradient, noise at two scales and one of stripes, checks or weave."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    img = img + _value_noise(rng, size, int(rng.integers(3, 8)), rng.uniform(5, 30))
    img = img + _value_noise(rng, size, int(rng.integers(16, 48)), rng.uniform(3, 18))
    kind = int(rng.integers(0, 4))
    period = rng.uniform(5, 30) * size / 320
    a2 = rng.uniform(0, math.pi)
    u = (np.cos(a2) * xx + np.sin(a2) * yy) * size / period
    v = (-np.sin(a2) * xx + np.cos(a2) * yy) * size / period
    amp = rng.uniform(6, 28)
    if kind == 1:
        img = img + (amp * np.sin(2 * math.pi * u))[..., None]
    elif kind == 2:
        img = img + (amp * ((np.floor(u) + np.floor(v)) % 2 - 0.5))[..., None]
    elif kind == 3:
        img = img + (amp * 0.5 * (np.sin(2 * math.pi * u) * np.sin(2 * math.pi * v)))[..., None]
    return img


def _mask(polys: list[tuple[np.ndarray, int]], x0: int, y0: int, w: int, h: int):
    """Anti-aliased coverage (h, w) float32 in [0, 1] of polygons drawn in order (value 255 or 0)."""
    from PIL import Image, ImageDraw

    k = _SUPERSAMPLE
    im = Image.new("L", (w * k, h * k), 0)
    d = ImageDraw.Draw(im)
    for pts, value in polys:
        d.polygon([((x - x0) * k, (y - y0) * k) for x, y in pts], fill=value)
    return np.asarray(im.resize((w, h), Image.BOX), dtype=np.float32) / 255.0


def _contrasting(rng: np.random.Generator, ref: np.ndarray, far: float) -> np.ndarray:
    """A colour at least `far` (when found in a few tries) from `ref`."""
    best, best_d = None, -1.0
    for _ in range(8):
        col = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(col - ref))
        if d > best_d:
            best, best_d = col, d
        if d > far:
            break
    return best.astype(np.float32)


def _fill(rng: np.random.Generator, kind: str, colour: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    """(h, w, 3) paint for an object: shaded solid, stripes or checks in two colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(a) * xx / max(w, 1) + np.sin(a) * yy / max(h, 1)
    shade = 1.0 + rng.uniform(0.1, 0.4) * (ramp - 0.5)
    paint = colour * shade[..., None]
    if kind == "solid":
        return paint
    second = _contrasting(rng, colour, 120.0) * shade[..., None]
    period = rng.uniform(3.5, 7.0) * scale
    a = rng.uniform(0, math.pi)
    u = (np.cos(a) * xx + np.sin(a) * yy) / period
    if kind == "stripes":
        on = np.floor(u) % 2
    else:
        v = (-np.sin(a) * xx + np.cos(a) * yy) / period
        on = (np.floor(u) + np.floor(v)) % 2
    return np.where(on[..., None] > 0, second, paint)


def _paint(img: np.ndarray, cover: np.ndarray, paint: np.ndarray, x0: int, y0: int) -> None:
    """Blend `paint` into img where `cover` says, clipped to the image (in place)."""
    size_y, size_x = img.shape[:2]
    h, w = cover.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size_x), min(y0 + h, size_y)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    c = cover[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0, None]
    p = paint[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    region = img[iy0:iy1, ix0:ix1]
    region += (p - region) * c


def _distractor(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """A stroke, an irregular blob or a dot cluster: clutter that is no class."""
    from PIL import Image, ImageDraw

    scale = size / 320
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    kind = int(rng.integers(0, 3))
    ext = float(np.exp(rng.uniform(math.log(10), math.log(90)))) * scale
    cx, cy = rng.uniform(0, size, 2)
    x0, y0 = int(cx - ext) - 2, int(cy - ext) - 2
    w = h = int(2 * ext) + 5
    if kind == 0:        # irregular blob: random radii at jittered angles, never a regular polygon
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = rng.uniform(0.3, 1.0, n) * ext
        pts = np.stack((cx + r * np.cos(ang), cy + r * np.sin(ang)), 1)
        cover = _mask([(pts, 255)], x0, y0, w, h)
    else:
        k = _SUPERSAMPLE
        im = Image.new("L", (w * k, h * k), 0)
        d = ImageDraw.Draw(im)
        if kind == 1:    # a bent stroke
            pts = [(float(v[0] - x0) * k, float(v[1] - y0) * k)
                   for v in np.array([cx, cy]) + rng.uniform(-ext, ext, (int(rng.integers(2, 5)), 2))]
            d.line(pts, fill=255, width=max(1, int(rng.uniform(1, 4) * scale * k)))
        else:            # a cluster of dots
            for _ in range(int(rng.integers(3, 12))):
                px, py = (np.array([cx, cy]) + rng.uniform(-ext, ext, 2) - [x0, y0]) * k
                r = rng.uniform(1, 3) * scale * k
                d.ellipse([px - r, py - r, px + r, py + r], fill=255)
        cover = np.asarray(im.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    _paint(img, cover, np.broadcast_to(colour, (h, w, 3)), x0, y0)


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """Share of box a (xyxy) that box b covers."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((a[2] - a[0]) * (a[3] - a[1]), 1e-6)


def _object(rng: np.random.Generator, size: int):
    """Draw one object's class, outline polygons and unclipped box."""
    scale = size / 320
    cls = int(rng.integers(0, len(CLASS_NAMES)))
    outline, hole, fill, rot = _CLASSES[CLASS_NAMES[cls]]
    lo = _MIN_PX_TEXTURED if fill != "solid" or hole else _MIN_PX
    extent = float(np.exp(rng.uniform(math.log(lo), math.log(_MAX_PX)))) * scale
    aspect = float(np.exp(rng.uniform(-0.35, 0.35)))
    w, h = extent * math.sqrt(aspect), extent / math.sqrt(aspect)
    angle = math.radians(rng.uniform(-rot, rot))
    cx, cy = rng.uniform(-0.15 * extent, size + 0.15 * extent, 2)
    polys = [(_place(outline, cx, cy, w, h, angle), 255)]
    if hole:
        polys.append((_place(outline, cx, cy, w * rng.uniform(*hole), h * rng.uniform(*hole), angle), 0))
    pts = polys[0][0]
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    return cls, fill, polys, box


def _light(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Uneven lighting: global gain and gamma, a light gradient, noise."""
    size_y, size_x = img.shape[:2]
    yy, xx = np.mgrid[0:size_y, 0:size_x].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(a) * xx / size_x + np.sin(a) * yy / size_y)
    field = np.exp(rng.uniform(-0.55, 0.25) + rng.uniform(0, 0.8) * (ramp - ramp.mean()))
    out = np.clip(img * field[..., None], 0, 255)
    out = 255.0 * (out / 255.0) ** rng.uniform(0.7, 1.4)
    out += rng.normal(0, rng.uniform(1.5, 9), out.shape[:2] + (1,)).astype(np.float32)
    return out


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image (HxWx3 uint8) and its objects [(class_index, [x, y, w, h]), ...]."""
    from PIL import Image, ImageFilter

    img = _background(rng, size)
    for _ in range(int(rng.integers(2, 9))):
        _distractor(rng, img, size)
    boxes: list[np.ndarray] = []
    objects: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        for _attempt in range(15):
            cls, fill, polys, full = _object(rng, size)
            box = np.clip(full, 0, size)
            if (box[2] - box[0]) * (box[3] - box[1]) < _MIN_VISIBLE * (full[2] - full[0]) * (full[3] - full[1]):
                continue
            if any(_covered(b, box) > _MAX_OCCLUDED for b in boxes):
                continue
            x0, y0 = int(math.floor(full[0])) - 1, int(math.floor(full[1])) - 1
            w, h = int(math.ceil(full[2])) + 2 - x0, int(math.ceil(full[3])) + 2 - y0
            cover = _mask(polys, x0, y0, w, h)
            vx0, vy0, vx1, vy1 = (int(v) for v in box)
            local = img[vy0:max(vy1, vy0 + 1), vx0:max(vx1, vx0 + 1)].reshape(-1, 3).mean(0)
            far = 130.0 if rng.random() < 0.8 else 50.0       # one in five blends into its surroundings
            paint = _fill(rng, fill, _contrasting(rng, local, far), h, w, size / 320)
            _paint(img, cover, paint, x0, y0)
            boxes.append(box)
            objects.append((cls, [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]))
            break
    if rng.random() < 0.3:                                    # strokes over objects: thin occluders
        _distractor(rng, img, size)
    img = _light(rng, img)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1) * size / 320))
    return np.asarray(out), objects


def generate(out_dir, split: str, count: int, size: int = 320, seed: int = 0) -> Path:
    """Write `count` images `out_dir/images/{split}_{i:05d}.jpg` and `out_dir/annotations.json`."""
    from . import write_split

    return write_split(out_dir, split, count, size, seed, render, _rng, CLASS_NAMES, "bench", "bench")
