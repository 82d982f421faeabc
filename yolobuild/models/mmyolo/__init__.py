"""mmyolo YOLOv5 (YOLOv5HeadModule, mmengine checkpoints): the family declaration, torch-free (models.family)."""
from ..family import ANCHOR_BASED, Family, patch_row
from .layers import MMYOLO_YOLOV5_ANCHORS, MMYOLO_YOLOV5_SCALES

FAMILIES = (
    # YOLOv5BBoxCoder + mmdet YOLOAnchorGenerator (centres at stride/2) decode exactly like
    # ultralytics' Detect, and convs_pred's channels per prior are [x, y, w, h, obj, cls...]:
    # runtime.decode's "yolov5" host decode applies to the raw convs_pred outputs unchanged.
    Family(name="mmyolo-yolov5", module="yolobuild.models.mmyolo.model", head=ANCHOR_BASED, decode="yolov5",
           scales=tuple(MMYOLO_YOLOV5_SCALES), recipe_prefix="mmyolo-yolov5",
           layouts={"v61": {"strides": [8, 16, 32], "anchors": MMYOLO_YOLOV5_ANCHORS,
                            "what": "mmyolo YOLOv5 v6.1 P5 (YOLOv5CSPDarknet, YOLOv5PAFPN, YOLOv5Head)"}}),
)
PATCHES = {
    "mmyolo_truncate_head": patch_row(
        "yolobuild.models.mmyolo.model:truncate_head",
        "mmyolo YOLOv5HeadModule.forward returns the three raw convs_pred maps, no split into "
        "cls / bbox / objectness (vacc has no mmyolo post-processing)"),
}
