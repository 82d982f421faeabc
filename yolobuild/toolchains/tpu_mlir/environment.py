"""The tpu-mlir environment's install fix-ups (toolchain.yaml `environment.fixup`): applied to the venv only.

`fixup()` holds the workarounds this TPU-MLIR release needs, each checked, never touching the
user's system.
"""
from __future__ import annotations

from pathlib import Path

# --------------------------------------------------------------------------- environment fix-ups
# Where each workaround for TPU-MLIR 1.30.2 lives:
#   psutil (needed, not declared), setuptools<81 (pkg_resources), transformers (onnxruntime_extensions
#     imports it: cannot be skipped) -> pinned in requirements/tpu-mlir.txt
#   glibc 2.35 libs shipped in lib/third_party, the torch import -> fixup() below (1), (2)
#   venv bin first on PATH (model_deploy runs npz_tool.py via `#!/usr/bin/env python3`) -> worker.call
#   weight npz found relative to the cwd, clutter in the cwd -> worker.py: one folder per step,
#     the weight file linked into it
#   OMP_NUM_THREADS defaults to 4 -> EnvSpec.extra_env sets 2
#   cmodel runs re-point links in site-packages -> worker.py: a lock file in the env folder

# (1) tpu_mlir puts tpu_mlir/lib/third_party first on LD_LIBRARY_PATH and ships glibc 2.35 there;
#     with a newer system glibc every tool dies with "GLIBC_2.36 not found". The system's own
#     libc/libm/libpthread must win, so these three files are moved aside (kept, renamed).
GLIBC_FILES = ("libc.so.6", "libm.so.6", "libpthread.so.0")

# (2) The ONNX path imports torch at module top (transform/OnnxOpt.py, calibration/kld_calibrator.py)
#     and only calls torch.tensor(x).numpy(); onnxruntime_extensions/_torch_cvt.py subclasses
#     torch.autograd.Function and torch.nn.Module at import time. No CPU torch wheel exists for
#     py3.10 on PyPI (a CUDA one is several GB), so the venv gets this numpy-backed stand-in. It
#     has no dist-info, so packages that probe for torch by metadata (transformers) see none.
TORCH_SHIM = '''"""numpy-backed stand-in for torch, written by yolobuild into the tpu-mlir venv only.

TPU-MLIR's ONNX path imports torch but uses only torch.tensor(x).numpy(); onnxruntime_extensions
subclasses torch.autograd.Function / torch.nn.Module at import time. Anything else raises.
"""
import sys as _sys
import types as _types

import numpy as _np

__version__ = "0.0.0+yolobuild.shim"
YOLOBUILD_SHIM = True


class Tensor:
    def __init__(self, data, dtype=None):
        self._a = _np.array(data, dtype=dtype)

    def numpy(self):
        return self._a

    @property
    def shape(self):
        return self._a.shape


def tensor(data, dtype=None, **_):
    return Tensor(data, dtype)


def from_numpy(a):
    return Tensor(a)


float32 = float = _np.float32
float16 = half = _np.float16
int64 = long = _np.int64
int32 = int = _np.int32

autograd = _types.ModuleType("torch.autograd")


class Function:
    pass


autograd.Function = Function
nn = _types.ModuleType("torch.nn")


class Module:
    pass


nn.Module = Module
_sys.modules["torch.autograd"] = autograd
_sys.modules["torch.nn"] = nn


def __getattr__(name):
    raise AttributeError(f"torch.{name}: not offered by yolobuild's torch shim in the tpu-mlir environment")
'''


def fixup(env: Path, log: Path) -> None:
    """The tpu-mlir environment's fix-ups (envs.EnvSpec.fixup), each checked; touches only `env`."""
    site = next((env / "lib").glob("python3.*/site-packages"))
    third_party = site / "tpu_mlir" / "lib" / "third_party"
    notes = []
    for name in GLIBC_FILES:
        lib, aside = third_party / name, third_party / f"{name}.shipped-by-tpu-mlir"
        if lib.exists():
            lib.rename(aside)
            notes.append(f"moved aside {lib}")
        if lib.exists() or not aside.exists():
            raise RuntimeError(f"tpu-mlir fix-up: {lib} could not be moved aside")
    shim = site / "torch"
    if shim.exists() and not (shim / "__init__.py").read_text().count("YOLOBUILD_SHIM"):
        raise RuntimeError(f"tpu-mlir fix-up: {shim} exists and is not yolobuild's shim (a real torch?)")
    shim.mkdir(exist_ok=True)
    (shim / "__init__.py").write_text(TORCH_SHIM)
    notes.append(f"wrote the numpy torch shim {shim}")
    # (3) tpu_mlir chmods its own tools on first import when they are not executable: do it now,
    #     once, so two first builds at once never race on it.
    for tool in (site / "tpu_mlir" / "python" / "tools").glob("*.py"):
        tool.chmod(tool.stat().st_mode | 0o111)
    with open(log, "a") as f:
        f.write("".join(f"fixup: {n}\n" for n in notes))

