"""mmyolo YOLOv5 (YOLOv5HeadModule, mmengine checkpoints): the family table rows, torch-free."""

FAMILIES: dict = {}
PATCHES: dict = {}
