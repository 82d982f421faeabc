"""ultralytics YOLOv8 detect (anchor-free, DFL): the family declaration, torch-free (models.family)."""
from ..family import ANCHOR_FREE, Family
from .layers import YOLOV8_SCALES

FAMILIES = (
    Family(name="yolov8", module="yolobuild.models.yolov8.model", head=ANCHOR_FREE, decode="dfl",
           scales=tuple(YOLOV8_SCALES), recipe_prefix="yolov8",
           layouts={"v8": {"strides": [8, 16, 32], "anchors": None,
                           "what": "ultralytics YOLOv8 detect (DFL, reg_max 16)"}}),
)
PATCHES: dict = {}
