"""YOLOv5 (ultralytics/yolov5 v5.0, v6.0+, P6): the family declaration, torch-free (models.family).

layers.py holds the layer tables; model.py the torch network (upstream's module names, so upstream
state_dicts load unchanged); templates/ the standalone PyTorch 1.3 definition for vendor flows.
"""
from ..family import ANCHOR_BASED, Family, Standalone
from .layers import DEFAULT_ANCHORS, P6_ANCHORS, YOLOV5_SCALES

FAMILIES = (
    Family(name="yolov5", module="yolobuild.models.yolov5.model", head=ANCHOR_BASED, decode="yolov5",
           scales=tuple(YOLOV5_SCALES), recipe_prefix="yolov5",
           layouts={
               "v6": {"strides": [8, 16, 32], "anchors": DEFAULT_ANCHORS, "what": "v6.0+ (6x6 stem, SPPF)"},
               "v5": {"strides": [8, 16, 32], "anchors": DEFAULT_ANCHORS, "what": "v5.0 and earlier (Focus, SPP)"},
               "p6": {"strides": [8, 16, 32, 64], "anchors": P6_ANCHORS, "what": "v6.0+ P6 (yolov5s6 etc.)"},
           },
           standalone=Standalone("templates/yolov5_torch13.py", "yolobuild.models.yolov5.layers:standalone_config",
                                 "SiLU as x*sigmoid(x)")),
)
PATCHES: dict = {}
