"""Generated splits on disk, held in RAM, augmented into training batches."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from yolobuild.runtime.preprocess import load_rgb


def ensure_split(generator, root: Path, split: str, count: int, size: int, seed: int) -> Path:
    """Generate a split once (generator: a yolobuild.data module) and reuse it on later runs."""
    out = root / f"{split}-{count}-{size}-{seed}"
    if not (out / "annotations.json").exists():
        t = time.time()
        generator.generate(out, split=split, count=count, size=size, seed=seed)
        print(f"generated {split} split: {count} images in {time.time() - t:.1f}s -> {out}", flush=True)
    return out


def load_split(path: Path):
    """All images (N, H, W, 3) uint8 and per-image labels (k, 5): class, x1, y1, x2, y2 in pixels."""
    coco = json.loads((path / "annotations.json").read_text())
    cat_to_cls = {c["id"]: k for k, c in enumerate(coco["categories"])}
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append([cat_to_cls[a["category_id"]], x, y, x + w, y + h])
    images = np.stack([load_rgb(path / "images" / im["file_name"]) for im in coco["images"]])
    labels = [np.asarray(by_image[im["id"]], dtype=np.float32).reshape(-1, 5) for im in coco["images"]]
    return images, labels


def augment(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, size: int):
    """Random zoom/translate (gray fill), horizontal flip, colour jitter. Returns new arrays."""
    from PIL import Image

    lab = lab.copy()
    if rng.random() < 0.5:
        s = rng.uniform(0.75, 1.25)
        tx, ty = rng.uniform(-0.12, 0.12, 2) * size
        # output pixel p maps to input (p - c - t) / s + c with c the centre
        c = size / 2
        a = 1 / s
        coeffs = (a, 0, c - (c + tx) * a, 0, a, c - (c + ty) * a)
        img = np.asarray(Image.fromarray(img).transform((size, size), Image.AFFINE, coeffs,
                                                         resample=Image.BILINEAR, fillcolor=(114, 114, 114)))
        if len(lab):
            b = lab[:, 1:5]
            b = (b - c) * s + c + np.array([tx, ty, tx, ty])
            area0 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            bc = np.clip(b, 0, size)
            area1 = (bc[:, 2] - bc[:, 0]) * (bc[:, 3] - bc[:, 1])
            keep = (area1 > 0.6 * area0) & (bc[:, 2] - bc[:, 0] > 4) & (bc[:, 3] - bc[:, 1] > 4)
            lab = np.concatenate((lab[:, :1], bc), 1)[keep].astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        if len(lab):
            x1 = size - lab[:, 3]
            x2 = size - lab[:, 1]
            lab[:, 1], lab[:, 3] = x1, x2
    # colour jitter: per-channel gain, brightness, contrast, sometimes grayscale
    f = img.astype(np.float32)
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32) * rng.uniform(0.7, 1.3)
    mean = f.mean()
    f = (f - mean) * rng.uniform(0.75, 1.25) + mean
    f = f * gain + rng.uniform(-20, 20)
    if rng.random() < 0.05:
        f = f.mean(2, keepdims=True).repeat(3, 2)
    return np.clip(f, 0, 255).astype(np.uint8), lab


def crop(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, side: int):
    """A random side x side window at full resolution: objects keep their pixel size, the step costs less."""
    h, w = img.shape[:2]
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    img = img[y0:y0 + side, x0:x0 + side]
    if len(lab):
        b = lab[:, 1:5] - np.array([x0, y0, x0, y0], dtype=np.float32)
        area0 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        bc = np.clip(b, 0, side)
        area1 = (bc[:, 2] - bc[:, 0]) * (bc[:, 3] - bc[:, 1])
        keep = (area1 > 0.6 * area0) & (bc[:, 2] - bc[:, 0] > 2) & (bc[:, 3] - bc[:, 1] > 2)
        lab = np.concatenate((lab[:, :1], bc), 1)[keep].astype(np.float32)
    return img, lab


def make_batch(images, labels, idx, rng, size, train=True, crop_side: int | None = None):
    """A float batch (B, 3, H, W) in [0, 1] and targets (n, 6): image, class, x, y, w, h in pixels."""
    imgs, targets = [], []
    for j, i in enumerate(idx):
        img, lab = images[i], labels[i]
        if train:
            img, lab = augment(img, lab, rng, size)
            if crop_side and crop_side < size:
                img, lab = crop(img, lab, rng, crop_side)
        imgs.append(img)
        if len(lab):
            xyxy = lab[:, 1:5]
            xywh = np.concatenate(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            targets.append(np.concatenate((np.full((len(lab), 1), j, np.float32), lab[:, :1], xywh), 1))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs).transpose(0, 3, 1, 2))).float().div_(255)
    t = torch.from_numpy(np.concatenate(targets, 0)) if targets else torch.zeros((0, 6))
    return x, t
