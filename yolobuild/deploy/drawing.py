"""Detections drawn on an image with Pillow: the report's sample images and its fp32-vs-built pairs."""
from __future__ import annotations

from pathlib import Path

PALETTE = [(230, 57, 70), (42, 157, 143), (38, 70, 200), (244, 162, 97), (131, 56, 236), (20, 140, 40)]


def draw_detections(image: Path, detections: list[dict], size: int = 320):
    """The image (RGB, its longer side at most `size`) with each detection's box, class name and score."""
    from PIL import Image, ImageDraw

    with Image.open(image) as im:
        im = im.convert("RGB")
    pen = ImageDraw.Draw(im)
    for d in detections:
        c = PALETTE[d["class"] % len(PALETTE)]
        pen.rectangle(d["box"], outline=c, width=2)
        text, at = f"{d['name']} {d['score']:.2f}", (d["box"][0], max(0, d["box"][1] - 12))
        pen.rectangle(pen.textbbox(at, text), fill=c)   # a filled tag: readable on any background
        pen.text(at, text, fill=(255, 255, 255))
    im.thumbnail((size, size))
    return im


def side_by_side(image: Path, left: list[dict], right: list[dict], left_title: str, right_title: str,
                 size: int = 320):
    """Two drawings of one image next to each other, each titled with what found its boxes and how many."""
    from PIL import Image, ImageDraw

    a, b = draw_detections(image, left, size), draw_detections(image, right, size)
    title_h, gap = 18, 8
    canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height) + title_h), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    for x, im, title, dets in ((0, a, left_title, left), (a.width + gap, b, right_title, right)):
        canvas.paste(im, (x, title_h))
        pen.text((x + 2, 3), f"{title}: {len(dets)} detections", fill=(34, 34, 34))
    return canvas
