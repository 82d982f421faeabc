"""YOLOR (ImplicitA / ImplicitM, IDetect): the family table rows, torch-free."""

FAMILIES: dict = {}
PATCHES: dict = {}
