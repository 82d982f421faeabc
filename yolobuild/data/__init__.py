"""Generated data sets: dataset.generator.kind -> the module that writes it (each has generate()).

Each generator draws one image and its boxes per (seed, split, index); write_split turns a render
function into the folder every build reads: images/{split}_{i:05d}.jpg and a COCO annotations.json."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Callable

GENERATORS = {"shapes": "shapes", "bench": "bench"}


def generator(kind: str):
    """The module for a generator kind; None when the kind is unknown."""
    name = GENERATORS.get(kind)
    return importlib.import_module(f"{__name__}.{name}") if name else None


def write_split(out_dir, split: str, count: int, size: int, seed: int, render: Callable, rng: Callable,
                class_names, description: str, supercategory: str) -> Path:
    """`count` images rendered by render(rng(seed, split, i), size) -> (image, [(cls, [x, y, w, h])])."""
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(int(count)):
        img, objects = render(rng(seed, split, i), int(size))
        name = f"{split}_{i:05d}.jpg"
        Image.fromarray(img).save(out_dir / "images" / name, format="JPEG", quality=95)
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": int(size), "height": int(size)})
        for cls, (x, y, w, h) in objects:
            bbox = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cls + 1, "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
            ann_id += 1
    coco = {
        "info": {"description": f"yolobuild synthetic {description}, split={split} count={count} size={size} seed={seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": supercategory} for k, name in enumerate(class_names)],
    }
    (out_dir / "annotations.json").write_text(json.dumps(coco, indent=1))
    return out_dir
