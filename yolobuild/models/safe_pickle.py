"""Read full-pickle checkpoints (yolov5 train.py, ultralytics, YOLOR, mmengine) without running their code.

A full pickle names classes (`models.yolo.DetectionModel`, `models.common.C3`, ...) that
pickle imports and instantiates. Here every global a file names goes through an allow-list:

* tensor rebuild functions, dtypes, `collections.OrderedDict`, plain data types;
* a fixed set of `torch.nn` layer classes (instances are restored field by field, no
  constructor runs); `SyncBatchNorm` is read as `BatchNorm2d`;
* the known upstream model classes (yolov5, ultralytics, YOLOR, mmyolo / mmengine): each maps
  onto an inert yolobuild stand-in, a `torch.nn.Module` that only holds what the file stored
  (parameters, buffers, children, plain attributes) and cannot run.

Anything else is refused with `RefusedGlobal`, naming the global. yolobuild then rebuilds the
network with its own code from the stand-in tree's state_dict and metadata.

`allow_unknown=True` (model.trust_checkpoint=true) imports any other global normally.
`source_repo=PATH` (model.source.repo) imports the fork's modules found under PATH — importing a
module runs its code, so naming the folder is the user's explicit trust in that code — and lets the
pickle name only classes those modules define themselves (`cls.__module__` is the module) that are
`torch.nn.Module` subclasses or plain containers: never a function, and never a name the module
merely re-exports (`from subprocess import check_output` in a fork is refused).
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import datetime
import importlib
import pathlib
import pickle
import sys
import types
from pathlib import Path

import torch
from torch import nn


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, name: str, reason: str = ""):
        super().__init__(name)
        self.name, self.reason = name, reason


class SourceRepoError(pickle.UnpicklingError):
    pass


class Stub(nn.Module):
    """Inert stand-in for an upstream module class: holds the pickled fields, never runs."""

    __upstream__ = "?"

    def __init__(self, *args, **kwargs):   # only reached through REDUCE; builds nothing from file data
        super().__init__()

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.__upstream__} is an inert stand-in read from a checkpoint; it cannot run")

    def forward_fuse(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __setstate__(self, state):
        nn.Module.__setstate__(self, state)
        for key in ("_parameters", "_buffers", "_modules"):
            if key not in self.__dict__:
                self.__dict__[key] = {}

    @property
    def upstream_name(self) -> str:
        return self.__upstream__


class InertData:
    """Stand-in for a plain upstream data class (mmengine HistoryBuffer, ConfigDict...): keeps its fields."""

    __upstream__ = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class InertDict(dict):
    __upstream__ = "?"

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


_STUBS: dict[str, type] = {}


def _stub(full_name: str, base: type = Stub) -> type:
    key = f"{base.__name__}:{full_name}"
    if key not in _STUBS:
        _STUBS[key] = type(full_name.rsplit(".", 1)[1], (base,), {"__upstream__": full_name,
                                                                  "__module__": "yolobuild.models.safe_pickle"})
    return _STUBS[key]


def upstream_name(module: nn.Module) -> str:
    """'models.common.C3' for a stand-in, 'torch.nn.Conv2d' style for torch layers."""
    return getattr(type(module), "__upstream__", None) or f"{type(module).__module__}.{type(module).__name__}"


# ---------------------------------------------------------------------------------- the allow-list

# upstream model modules and the classes they may define (prefixes: a class in any of these
# modules is a known model class). Each family's loader decides what it understands.
UPSTREAM_MODULES = (
    # ultralytics/yolov5 checkout, pip package, and the yolov3 repo (same code base)
    "models.yolo", "models.common", "models.experimental", "utils.activations",
    "yolov5.models.yolo", "yolov5.models.common", "yolov5.models.experimental", "yolov5.utils.activations",
    # ultralytics (8.x), including the pre-8.0.44 module path
    "ultralytics.nn.tasks", "ultralytics.nn.modules.block", "ultralytics.nn.modules.conv",
    "ultralytics.nn.modules.head", "ultralytics.nn.modules.transformer", "ultralytics.nn.modules",
    "ultralytics.yolo.v8.detect", "ultralytics.nn.modules.activation",
    # mmyolo / mmdet / mmcv / mmengine model classes
    "mmyolo.models.detectors.yolo_detector", "mmyolo.models.backbones.csp_darknet",
    "mmyolo.models.necks.yolov5_pafpn", "mmyolo.models.dense_heads.yolov5_head", "mmyolo.models.layers.yolo_bricks",
    "mmyolo.models.data_preprocessors.data_preprocessor",
    "mmdet.models.layers.csp_layer", "mmcv.cnn.bricks.conv_module", "mmcv.cnn.bricks.activation",
)

# plain data classes upstream checkpoints carry next to the model (training state, configs)
INERT_DATA = {
    "mmengine.logging.history_buffer.HistoryBuffer": InertData,
    "mmengine.logging.message_hub.MessageHub": InertData,
    "mmengine.config.config.ConfigDict": InertDict,
    "mmengine.config.config.Config": InertData,
    "ultralytics.utils.IterableSimpleNamespace": InertData,
    "ultralytics.yolo.utils.IterableSimpleNamespace": InertData,
    "ultralytics.utils.metrics.DetMetrics": InertData,
    "ultralytics.utils.loss.v8DetectionLoss": InertData,
    "ultralytics.utils.loss.E2EDetectLoss": InertData,
    "ultralytics.utils.loss.v10DetectLoss": InertData,
    "ultralytics.utils.loss.BboxLoss": InertData,
    "ultralytics.utils.tal.TaskAlignedAssigner": InertData,
}

_NN_LAYERS = {
    "Conv2d", "ConvTranspose2d", "BatchNorm2d", "BatchNorm1d", "LayerNorm", "GroupNorm", "SiLU", "ReLU", "ReLU6",
    "LeakyReLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "Mish", "GELU", "Identity", "Upsample", "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "ModuleList", "ModuleDict", "Sequential", "Dropout", "ZeroPad2d",
    "Softmax", "Linear", "Flatten", "Module",
}

_TORCH_FUNCS = {
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2", "torch._utils._rebuild_device_tensor_from_numpy",
    "torch.nn.parameter.Parameter", "torch.Size", "torch.device", "torch.Tensor", "torch._C._nn.gelu",
}

_DATA = {
    "collections.OrderedDict": collections.OrderedDict, "collections.defaultdict": collections.defaultdict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice, "builtins.range": range,
    "builtins.complex": complex, "builtins.object": object, "builtins.bytearray": bytearray,
    "datetime.datetime": datetime.datetime, "datetime.date": datetime.date, "datetime.timedelta": datetime.timedelta,
    "types.SimpleNamespace": types.SimpleNamespace, "argparse.Namespace": types.SimpleNamespace,
    "pathlib.PosixPath": pathlib.PurePosixPath, "pathlib.WindowsPath": pathlib.PureWindowsPath,
    "pathlib._local.PosixPath": pathlib.PurePosixPath, "pathlib._local.WindowsPath": pathlib.PureWindowsPath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath, "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
}


def _codecs_encode(obj, encoding="latin1"):
    """Protocol-2 pickles write bytes as _codecs.encode(str, 'latin1'): only that form is allowed."""
    if isinstance(obj, str) and encoding in ("latin1", "latin-1"):
        return obj.encode("latin1")
    raise RefusedGlobal(f"_codecs.encode({type(obj).__name__}, {encoding!r})")


def _numpy_global(full: str):
    import numpy as np

    mod, _, name = full.rpartition(".")
    if mod in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return np.float64(0).__reduce__()[0] if name == "scalar" else np.ndarray.__reduce__(np.zeros(1))[0]
    if full in ("numpy.ndarray", "numpy.dtype"):
        return getattr(np, name)
    if mod == "numpy.dtypes" and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    if mod == "numpy" and name in ("float64", "float32", "float16", "int64", "int32", "bool_", "uint8"):
        return getattr(np, name)
    return None


def _safe_getattr(obj, name):
    """Checkpoints pickle bound methods (`m.forward = m.forward_fuse`) as getattr(module, name)."""
    if isinstance(obj, nn.Module) and name in ("forward", "forward_fuse", "forward_split"):
        return getattr(obj, name)
    if isinstance(obj, type) and issubclass(obj, (Stub, nn.Module)) and not name.startswith("_"):
        attr = getattr(obj, name, None)
        if not callable(attr) or (isinstance(attr, type) and issubclass(attr, (Stub, nn.Module))):
            return attr   # plain class data, or a nested layer class: nothing a REDUCE could call to run code
    raise RefusedGlobal(f"builtins.getattr({type(obj).__name__}, {name!r})")


def resolve_known(module: str, name: str):
    """The object a known global maps to, or None when it is not on the allow-list."""
    module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)   # protocol-2 names
    full = f"{module}.{name}"
    if full in _DATA:
        return _DATA[full]
    if full == "_codecs.encode":
        return _codecs_encode
    if full == "builtins.getattr":
        return _safe_getattr
    if full in _TORCH_FUNCS:
        mod, _, attr = full.rpartition(".")
        return getattr(importlib.import_module(mod), attr)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith("torch.nn.modules.") or module == "torch.nn":
        if name == "SyncBatchNorm":
            return nn.BatchNorm2d
        if name in _NN_LAYERS:
            return getattr(nn, name)
    if module.startswith("numpy"):
        return _numpy_global(full)
    if full in INERT_DATA:
        return _stub(full, INERT_DATA[full])
    if module in UPSTREAM_MODULES or module.startswith(("mmyolo.models.", "mmdet.models.", "mmcv.cnn.")):
        if name[:1].isupper():                 # classes only: no functions from upstream modules
            return _stub(full)
    return None


def _import_from_repo(repo: Path, module: str, name: str):
    """Import module.name only when the module's file lies under repo (model.source.repo)."""
    rel = Path(*module.split("."))
    found = [p for p in (repo / f"{rel}.py", repo / rel / "__init__.py") if p.is_file()]
    if not found:
        raise SourceRepoError(f"model.source.repo: {repo} has no module {module} (looked for {rel}.py); "
                              f"the checkpoint references {module}.{name}")
    repo_s = str(repo)
    if repo_s not in sys.path:
        sys.path.insert(0, repo_s)
    mod = importlib.import_module(module)
    origin = Path(getattr(mod, "__file__", "") or "").resolve()
    if repo.resolve() not in origin.parents:
        raise SourceRepoError(f"model.source.repo: {module} was imported from {origin}, not from {repo}")
    try:
        obj = getattr(mod, name)
    except AttributeError:
        raise SourceRepoError(f"model.source.repo: {repo}/{rel}.py defines no {name} "
                              f"(the checkpoint references {module}.{name})") from None
    if not _fork_class(obj, module):
        raise RefusedGlobal(f"{module}.{name}", "model.source.repo lets a checkpoint name only nn.Module or "
                            "container classes its fork's modules define, not functions or re-exported names")
    return obj


