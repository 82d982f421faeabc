"""YOLOv3 / YOLOv3-tiny (Darknet .cfg + .weights): the family table rows, torch-free.

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

FAMILIES: dict = {
    "yolov3": {
        "module": "yolobuild.models.darknet",
        "head": "anchor_based", "decode": "darknet",
        "scales": (None,),
        "layouts": {
            "yolov3": {"strides": [8, 16, 32], "anchors": YOLOV3_ANCHORS,
                       "what": "Darknet YOLOv3 (Darknet-53, cfg/yolov3.cfg)"},
            "yolov3-tiny": {"strides": [16, 32], "anchors": YOLOV3_TINY_ANCHORS,
                            "what": "Darknet YOLOv3-tiny (cfg/yolov3-tiny.cfg)"},
        },
        "recipe_prefix": "yolov3",
    },
}
PATCHES: dict = {}
