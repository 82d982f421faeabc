"""mmyolo YOLOv5 scales and anchors (mmyolo configs), torch-free.
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
