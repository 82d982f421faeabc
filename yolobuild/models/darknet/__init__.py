"""YOLOv3 / YOLOv3-tiny (Darknet .cfg + .weights): the family declaration, torch-free (models.family).

The model is built by parsing the shipped cfg files (cfg/*.cfg, the one source of truth for layers,
strides and default anchors; darknet_cfg.py reads them and the .weights byte layout); layers.py gives
the strides and anchors those cfgs give, in yolobuild's level order (tests/test_darknet.py checks they
agree); model.py the torch network, the .weights reader and writer.
"""
from ..family import ANCHOR_BASED, Family, Standalone
from .layers import YOLOV3_ANCHORS, YOLOV3_TINY_ANCHORS

FAMILIES = (
    Family(name="yolov3", module="yolobuild.models.darknet.model", head=ANCHOR_BASED, decode="darknet",
           scales=(None,), recipe_prefix="yolov3",
           layouts={
               "yolov3": {"strides": [8, 16, 32], "anchors": YOLOV3_ANCHORS,
                          "what": "Darknet YOLOv3 (Darknet-53, cfg/yolov3.cfg)"},
               "yolov3-tiny": {"strides": [16, 32], "anchors": YOLOV3_TINY_ANCHORS,
                               "what": "Darknet YOLOv3-tiny (cfg/yolov3-tiny.cfg)"},
           },
           standalone=Standalone("templates/darknet_torch13.py", "yolobuild.models.darknet.layers:standalone_config",
                                 "Darknet cfg layers, LeakyReLU(0.1)"),
           cfg="yolobuild.models.darknet.darknet_cfg", cfg_what="a Darknet cfg"),
)
PATCHES: dict = {}
