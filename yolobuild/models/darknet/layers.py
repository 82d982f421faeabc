"""YOLOv3 / YOLOv3-tiny default anchors per layout, torch-free.

The model itself is built by parsing the shipped cfg files (models/cfg/*.cfg, the one source of
truth for layers, strides and default anchors); the strides and anchors below are what those cfgs
give, in yolobuild's level order (increasing stride), and tests/test_darknet.py checks they agree.
"""

YOLOV3_ANCHORS = [
    [10, 13, 16, 30, 33, 23],
    [30, 61, 62, 45, 59, 119],
    [116, 90, 156, 198, 373, 326],
]
# pjreddie's yolov3-tiny.cfg: the stride-16 [yolo] uses mask 1,2,3 (the released weights were trained so)
YOLOV3_TINY_ANCHORS = [
    [23, 27, 37, 58, 81, 82],
    [81, 82, 135, 169, 344, 319],
]


def standalone_config(meta: dict, shape) -> dict:
    """The standalone definition's CONFIG (models.definition): the Darknet cfg's layers (classes / filters set
    for nc)."""
    from ..definition import common_config
    from . import darknet_cfg as dc

    layers = dc.walk(dc.with_classes(dc.read_cfg(meta["layout"]), int(meta["nc"])))
    keep = ("type", "index", "inputs", "c_in", "filters", "size", "stride", "pad", "groups", "bn", "act")
    levels = dc.levels(layers)
    return {"layout": meta["layout"], **common_config(meta, shape),
            "heads": {y["index"] - 1: level for level, y in enumerate(levels)},     # conv before a [yolo] -> level
            "yolo_levels": {y["index"]: level for level, y in enumerate(levels)},
            "layers": [{k: la[k] for k in keep if k in la} for la in layers]}
