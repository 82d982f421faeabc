"""The GPU, then TensorRT and the CUDA runtime bindings, each missing piece named in one line.

The GPU is looked for first and cheaply (gpu.py), so a machine without one never imports the vendor's
Python, and a GPU machine without the packages is told the one command that installs them.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ...errors import ToolchainError, UserError, one_line
from . import gpu

INSTALL = 'pip install "yolobuild[tensorrt]"'


def require_gpus() -> list[gpu.Gpu]:
    """Every NVIDIA GPU here, or the one line a machine without one gets."""
    try:
        return gpu.find_gpus()
    except gpu.NoGpu as why:
        raise ToolchainError(f"tensorrt: no NVIDIA GPU on this machine ({why}); a TensorRT engine is built and "
                             "run on the GPU it is for, so build on one (validate and plan work anywhere)") from None


def pick_gpu(gpus: list[gpu.Gpu], device: int) -> gpu.Gpu:
    if device >= len(gpus):
        raise UserError(f"backend.options.device: {device} is not a GPU here; allowed: 0..{len(gpus) - 1} "
                        f"({', '.join(g.name for g in gpus)})")
    return gpus[device]


def _import(module: str, what: str) -> ModuleType:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a parent package that is missing or half-installed
        found = False
    if not found:
        raise ToolchainError(f"tensorrt: {what} is not installed in this environment; {INSTALL}")
    try:
        return importlib.import_module(module)
    except Exception as exc:   # e.g. libnvinfer missing beside the bindings
        raise ToolchainError(f"tensorrt: {what} does not load ({one_line(exc)}); "
                             f"reinstall it with {INSTALL}") from None


def load_tensorrt() -> ModuleType:
    return _import("tensorrt", "the TensorRT Python package (tensorrt)")


def load_cudart() -> ModuleType:
    """CUDA runtime bindings from cuda-python: `cuda.bindings.runtime` (12.6+), or the older `cuda.cudart`."""
    try:
        if importlib.util.find_spec("cuda.bindings") is not None:
            return _import("cuda.bindings.runtime", "cuda-python (cuda.bindings)")
    except (ImportError, ValueError):
        pass
    return _import("cuda.cudart", "cuda-python (cuda.bindings)")