_CONTAINERS = (dict, list, tuple, set, frozenset)


def _fork_class(obj, module: str) -> bool:
    """A class the fork's module itself defines, and one a model checkpoint holds: a layer or a container."""
    return (isinstance(obj, type) and getattr(obj, "__module__", None) == module
            and issubclass(obj, (nn.Module, *_CONTAINERS)))


def make_pickle_module(allow_unknown: bool = False, source_repo: Path | None = None) -> types.ModuleType:
    """A module object usable as torch.load(pickle_module=...) with the restricted Unpickler."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            # Python 2 names, as protocol-2 pickles write them (subprocess as `commands`): judge the real module
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            obj = resolve_known(module, name)
            if obj is not None:
                return obj
            if source_repo is not None and module.split(".")[0] not in sys.stdlib_module_names:
                return _import_from_repo(source_repo, module, name)
            if allow_unknown:
                return super().find_class(module, name)
            raise RefusedGlobal(f"{module}.{name}")

    mod = types.ModuleType("yolobuild_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.UnpicklingError = pickle.UnpicklingError

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    mod.load = load
    mod.loads = lambda data, **kw: Unpickler(__import__("io").BytesIO(data), **kw).load()
    mod.__name__ = "yolobuild_restricted_pickle"
    return mod


def restricted_load(path, allow_unknown: bool = False, source_repo: Path | None = None):
    """torch.load through the restricted unpickler (CPU)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=make_pickle_module(allow_unknown, source_repo))


# ---------------------------------------------------------------------------------- reading stand-in trees

def module_attr(module: nn.Module, name: str, default=None):
    """A plain attribute the pickle stored on a (stand-in) module."""
    return module.__dict__.get(name, default)


__all__ = ["RefusedGlobal", "SourceRepoError", "Stub", "restricted_load", "make_pickle_module", "upstream_name",
           "module_attr", "builtins"]
