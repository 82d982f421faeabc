"""YOLOR (ImplicitA / ImplicitM, IDetect; WongKinYiu/yolor paper branch): the family declaration, torch-free."""
from ..family import ANCHOR_BASED, Family, patch_row
from .layers import YOLOR_ANCHORS

FAMILIES = (
    # IDetect decodes like YOLOv5's Detect (sigmoid, xy*2-0.5+grid, (wh*2)^2*anchor) once ImplicitA /
    # ImplicitM are applied around each output conv: the host decode "yolov5" applies to the raw head
    # outputs (which carry ImplicitM already).
    Family(name="yolor", module="yolobuild.models.yolor.model", head=ANCHOR_BASED, decode="yolov5",
           scales=(None,), recipe_prefix="yolor",
           layouts={
               "p6": {"strides": [8, 16, 32, 64], "anchors": YOLOR_ANCHORS,
                      "what": "YOLOR-P6 (WongKinYiu/yolor paper branch, models/yolor-p6.yaml)"},
               "w6": {"strides": [8, 16, 32, 64], "anchors": YOLOR_ANCHORS,
                      "what": "YOLOR-W6 (WongKinYiu/yolor paper branch, models/yolor-w6.yaml)"},
           },
           # verify-only: this IDetect is export-clean by construction (see model.py); the patch proves it
           # on every build. syncbn_to_bn is added by the patch op when the checkpoint held SyncBatchNorm
           # (model.pt "syncbn"), never unconditionally.
           patches=("idetect_export",)),
)
PATCHES = {
    "fuse_implicit": patch_row(
        "yolobuild.models.yolor.model:fuse_implicit",
        "YOLOR IDetect: fold ImplicitA into each output conv's bias (b + W.a) and ImplicitM into its "
        "weight and bias (m*W, m*b), so the head is plain 1x1 convs (YOLOR's own fuse idea)"),
    "idetect_export": patch_row(
        "yolobuild.models.yolor.model:verify_idetect_export",
        "verify: YOLOR IDetect in eval returns the chosen head layout (upstream's `training |= export` "
        "returned raw maps), decodes without in-place slice writes, broadcasts anchors as (1,na,1,1,2) "
        "constants", verify_only=True),
}
