"""YOLOv3 / YOLOv3-tiny (Darknet .cfg + .weights): the family table rows, torch-free."""

FAMILIES: dict = {}
PATCHES: dict = {}
