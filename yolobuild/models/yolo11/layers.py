"""Ultralytics 8.4 detectors as data, torch-free: YOLO11 and YOLO26 layer tables and scales, and how a
checkpoint's model yaml names its scale.

A yaml states its size in one of three ways: `scale` (with a `scales` table, as ultralytics writes
when a model is built from `yolo11n.yaml`), `scales` alone (ultralytics then takes the first), or
`depth_multiple` / `width_multiple` (and, optionally, `max_channels`; unlimited when absent), as
older and hand-written yamls do. `resolve_scale` turns any of them into the named scale whose
layers are the same, or, when none is, the multiples themselves, which build the model as well.
"""
from __future__ import annotations

import math

# depth, width, max_channels per scale (upstream cfg/models/11/yolo11.yaml, cfg/models/26/yolo26.yaml)
YOLO11_SCALES = {
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
    "m": (0.50, 1.00, 512),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.50, 512),
}
YOLO26_SCALES = dict(YOLO11_SCALES)

_BACKBONE_11 = [
    [-1, 1, "Conv", [64, 3, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 2, "C3k2", [256, False, 0.25]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 2, "C3k2", [512, False, 0.25]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 2, "C3k2", [512, True]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 2, "C3k2", [1024, True]],
]


def _neck(c3k: bool, last: list) -> list:
    return [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 2, "C3k2", [512, c3k]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 2, "C3k2", [256, c3k]],      # 16 P3/8
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 13], 1, "Concat", [1]],
        [-1, 2, "C3k2", [512, c3k]],      # 19 P4/16
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 10], 1, "Concat", [1]],
        last,                             # 22 P5/32
        [[16, 19, 22], 1, "Detect", ["nc"]],
    ]


YOLO11_LAYOUTS = {
    "11": _BACKBONE_11 + [[-1, 1, "SPPF", [1024, 5]], [-1, 2, "C2PSA", [1024]]]
    + _neck(False, [-1, 2, "C3k2", [1024, True]]),
}
# YOLO26: an SPPF with a residual and no activation after cv1, attention in the last C3k2, and an
# end-to-end (one-to-one) head without DFL (reg_max 1)
YOLO26_LAYOUTS = {
    "26": _BACKBONE_11 + [[-1, 1, "SPPF", [1024, 5, 3, True]], [-1, 2, "C2PSA", [1024]]]
    + _neck(True, [-1, 1, "C3k2", [1024, True, 0.5, True]]),
}
HEAD_OPTIONS = {"yolo11": {"reg_max": 16, "end2end": False}, "yolo26": {"reg_max": 1, "end2end": True}}


# the layers whose output channels the width multiple scales (ultralytics parse_model's base modules)
SCALED = ("Conv", "C2f", "C3k2", "SPPF", "C2PSA", "C3", "SPP", "Focus")
REPEATED = ("C2f", "C3k2", "C3", "C2PSA")


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def layer_plan(table: list, depth: float, width: float, max_channels: float | None,
               scale: str | None = None) -> list[tuple]:
    """(type, repeats, out channels, args after the channels) per row, as ultralytics' parse_model derives
    them; `scale` matters only where upstream reads the scale's name (C3k2's c3k for m / l / x)."""
    mc = math.inf if max_channels is None else max_channels
    out = []
    for f, n, t, args in table:
        n = max(round(n * depth), 1) if n > 1 else n
        if t in SCALED:
            rest = list(args[1:])
            if t == "C3k2" and scale in ("m", "l", "x"):
                rest[0:1] = [True]
            out.append((t, n, make_divisible(min(args[0], mc) * width, 8), tuple(rest)))
        else:
            out.append((t, n, None, tuple(map(str, args))))
    return out


def multiples_of(yaml: dict, scales: dict) -> tuple[str | None, tuple | None]:
    """(scale name, (depth, width, max_channels)) as the yaml states them; (None, None) when it says nothing."""
    scale = yaml.get("scale")
    table = yaml.get("scales")
    if isinstance(table, dict) and table:
        if scale not in table:
            scale = next(iter(table))
        d, w, mc = table[scale]
        return str(scale), (float(d), float(w), float(mc))
    if scale in scales:
        return str(scale), tuple(float(v) for v in scales[scale])
    if "depth_multiple" in yaml or "width_multiple" in yaml:
        mc = yaml.get("max_channels")
        return None, (float(yaml.get("depth_multiple", 1.0)), float(yaml.get("width_multiple", 1.0)),
                      None if mc is None else float(mc))
    return None, None


def resolve_scale(yaml: dict, table: list, scales: dict) -> tuple[str | None, list | None]:
    """-> (named scale, None) when the yaml's layers are a named scale's, else (None, [depth, width,
    max_channels or None]) to build from the multiples; (None, None) when the yaml states no size."""
    name, mult = multiples_of(yaml, scales)
    if mult is None:
        return None, None
    plan = layer_plan(table, *mult, scale=name)
    if name in scales and plan == layer_plan(table, *scales[name], scale=name):
        return name, None
    for s, m in scales.items():
        if plan == layer_plan(table, *m, scale=s):
            return s, None
    return None, list(mult)
