"""Imported INSIDE the upstream test venv (never by yolobuild): lets the yolov7 code of the `yolov7detect`
sdist (WongKinYiu/yolov7's models/, utils/, train.py, repackaged under `yolov7.`) run here and pickle its
models as a checkout of the original repo does, with the sdist's files left as they are.

- `original_repo_modules()`: the model classes pickle as `models.yolo.Model`, `models.common.Conv`, ...
  (what users' train.py checkpoints name), and those names import back to the same modules.
- `compat()`: what the 2022 code needs from this venv: numpy's removed `np.int`/`np.float`/`np.bool`
  aliases, the torchvision names it imports but never calls on this path (the venv's torchvision is
  a stub), a no-op tensorboard SummaryWriter (tensorboard is not installed), and torch.load's old
  default (train.py re-reads its own full pickles; set before torch is imported).
"""
import importlib
import os
import sys
import types

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


class _NoSummaryWriter:
    """train.py logs scalars and histograms to tensorboard; here they go nowhere."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def compat() -> None:
    import numpy as np

    for name, alias in (("int", int), ("float", float), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, alias)
    for mod, names in (("torchvision.utils", ("save_image",)),
                       ("torchvision.ops", ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align"))):
        m = importlib.import_module(mod)
        for name in names:
            if not hasattr(m, name):
                setattr(m, name, lambda *a, **k: None)
    board = types.ModuleType("torch.utils.tensorboard")
    board.SummaryWriter = _NoSummaryWriter
    sys.modules["torch.utils.tensorboard"] = board


def original_repo_modules() -> None:
    """Alias yolov7.models.* as models.* and name their classes by the short module (pickle writes that)."""
    for sub in ("yolo", "common", "experimental"):
        importlib.import_module(f"yolov7.models.{sub}")
    sys.modules["models"] = sys.modules["yolov7.models"]
    for full, mod in list(sys.modules.items()):
        if not full.startswith("yolov7.models.") or mod is None:
            continue
        short = full[len("yolov7."):]
        sys.modules[short] = mod
        for value in vars(mod).values():
            if isinstance(value, type) and value.__module__ == full:
                value.__module__ = short
