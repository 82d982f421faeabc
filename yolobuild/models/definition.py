"""A family's standalone model definition: one PyTorch 1.3-compatible source file per family.

Vendor flows that rebuild the network from a weights-only state_dict (Cambricon's quantize and
genoff scripts run on the vendor's old PyTorch) import this file instead of yolobuild. The family
owns it (Family.standalone): its template plus the CONFIG block written from the model's metadata, so a
vendor package receives the definition as a file and never imports a family. Imports no torch.
"""
from __future__ import annotations

import pprint
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError

MARKER = "CONFIG = {}  # @CONFIG@"


@dataclass(frozen=True)
class Shape:
    """What the definition needs besides the model's metadata: the exported graph's head and input."""

    head: str
    batch: int
    height: int
    width: int
    scale: float


def common_config(meta: dict, shape: Shape) -> dict:
    """The CONFIG keys every family's definition reads (a family's standalone config adds its layers)."""
    return {"nc": int(meta["nc"]), "names": list(meta["names"]),
            "anchors_px": [[float(v) for pair in level for v in pair] for level in meta["anchors_px"]],
            "strides": [int(s) for s in meta["strides"]], "head": shape.head,
            "input": [shape.batch, 3, shape.height, shape.width], "scale": shape.scale}  # input pixel scale


@dataclass(frozen=True)
class Definition:
    template: Path                 # the source file, with the CONFIG marker
    config: Callable[[dict, Shape], dict]
    note: str                      # what a reader of the vendor bundle should know about it


def definition_for(family: str) -> Definition:
    """The family's standalone definition (Family.standalone), or UserError naming the families that have one."""
    import importlib

    from . import registry

    fam = registry.find(family)
    if fam is None or fam.standalone is None:
        have = [f.name for f in registry.families().values() if f.standalone is not None]
        raise UserError(f"model.family: {family} has no standalone model definition (needed by this target's "
                        f"state_dict flow); allowed: {', '.join(have)}")
    s = fam.standalone
    module, func = s.config.split(":")
    folder = Path(importlib.import_module(fam.package).__file__).parent
    return Definition(folder / s.template, getattr(importlib.import_module(module), func), s.note)


def render(meta: dict, shape: Shape) -> str:
    """The definition's source with its CONFIG block written for this model and input."""
    d = definition_for(meta.get("family", "yolov5"))
    text = d.template.read_text()
    assert MARKER in text
    return text.replace(MARKER, "CONFIG = " + pprint.pformat(d.config(meta, shape), width=110, sort_dicts=False))
