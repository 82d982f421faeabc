"""ultralytics YOLO11 and YOLO26 detect: the family declarations, torch-free (models.family).

One package for both: the same body (layers.py) and one head class (model.py), YOLO26's with the
one-to-one branches and reg_max 1. YOLO26 adds the `topk` head layout: the end-to-end output,
(bs, max_det, 6) rows x1, y1, x2, y2, score, class, final detections without NMS.
"""
from ..family import ANCHOR_FREE, COMMON_HEADS, Family
from .layers import HEAD_OPTIONS, YOLO11_SCALES, YOLO26_SCALES

FAMILIES = (
    Family(name="yolo11", module="yolobuild.models.yolo11.model", head=ANCHOR_FREE, decode="dfl",
           reg_max=HEAD_OPTIONS["yolo11"]["reg_max"], scales=tuple(YOLO11_SCALES), recipe_prefix="yolo11",
           layouts={"11": {"strides": [8, 16, 32], "anchors": None,
                           "what": "ultralytics YOLO11 detect (C3k2, C2PSA, DFL head)"}}),
    Family(name="yolo26", module="yolobuild.models.yolo11.model", head=ANCHOR_FREE, decode="dfl",
           reg_max=HEAD_OPTIONS["yolo26"]["reg_max"], scales=tuple(YOLO26_SCALES), recipe_prefix="yolo26",
           layouts={"26": {"strides": [8, 16, 32], "anchors": None,
                           "what": "ultralytics YOLO26 detect (one-to-one NMS-free head, no DFL)"}},
           heads=COMMON_HEADS + ("topk",)),
)
PATCHES: dict = {}
