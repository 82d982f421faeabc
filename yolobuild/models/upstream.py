"""Recognise an upstream model read by the restricted unpickler and turn it into yolobuild metadata.

Input: the stand-in module tree of a full-pickle checkpoint (yolov5 train.py, ultralytics).
Output: {family, scale, layout, nc, names, anchors (pixels, anchor-based only), strides,
input_size, upstream} plus the state_dict. yolobuild then builds its own network from the
family table and loads that state_dict; the upstream classes never run.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import UserError
from . import registry
from .yolo11.layers import YOLO11_LAYOUTS, YOLO11_SCALES, YOLO26_LAYOUTS, YOLO26_SCALES, resolve_scale
from .yolov5.layers import YOLOV5_LAYOUTS, YOLOV5_SCALES
from .yolov8.layers import YOLOV8_LAYOUTS, YOLOV8_SCALES
from .safe_pickle import Stub, module_attr, upstream_name

YOLOV5_MODEL_CLASSES = {"models.yolo.Model", "models.yolo.DetectionModel", "yolov5.models.yolo.Model",
                        "yolov5.models.yolo.DetectionModel"}
ULTRALYTICS_MODEL_CLASSES = {"ultralytics.nn.tasks.DetectionModel", "ultralytics.yolo.v8.detect.DetectionModel"}
# the ultralytics detect families yolobuild builds: layer tables and named scales
ULTRALYTICS_FAMILIES = {"yolov8": (YOLOV8_LAYOUTS, YOLOV8_SCALES), "yolo11": (YOLO11_LAYOUTS, YOLO11_SCALES),
                        "yolo26": (YOLO26_LAYOUTS, YOLO26_SCALES)}


def _norm_table(rows) -> str:
    out = []
    for row in rows or []:
        f, n, t, args = row[:4]
        t = str(t).replace("torch.nn.", "nn.")
        args = ["None" if a is None else a for a in (args or [])]
        out.append([f, n, t, args])
    return json.dumps(out, default=str)


def _match_layout(yaml: dict, layouts: dict) -> str | None:
    want = _norm_table(list(yaml.get("backbone") or []) + list(yaml.get("head") or []))
    for name, table in layouts.items():
        if _norm_table(table) == want:
            return name
    return None


def _layer_types(yaml: dict) -> str:
    rows = list(yaml.get("backbone") or []) + list(yaml.get("head") or [])
    seen = []
    for r in rows:
        t = str(r[2])
        if t not in seen:
            seen.append(t)
    return ", ".join(seen)


def _names(names, nc: int) -> list[str] | None:
    if isinstance(names, dict):
        try:
            return [str(names[i]) for i in range(nc)]
        except KeyError:
            return [str(v) for _, v in sorted(names.items())]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return None


def _imgsz(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return [int(value), int(value)]
    if isinstance(value, (list, tuple)) and value:
        v = [int(x) for x in value]
        return v * 2 if len(v) == 1 else v[:2]
    return None


def pick_model(container: Any) -> Any:
    """The model object of an upstream checkpoint dict: EMA first (what upstream's loaders use)."""
    if isinstance(container, dict):
        for key in ("ema", "model"):
            if isinstance(container.get(key), Stub):
                return container[key]
    return container if isinstance(container, Stub) else None


def describe_upstream(container: Any, where: str, family_hooks=()) -> tuple[dict, dict]:
    """-> (meta, state_dict) for a full-pickle upstream checkpoint; UserError when not understood.

    `family_hooks`: (Family, its `describe_pickle(container, model, where)` hook) pairs (models.family), asked
    first, in the registry's order (YOLOv7, YOLOR: the yolov5 repository's classes with an IDetect head); the
    yolov5 and ultralytics classes, shared by several families, are read here from the families' tables."""
    model = pick_model(container)
    if model is None:
        raise UserError(f"{where}: a full pickle without a model (expected a dict with 'model' or 'ema')")
    family_hooks = list(family_hooks)
    for _, hook in family_hooks:
        got = hook(container, model, where)
        if got is not None:
            return got
    cls = upstream_name(model)
    yaml = module_attr(model, "yaml") or {}
    sd = model.state_dict()
    stride = module_attr(model, "stride")
    strides = [int(round(float(s))) for s in stride.tolist()] if stride is not None else None
    heads = [m for m in model.modules() if upstream_name(m).rsplit(".", 1)[-1] in ("Detect", "IDetect", "IAuxDetect")]
    head = heads[-1] if heads else None
    head_cls = upstream_name(head) if head is not None else "?"
    multiples = None
    if cls in YOLOV5_MODEL_CLASSES:
        if head_cls.endswith(("IDetect", "IAuxDetect")):   # a YOLOv7 or YOLOR no family's hook recognised
            dm, wm = yaml.get("depth_multiple"), yaml.get("width_multiple")
            known = [f"{f.name} ({', '.join(f.layouts)})" for f, _ in family_hooks]
            raise UserError(f"{where}: a {cls} with {head_cls} whose layers ({_layer_types(yaml) or 'no yaml'}; depth "
                            f"{dm}, width {wm}) match no layout yolobuild builds for it ({'; '.join(known)}); for "
                            "custom layers set model.source.repo=PATH")
        family = "yolov5"
        layout = _match_layout(yaml, YOLOV5_LAYOUTS)
        dm, wm = yaml.get("depth_multiple"), yaml.get("width_multiple")
        scale = next((s for s, (d, w) in YOLOV5_SCALES.items() if d == dm and w == wm), None)
    elif cls in ULTRALYTICS_MODEL_CLASSES:
        family, layout, scale, multiples = _ultralytics_kind(yaml, sd)
    else:
        raise UserError(f"{where}: a full pickle of {cls}, which is no model yolobuild knows "
                        f"(known: {', '.join(sorted(YOLOV5_MODEL_CLASSES | ULTRALYTICS_MODEL_CLASSES))})")
    if family != "yolov5" and layout is not None and scale is None and multiples is not None:
        scale = None                    # a custom size: built from the yaml's multiples
    elif layout is None or scale is None:
        what = f"depth {yaml.get('depth_multiple')}, width {yaml.get('width_multiple')}" if family == "yolov5" \
            else f"scale {yaml.get('scale')!r}, depth {yaml.get('depth_multiple')}, width {yaml.get('width_multiple')}"
        raise UserError(f"{where}: a {cls} whose layers ({_layer_types(yaml) or 'no yaml'}; {what}) match no "
                        f"{family} layout yolobuild builds ({', '.join(registry.get(family).layouts)}); "
                        "for custom layers set model.source.repo=PATH")
    nc = int(yaml.get("nc") or module_attr(head, "nc") or 0) if head is not None else int(yaml.get("nc") or 0)
    meta: dict[str, Any] = {"family": family, "scale": scale, "layout": layout, "nc": nc,
                            "names": _names(module_attr(model, "names"), nc), "strides": strides,
                            "upstream": cls, "input_size": None}
    if family != "yolov5" and multiples is not None:
        meta["multiples"] = multiples
    if family in ("yolo11", "yolo26"):
        sppf = [m for m in model.modules() if upstream_name(m).endswith(".SPPF")]
        act = getattr(getattr(sppf[0], "cv1", None), "act", None) if sppf else None
        if act is not None:     # which SPPF the writing ultralytics version built (see models.yolo11.model.build)
            meta["arch_options"] = {"sppf_act": not upstream_name(act).endswith("Identity")}
    if family == "yolov5" and head is not None and "anchors" in head._buffers and strides:
        a = head._buffers["anchors"].float()
        px = (a * a.new_tensor(strides).view(-1, 1, 1)).view(a.shape[0], -1)
        meta["anchors"] = [[round(float(v), 4) for v in row] for row in px]
    args = module_attr(model, "args")
    if args is not None and not isinstance(args, dict):
        args = getattr(args, "__dict__", None)
    size = None
    for src in (args, container.get("train_args") if isinstance(container, dict) else None,
                container.get("opt") if isinstance(container, dict) else None):
        if isinstance(src, dict):
            size = _imgsz(src.get("imgsz", src.get("img_size")))
            if size:
                break
    meta["input_size"] = size
    return meta, sd


def _ultralytics_kind(yaml: dict, sd: dict) -> tuple[str, str | None, str | None, list | None]:
    """(family, layout, scale, multiples) of an ultralytics model: the family and layout whose layer
    table the yaml lists, the size from what the yaml states (`scale`, or the multiples); without a
    yaml, from the layer shapes."""
    multiples = None
    if yaml.get("backbone"):
        for family, (layouts, scales) in ULTRALYTICS_FAMILIES.items():
            layout = _match_layout(yaml, layouts)
            if layout is not None:
                scale, multiples = resolve_scale(yaml, layouts[layout], scales)
                return family, layout, scale, multiples
        return "yolov8", None, None, None
    got = scale_from_shapes(sd)
    return (got or ("yolov8", None, None)) + (None,)


def scale_from_shapes(sd: dict) -> tuple[str, str, str] | None:
    """(family, layout, scale) whose layers have exactly the state_dict's conv widths and block counts."""
    from .yolo11.layers import layer_plan

    def blocks(i: int) -> int:
        return len({k.split(".")[3] for k in sd if k.startswith(f"model.{i}.m.") and k.split(".")[3].isdigit()})

    for family, (layouts, scales) in ULTRALYTICS_FAMILIES.items():
        for layout, table in layouts.items():
            if max((int(k.split(".")[1]) for k in sd if k.startswith("model.")), default=-1) != len(table) - 1:
                continue
            if (f"model.{len(table) - 1}.one2one_cv2.0.0.conv.weight" in sd) != (family == "yolo26"):
                continue
            for scale, mult in scales.items():
                plan = layer_plan(table, *mult, scale=scale)
                ok = True
                for i, (t, n, c2, _) in enumerate(plan):
                    w = sd.get(f"model.{i}.conv.weight" if t == "Conv" else f"model.{i}.cv2.conv.weight")
                    if c2 is not None and (w is None or int(w.shape[0]) != c2):
                        ok = False
                        break
                    if t in ("C2f", "C3k2", "C2PSA") and blocks(i) != n:
                        ok = False
                        break
                if ok:
                    return family, layout, scale
    return None


def guess_ultralytics_family(sd: dict) -> dict:
    """What an ultralytics-layout state_dict (yolov5 v5/v6/p6, yolov8) is, in family-table terms, or {}:
    read off the stem conv's width and the head's keys, so a loader can name both families."""
    import math

    def md8(x):
        return math.ceil(x / 8) * 8

    if any(k.endswith(".dfl.conv.weight") for k in sd):
        stem = sd.get("model.0.conv.weight")
        scale = next((s for s, (_, w, mc) in YOLOV8_SCALES.items()
                      if stem is not None and md8(min(64, mc) * w) == stem.shape[0]), None)
        return {"family": "yolov8", "scale": scale, "layout": "v8"}
    stem, layout = sd.get("model.0.conv.weight"), "v6"
    if stem is None and "model.0.conv.conv.weight" in sd:
        stem, layout = sd["model.0.conv.conv.weight"], "v5"
    if stem is None:
        return {}
    if layout == "v6" and any(k.startswith("model.33.") for k in sd):
        layout = "p6"
    scale = next((s for s, (_, w) in YOLOV5_SCALES.items() if md8(64 * w) == stem.shape[0]), None)
    return {"family": "yolov5", "scale": scale, "layout": layout}
