"""YOLOv5 layer tables, as data: (from, repeats, layer type, args) per layer.

Kept free of torch so that planning can read strides and layer counts without it.
"""

# depth_multiple, width_multiple per scale (upstream yolov5{n,s,m,l,x}.yaml)
YOLOV5_SCALES = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}

DEFAULT_ANCHORS = [
    [10, 13, 16, 30, 33, 23],
    [30, 61, 62, 45, 59, 119],
    [116, 90, 156, 198, 373, 326],
]

_HEAD_P5 = [
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "C3", [256, False]],  # 17 P3/8
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 14], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],  # 20 P4/16
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 10], 1, "Concat", [1]],
    [-1, 3, "C3", [1024, False]],  # 23 P5/32
    [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
]

YOLOV5_LAYOUTS = {
    # v6.0+: 6x6 stride-2 stem conv and SPPF
    "v6": [
        [-1, 1, "Conv", [64, 6, 2, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],
    ] + _HEAD_P5,
    # v5.0: Focus stem, SPP before the last C3
    "v5": [
        [-1, 1, "Focus", [64, 3]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 9, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 1, "SPP", [1024, [5, 9, 13]]],
        [-1, 3, "C3", [1024, False]],
    ] + _HEAD_P5,
}

MAX_STRIDE = {"v6": 32, "v5": 32}

# yolov5s6 & co. (v6.0+ P6 models: four levels, strides 8..64)
P6_ANCHORS = [
    [19, 27, 44, 40, 38, 94],
    [96, 68, 86, 152, 180, 137],
    [140, 301, 303, 264, 238, 542],
    [436, 615, 739, 380, 925, 792],
]

YOLOV5_LAYOUTS["p6"] = [
    [-1, 1, "Conv", [64, 6, 2, 2]],
    [-1, 1, "Conv", [128, 3, 2]],
    [-1, 3, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]],
    [-1, 6, "C3", [256]],
    [-1, 1, "Conv", [512, 3, 2]],
    [-1, 9, "C3", [512]],
    [-1, 1, "Conv", [768, 3, 2]],
    [-1, 3, "C3", [768]],
    [-1, 1, "Conv", [1024, 3, 2]],
    [-1, 3, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],
    [-1, 1, "Conv", [768, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 8], 1, "Concat", [1]],
    [-1, 3, "C3", [768, False]],
    [-1, 1, "Conv", [512, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],
    [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
    [[-1, 4], 1, "Concat", [1]],
    [-1, 3, "C3", [256, False]],  # 23 P3/8
    [-1, 1, "Conv", [256, 3, 2]],
    [[-1, 20], 1, "Concat", [1]],
    [-1, 3, "C3", [512, False]],  # 26 P4/16
    [-1, 1, "Conv", [512, 3, 2]],
    [[-1, 16], 1, "Concat", [1]],
    [-1, 3, "C3", [768, False]],  # 29 P5/32
    [-1, 1, "Conv", [768, 3, 2]],
    [[-1, 12], 1, "Concat", [1]],
    [-1, 3, "C3", [1024, False]],  # 32 P6/64
    [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
]
MAX_STRIDE["p6"] = 64

# ultralytics YOLOv8 (anchor-free, DFL): depth, width, max_channels per scale (upstream yolov8.yaml)
YOLOV8_SCALES = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}

YOLOV8_LAYOUTS = {
    "v8": [
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C2f", [128, True]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C2f", [256, True]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 6, "C2f", [512, True]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 3, "C2f", [1024, True]],
        [-1, 1, "SPPF", [1024, 5]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C2f", [512]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C2f", [256]],  # 15 P3/8
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C2f", [512]],  # 18 P4/16
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 9], 1, "Concat", [1]],
        [-1, 3, "C2f", [1024]],  # 21 P5/32
        [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}


# --------------------------------------------------------------------------- the table of families
#
# One row per model family: the module that builds / loads it (imported only by ops that run
# torch), the head kind (how outputs decode), and per layout its strides and default anchors.
# validate / plan read this table; nothing here imports torch.

ANCHOR_BASED = "anchor_based"   # (bs, N, 5+nc): xywh, objectness, class scores
ANCHOR_FREE = "anchor_free"     # (bs, N, 4+nc): xywh, class scores; no objectness

FAMILIES = {
    "yolov5": {
        "module": "yolobuild.models.yolov5",
        "head": ANCHOR_BASED, "decode": "yolov5",
        "scales": tuple(YOLOV5_SCALES),
        "layouts": {
            "v6": {"strides": [8, 16, 32], "anchors": DEFAULT_ANCHORS, "what": "v6.0+ (6x6 stem, SPPF)"},
            "v5": {"strides": [8, 16, 32], "anchors": DEFAULT_ANCHORS, "what": "v5.0 and earlier (Focus, SPP)"},
            "p6": {"strides": [8, 16, 32, 64], "anchors": P6_ANCHORS, "what": "v6.0+ P6 (yolov5s6 etc.)"},
        },
        "recipe_prefix": "yolov5",
    },
    "yolov8": {
        "module": "yolobuild.models.yolov8",
        "head": ANCHOR_FREE, "decode": "dfl",
        "scales": tuple(YOLOV8_SCALES),
        "layouts": {
            "v8": {"strides": [8, 16, 32], "anchors": None, "what": "ultralytics YOLOv8 detect (DFL, reg_max 16)"},
        },
        "recipe_prefix": "yolov8",
    },
}


# Families written in their own modules (one file each, torch-free): their rows join the table here.
from . import darknet_arch, mmyolo_arch, ultralytics_arch, yolor_arch, yolov7_arch  # noqa: E402

for _extra in (darknet_arch, yolor_arch, mmyolo_arch, ultralytics_arch, yolov7_arch):
    FAMILIES.update(_extra.FAMILIES)


# --------------------------------------------------------------------------- the table of named patches
#
# One row per patch a recipe may name in graph.patches (or a family requires, FAMILIES[f]["patches"]):
# where its function lives ("module:function", imported only by ops that run torch), whether it only
# verifies the finished module (runs with an example input, changes nothing), and what it is for.
# A patch function takes (model, example) and returns figures; when its target module is not in the
# model it raises UserError: never a silent no-op.

PATCHES = {
    "silu_as_sigmoid_mul": {"function": "yolobuild.ops.patches:silu_as_sigmoid_mul", "verify_only": False,
                            "what": "SiLU written as x*sigmoid(x) (RKNN 1.x, old runtimes without Swish)"},
    "focus_as_conv": {"function": "yolobuild.ops.patches:focus_as_conv", "verify_only": False,
                      "what": "YOLOv5 v5.0 Focus (space-to-depth + conv) as one equivalent 6x6 stride-2 conv"},
    "syncbn_to_bn": {"function": "yolobuild.ops.patches:syncbn_to_bn", "verify_only": False,
                     "what": "SyncBatchNorm (multi-GPU training) as BatchNorm2d, which exporters know"},
    "no_inplace_slice": {"function": "yolobuild.ops.patches:verify_no_inplace_slice", "verify_only": True,
                         "what": "verify: no in-place write into a tensor slice (no ScatterND on export)"},
    "anchors_as_constants": {"function": "yolobuild.ops.patches:verify_anchors_as_constants", "verify_only": True,
                             "what": "verify: anchor grids are graph constants, never read from a buffer at run time"},
}
for _extra in (darknet_arch, yolor_arch, mmyolo_arch, yolov7_arch):
    PATCHES.update(getattr(_extra, "PATCHES", {}))


def family_patches(family: str, layout: str | None = None) -> list[str]:
    """Patches a family (or one of its layouts, where the layout row names its own) always needs for a correct
    export (applied before the recipe's graph.patches)."""
    spec = FAMILIES.get(family, {})
    row = spec.get("layouts", {}).get(layout) or {}
    return list(row["patches"] if "patches" in row else spec.get("patches", ()))


def family_spec(family: str) -> dict:
    if family not in FAMILIES:
        raise KeyError(family)
    return FAMILIES[family]


def layout_spec(family: str, layout: str) -> dict:
    return FAMILIES[family]["layouts"][layout]


def max_stride(family: str, layout: str) -> int:
    return max(FAMILIES[family]["layouts"][layout]["strides"])


def head_kind(family: str) -> str:
    return FAMILIES[family]["head"]


def describe(family: str, scale, layout: str) -> str:
    """'yolov5s (layout v6)', 'yolov3 (layout yolov3-tiny)' ..."""
    name = f"{family}{scale or ''}"
    return f"{name} (layout {layout})"
