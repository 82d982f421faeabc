"""A family's standalone model definition: one PyTorch 1.3-compatible source file per family.

Vendor flows that rebuild the network from a weights-only state_dict (Cambricon's quantize and
genoff scripts run on the vendor's old PyTorch) import this file instead of yolobuild. The family
owns it: its template in templates/ plus the CONFIG block written from the model's metadata, so a
vendor package receives the definition as a file and never imports a family. Imports no torch.
"""
from __future__ import annotations

import pprint
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError

TEMPLATES_DIR = Path(__file__).parent / "templates"
MARKER = "CONFIG = {}  # @CONFIG@"


@dataclass(frozen=True)
class Shape:
    """What the definition needs besides the model's metadata: the exported graph's head and input."""

    head: str
    batch: int
    height: int
    width: int
    scale: float


def _common(meta: dict, shape: Shape) -> dict:
    return {"nc": int(meta["nc"]), "names": list(meta["names"]),
            "anchors_px": [[float(v) for pair in level for v in pair] for level in meta["anchors_px"]],
            "strides": [int(s) for s in meta["strides"]], "head": shape.head,
            "input": [shape.batch, 3, shape.height, shape.width], "scale": shape.scale}  # input pixel scale


def _yolov5_config(meta: dict, shape: Shape) -> dict:
    """The yolov5 layer table and scale multiples."""
    from .arch import YOLOV5_LAYOUTS, YOLOV5_SCALES

    gd, gw = YOLOV5_SCALES[meta["scale"]]
    return {"model_scale": meta["scale"], "layout": meta["layout"], "depth_multiple": gd, "width_multiple": gw,
            **_common(meta, shape), "layers": [list(row) for row in YOLOV5_LAYOUTS[meta["layout"]]]}


def _darknet_config(meta: dict, shape: Shape) -> dict:
    """The Darknet cfg's layers (classes / filters set for nc)."""
    from . import darknet_cfg as dc

    layers = dc.walk(dc.with_classes(dc.read_cfg(meta["layout"]), int(meta["nc"])))
    keep = ("type", "index", "inputs", "c_in", "filters", "size", "stride", "pad", "groups", "bn", "act")
    levels = dc.levels(layers)
    return {"layout": meta["layout"], **_common(meta, shape),
            "heads": {y["index"] - 1: level for level, y in enumerate(levels)},     # conv before a [yolo] -> level
            "yolo_levels": {y["index"]: level for level, y in enumerate(levels)},
            "layers": [{k: la[k] for k in keep if k in la} for la in layers]}


@dataclass(frozen=True)
class Definition:
    template: str
    config: Callable[[dict, Shape], dict]
    note: str                      # what a reader of the vendor bundle should know about it


DEFINITIONS = {
    "yolov5": Definition("yolov5_torch13.py", _yolov5_config, "SiLU as x*sigmoid(x)"),
    "yolov3": Definition("darknet_torch13.py", _darknet_config, "Darknet cfg layers, LeakyReLU(0.1)"),
}


def definition_for(family: str) -> Definition:
    if family not in DEFINITIONS:
        raise UserError(f"model.family: {family} has no standalone model definition (needed by this target's "
                        f"state_dict flow); allowed: {', '.join(DEFINITIONS)}")
    return DEFINITIONS[family]


def render(meta: dict, shape: Shape) -> str:
    """The definition's source with its CONFIG block written for this model and input."""
    d = definition_for(meta.get("family", "yolov5"))
    text = (TEMPLATES_DIR / d.template).read_text()
    assert MARKER in text
    return text.replace(MARKER, "CONFIG = " + pprint.pformat(d.config(meta, shape), width=110, sort_dicts=False))
