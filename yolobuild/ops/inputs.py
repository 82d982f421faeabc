"""Input ops: generated data sets, the probe images (parity / evaluation) and the calibration set.

Every image goes through `runtime.preprocess.letterbox` once, here; later ops only turn the
stored uint8 canvases into the network input with `canvas_to_input`, so calibration, the
PyTorch reference and the built model all see exactly the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..context import OpContext
from ..runtime.arrays import canvas_to_input, load_npz, save_npz  # noqa: F401 (used by ops)


def _check_preprocess(p: dict) -> None:
    if p.get("resize", "letterbox") != "letterbox":
        raise UserError(f"dataset.preprocess.resize: {p['resize']!r} is not supported; allowed: letterbox")
    if p.get("color", "rgb") != "rgb":
        raise UserError(f"dataset.preprocess.color: {p['color']!r} is not supported; allowed: rgb")


def resolve_image_set(source: Path, key: str) -> tuple[list[Path], Path | None, Path]:
    """An image source -> (sorted image paths, annotations.json if it is a generated set, image root)."""
    from ..runtime.preprocess import list_images

    source = Path(source)
    if not source.exists():
        raise UserError(f"{key}: {source} does not exist")
    if source.is_dir() and (source / "images").is_dir() and (source / "annotations.json").is_file():
        root = source / "images"
        return list_images(root), source / "annotations.json", root
    try:
        images = list_images(source)
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{key}: {source} is neither a folder nor a readable list file of image paths "
                        f"({exc.__class__.__name__})") from None
    return images, None, source if source.is_dir() else source.parent


def load_letterboxed(path: Path, height: int, width: int, pad_value: int, key: str):
    from ..runtime.preprocess import letterbox, load_rgb

    try:
        rgb = load_rgb(path)
    except ValueError as exc:
        raise UserError(f"{key}: {exc}") from None
    canvas, box = letterbox(rgb, int(height), int(width), int(pad_value))
    return canvas, box, rgb.shape[:2]


def _annotation_path(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / "annotations.json").is_file():
            return path / "annotations.json"
        raise UserError(f"dataset.eval.annotations: {path} is a folder without annotations.json")
    return path


def read_coco(path: Path, key: str = "dataset.eval.annotations") -> dict:
    path = _annotation_path(path)
    try:
        coco = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{key}: {path}: not a readable COCO json ({exc.__class__.__name__})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise UserError(f"{key}: {path}: not a COCO json (no 'images' list)")
    return coco


# --------------------------------------------------------------------------- ops

def generate_dataset(ctx: OpContext) -> None:
    from ..data import GENERATORS, generator

    p = ctx.params
    gen = generator(p.get("kind", "shapes"))
    if gen is None:
        raise UserError(f"dataset.generator.kind: {p['kind']!r} is not supported; allowed: {', '.join(GENERATORS)}")
    counts = {}
    for split, count_key in (("calib", "calib_count"), ("eval", "eval_count")):
        out = ctx.outputs[split]
        gen.generate(out, split=split, count=int(p[count_key]), size=int(p["size"]), seed=int(p["seed"]))
        coco = json.loads((out / "annotations.json").read_text())
        counts[split] = {"images": len(coco["images"]), "objects": len(coco["annotations"])}
    ctx.results.update(counts)


def prepare_inputs(ctx: OpContext) -> None:
    p = ctx.params
    _check_preprocess(p)
    key = "dataset.eval.images"
    images, generated_ann, root = resolve_image_set(ctx.inputs["images"], key)
    ann_path = ctx.inputs.get("annotations") or generated_ann
    ids: list[int]
    if ann_path is not None:
        coco = read_coco(ann_path)
        by_name: dict[str, int] = {}
        for im in coco["images"]:
            by_name.setdefault(str(im["file_name"]).replace("\\", "/"), int(im["id"]))
        by_base: dict[str, int] = {}
        for name, iid in by_name.items():
            by_base.setdefault(name.rsplit("/", 1)[-1], iid)
        matched, ids = [], []
        for path in images:
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.name
            iid = by_name.get(rel, by_name.get(path.name, by_base.get(path.name)))
            if iid is not None:
                matched.append(path)
                ids.append(iid)
        if images and not matched:
            raise UserError(f"dataset.eval.annotations: {_annotation_path(ann_path)} names none of the "
                            f"{len(images)} images under {ctx.inputs['images']} (file_name e.g. "
                            f"{next(iter(by_name), '?')!r}, image e.g. {images[0].name!r})")
        if len(matched) < len(images):
            ctx.log(f"prepare_inputs: {len(images) - len(matched)} image(s) have no entry in the annotations; skipped")
        images = matched
    else:
        ids = list(range(len(images)))
    limit = p.get("eval_count")
    if limit is not None:
        images, ids = images[:int(limit)], ids[:int(limit)]
    if not images:
        raise UserError(f"{key}: {ctx.inputs['images']} holds no images")

    h, w, pad = int(p["height"]), int(p["width"]), int(p["pad_value"])
    canvases = np.empty((len(images), h, w, 3), dtype=np.uint8)
    boxes = np.empty((len(images), 3), dtype=np.float32)
    sizes = np.empty((len(images), 2), dtype=np.int64)
    for i, path in enumerate(images):
        canvases[i], box, sizes[i] = load_letterboxed(path, h, w, pad, key)
        boxes[i] = (box.scale, box.pad_x, box.pad_y)
        ctx.progress(i + 1, len(images), "eval images letterboxed")
    names = []
    for path in images:
        try:
            names.append(path.relative_to(root).as_posix())
        except ValueError:
            names.append(str(path))
    parity = min(int(p.get("parity_count") or len(images)), len(images))
    save_npz(ctx.outputs["probe.npz"], images=canvases, letterbox=boxes, image_ids=np.asarray(ids, dtype=np.int64),
             file_names=np.asarray(names, dtype=str), image_hw=sizes,
             parity_count=np.asarray(parity, dtype=np.int64), input_scale=np.asarray(float(p["scale"])))
    ctx.results.update({"images": len(images), "parity_images": parity, "annotated": ann_path is not None})


def calibrate(ctx: OpContext) -> None:
    """The calibration canvases (calib.npz), letterboxed as the probe images are, and the set's checks
    (runtime.calibration_checks): each failed one a warning line, all of them in results["checks"]."""
    from ..runtime import calibration_checks as checks
    from ..runtime.preprocess import letterbox, load_rgb

    p = ctx.params
    _check_preprocess(p)
    key = "dataset.calib.path"
    images, _, root = resolve_image_set(ctx.inputs["images"], key)
    count = int(p["count"])
    if not images:
        raise UserError(f"{key}: {ctx.inputs['images']} holds no images; the calibration set is empty")
    if count < 1:
        raise UserError(f"dataset.calib.count: {count} is too small; allowed: >= 1")
    available = len(images)
    images = images[:count]
    h, w, pad = int(p["height"]), int(p["width"]), int(p["pad_value"])
    canvases = np.empty((len(images), h, w, 3), dtype=np.uint8)
    boxes = np.empty((len(images), 3), dtype=np.float32)
    sizes, bands = [], []
    for i, path in enumerate(images):
        try:
            rgb = load_rgb(path)
        except ValueError as exc:
            raise UserError(f"{key}: {exc}") from None
        canvases[i], box = letterbox(rgb, h, w, pad)
        boxes[i] = (box.scale, box.pad_x, box.pad_y)
        sizes.append(rgb.shape[:2])
        bands.append(checks.uniform_bands(rgb))
        ctx.progress(i + 1, len(images), "calibration images letterboxed")
    names = [_relative(path, root) for path in images]
    found = [checks.count_check(len(images), count, available),
             checks.duplicate_check(canvases, names)]
    eval_sizes = None
    if "probe" in ctx.inputs:   # the evaluation images the build checks: the set calibration should look like
        probe = load_npz(ctx.inputs["probe"])
        eval_sizes = [tuple(int(v) for v in hw) for hw in probe["image_hw"]]
        found.append(checks.statistics_check((canvases, boxes, np.asarray(sizes)),
                                             (probe["images"], probe["letterbox"], probe["image_hw"])))
    found += checks.letterbox_check(bands, sizes, pad, h, w, eval_sizes)
    save_npz(ctx.outputs["calib.npz"], images=canvases, input_scale=np.asarray(float(p["scale"])))
    ctx.results.update({"images": len(images), "requested": count, "checks": found,
                        "warnings": [c["detail"] for c in found if not c["ok"]]})


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
