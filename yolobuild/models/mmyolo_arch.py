"""mmyolo YOLOv5 (YOLOv5HeadModule, mmengine checkpoints): the family table rows, torch-free.

Not importing models.arch (it imports this module): the values are written out here.
"""

# deepen_factor, widen_factor per scale (mmyolo configs/yolov5/yolov5_{n,s,m,l,x}-v61_syncbn_8xb16-300e_coco.py)
MMYOLO_YOLOV5_SCALES = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}

# mmyolo's yolov5 config `anchors` (prior_generator.base_sizes), pixels, per level (w, h) pairs flattened
MMYOLO_YOLOV5_ANCHORS = [
    [10, 13, 16, 30, 33, 23],
    [30, 61, 62, 45, 59, 119],
    [116, 90, 156, 198, 373, 326],
]

FAMILIES: dict = {
    "mmyolo-yolov5": {
        "module": "yolobuild.models.mmyolo",
        # YOLOv5BBoxCoder + mmdet YOLOAnchorGenerator (centres at stride/2) decode exactly like
        # ultralytics' Detect, and convs_pred's channels per prior are [x, y, w, h, obj, cls...]:
        # runtime.decode's "yolov5" host decode applies to the raw convs_pred outputs unchanged.
        "head": "anchor_based", "decode": "yolov5",
        "scales": tuple(MMYOLO_YOLOV5_SCALES),
        "layouts": {
            "v61": {"strides": [8, 16, 32], "anchors": MMYOLO_YOLOV5_ANCHORS,
                    "what": "mmyolo YOLOv5 v6.1 P5 (YOLOv5CSPDarknet, YOLOv5PAFPN, YOLOv5Head)"},
        },
        "recipe_prefix": "mmyolo-yolov5",
        "patches": [],
    },
}

PATCHES: dict = {
    "mmyolo_truncate_head": {
        "function": "yolobuild.models.mmyolo:truncate_head", "verify_only": False,
        "what": "mmyolo YOLOv5HeadModule.forward returns the three raw convs_pred maps, no split into "
                "cls / bbox / objectness (VastAI vacc has no mmyolo post-processing)",
    },
}
