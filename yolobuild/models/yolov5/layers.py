"""YOLOv5 layer tables, as data: (from, repeats, layer type, args) per layer (upstream models/*.yaml).

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


def standalone_config(meta: dict, shape) -> dict:
    """The standalone definition's CONFIG (models.definition): the layer table and scale multiples."""
    from ..definition import common_config

    gd, gw = YOLOV5_SCALES[meta["scale"]]
    return {"model_scale": meta["scale"], "layout": meta["layout"], "depth_multiple": gd, "width_multiple": gw,
            **common_config(meta, shape), "layers": [list(row) for row in YOLOV5_LAYOUTS[meta["layout"]]]}
