"""YOLOv7 and YOLOv7-tiny (WongKinYiu/yolov7): the family declaration, torch-free (models.family)."""
from ..family import ANCHOR_BASED, Family, patch_row
from .layers import YOLOV7_ANCHORS, YOLOV7_TINY_ANCHORS

FAMILIES = (
    # IDetect decodes like YOLOv5's Detect once ImplicitA / ImplicitM are applied: host decode "yolov5"
    Family(name="yolov7", module="yolobuild.models.yolov7.model", head=ANCHOR_BASED, decode="yolov5",
           scales=(None,), recipe_prefix="yolov7",
           layouts={"yolov7-tiny": {"strides": [8, 16, 32], "anchors": YOLOV7_TINY_ANCHORS,
                                    "what": "YOLOv7-tiny (ELAN, LeakyReLU, IDetect)"},
                    "yolov7": {"strides": [8, 16, 32], "anchors": YOLOV7_ANCHORS, "patches": ("fuse_repconv",),
                               "what": "YOLOv7 (ELAN, SPPCSPC, RepConv, IDetect)"}}),
)
PATCHES = {
    "fuse_repconv": patch_row(
        "yolobuild.models.yolov7.model:fuse_repconv",
        "YOLOv7 RepConv: fold the 3x3, 1x1 and identity branches (each with its BN) into one 3x3 conv "
        "with bias (RepVGG re-parameterisation), as upstream's deploy models are"),
}
