"""Sophgo TPU-MLIR 1.30.2 (bm1684x bm1688 bm1684): compile a .bmodel, run it on the cmodel emulator.

Host side only: prepares the inputs (the network's float input, exactly as PyTorch sees it, as
.npz files for calibration, the step checks and the emulator), then runs tpu_mlir_worker.py inside
the isolated tpu-mlir environment (Python 3.10, see envs.ENVS["tpu-mlir"]), which runs
model_transform -> run_calibration -> model_deploy (compile) and model_runner (simulate), each in
its own work folder.

`fixup()` is the environment's install fix-up: the workarounds TOOLCHAINS.md lists for this
package, applied to the venv only, never to the user's system.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from ..context import OpContext
from ..runtime.arrays import canvas_to_input, load_npz, save_npz
from .envs import call_in_env, env_dir, find_spec

# backend.options for this toolchain: name -> check (defaults live in the target YAMLs; DEFAULTS fills the rest)
QUANTIZE = {"fp32": "F32", "fp16": "F16", "int8": "INT8"}
DEFAULTS = {
    "num_core": 1,              # --num_core: TPU cores the bmodel uses (bm1688: 1 or 2)
    "quantize_table": "head",   # --quantize_table: int8 layers kept in higher precision: head | none | [op names]
    "asymmetric": False,        # --asymmetric: asymmetric int8 (default symmetric)
    "calibration_method": "kl",  # run_calibration --cali_method: kl | mse | max | percentile9999
    "tolerance": 0.98,          # minimum cosine of each bmodel output vs the top MLIR (int8; fp16/fp32 use 0.99)
}
CALI_METHODS = ("kl", "mse", "max", "percentile9999")
CORES = {"bm1684x": (1,), "bm1684": (1,), "bm1688": (1, 2)}
NO_F16 = ("bm1684",)            # chips without F16: a quantize_table keeps layers in F32 there

# dataset.preprocess -> model_transform's preprocessing flags, one table. yolobuild feeds the emulator
# and calibration the network's float input (.npz), so these flags only describe the model's input in
# the MLIR/bmodel (what a deployment's --fuse_preprocess or a jpg --test_input would apply).
PREPROCESS_FLAGS = {
    "color": {"rgb": ("--pixel_format", "rgb"), "bgr": ("--pixel_format", "bgr")},
    "resize": {"letterbox": ("--keep_aspect_ratio",), "stretch": ()},
}


def _options(params: dict) -> dict:
    opts = {**DEFAULTS, **(params.get("options") or {})}
    for key in opts:
        if key not in DEFAULTS:
            raise UserError(f"backend.options.{key}: not a tpu-mlir option; allowed: {', '.join(DEFAULTS)}")
    platform = str(params["platform"]).lower()
    cores = CORES.get(platform, (1,))
    if opts["num_core"] not in cores:
        raise UserError(f"backend.options.num_core: {opts['num_core']!r} is not allowed on {platform}; "
                        f"allowed: {', '.join(map(str, cores))}")
    qt = opts["quantize_table"]
    if not (qt in ("head", "none") or (isinstance(qt, (list, tuple)) and all(isinstance(x, str) and x for x in qt))):
        raise UserError(f"backend.options.quantize_table: {qt!r} is not allowed; allowed: head, none, "
                        "or a list of op names (as in the top MLIR) kept in higher precision")
    if opts["asymmetric"] not in (True, False):
        raise UserError(f"backend.options.asymmetric: {opts['asymmetric']!r} is not allowed; allowed: true, false")
    if opts["calibration_method"] not in CALI_METHODS:
        raise UserError(f"backend.options.calibration_method: {opts['calibration_method']!r} is not allowed; "
                        f"allowed: {', '.join(CALI_METHODS)}")
    tol = opts["tolerance"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= float(tol) <= 1.0:
        raise UserError(f"backend.options.tolerance: {tol!r} is not allowed; allowed: a cosine in [0, 1]")
    return opts


def _preprocess_flags(p: dict) -> list[str]:
    flags = []
    for key, table in PREPROCESS_FLAGS.items():
        value = p.get(key, "rgb" if key == "color" else "letterbox")
        if value not in table:
            raise UserError(f"dataset.preprocess.{key}: {value!r} is not supported by tpu-mlir; "
                            f"allowed: {', '.join(table)}")
        flags += table[value]
    return flags


def _request(ctx: OpContext) -> dict:
    p = ctx.params
    if p["input_layout"] != "nchw_float32":
        raise UserError(f"target.input_layout: tpu-mlir runs nchw_float32 inputs, not {p['input_layout']}")
    platform = str(p["platform"]).lower()
    if p["precision"] not in QUANTIZE or (p["precision"] == "fp16" and platform in NO_F16):
        raise UserError(f"precision: {p['precision']!r} is not supported by tpu-mlir on {platform}")
    opts = _options(p)
    scale = round(float(p["scale"]), 7)
    return {"platform": platform, "precision": p["precision"], "quantize": QUANTIZE[p["precision"]],
            "height": int(p["height"]), "width": int(p["width"]),
            "mean": [0.0, 0.0, 0.0], "scale": [scale, scale, scale], "preprocess_flags": _preprocess_flags(p),
            "keep_dtype": "F32" if platform in NO_F16 else "F16", **opts}


def _lock(ctx: OpContext) -> str:
    """The cmodel lock, inside the environment folder: runs for different chips re-point shared links."""
    return str(env_dir(find_spec("tpu-mlir")) / "cmodel.lock")


def _inputs_npz(canvases: np.ndarray, scale: float, folder: Path, name: str = "input") -> list[str]:
    """One .npz per image holding the float network input under the ONNX input's name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, canvas in enumerate(canvases):
        path = folder / f"{i:05d}.npz"
        np.savez(path, **{name: canvas_to_input(canvas, scale)})
        paths.append(str(path))
    return paths


def _onnx_input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


def compile(ctx: OpContext) -> None:
    req = _request(ctx)
    scale = float(ctx.params["scale"])
    onnx_path = Path(ctx.inputs["model"])
    input_name = _onnx_input_name(onnx_path)
    work = ctx.scratch / "tpu-mlir"
    if ctx.params["precision"] == "int8":
        canvases = load_npz(ctx.inputs["calib"])["images"]
        req["calib"] = _inputs_npz(canvases, scale, ctx.scratch / "calib", input_name)
        test = canvases[:1]
    else:  # the step checks need one real-looking image; a mid-grey canvas keeps compile free of probe inputs
        test = np.full((1, req["height"], req["width"], 3), 114, dtype=np.uint8)
    req["test_input"] = _inputs_npz(test, scale, ctx.scratch / "test", input_name)[0]
    req.update(onnx=str(onnx_path), work=str(work), out=str(ctx.outputs["model.bmodel"]), lock=_lock(ctx))
    result = call_in_env(ctx, "tpu-mlir", "yolobuild.toolchains.tpu_mlir_worker:compile", req)
    steps = result["steps"]
    ctx.results["steps"] = steps
    ctx.results["compile"] = {"bytes": result["bytes"], "seconds_in_toolkit": result["_seconds"],
                              "step_seconds": result["step_seconds"], "outputs": result["outputs"],
                              "quantize_table": result.get("quantize_table", []),
                              **{k: req[k] for k in ("platform", "quantize", "num_core", "asymmetric")}}
    threshold = float(req["tolerance"]) if req["precision"] == "int8" else 0.99
    low = {name: c for name, c in steps["bmodel_vs_top"]["cosine"].items() if not c >= threshold}
    if low:
        worst = min(low, key=low.get)
        hint = ("; keys that may help: backend.options.quantize_table (keep layers in higher precision, e.g. head), "
                "more calibration images (dataset.calib.count), backend.options.calibration_method"
                if req["precision"] == "int8" else "")
        raise CheckFailed(f"compile: bmodel output {worst} cosine {low[worst]:.6f} vs the top MLIR is below "
                          f"the tolerance {threshold} (backend.options.tolerance){hint}; "
                          f"top MLIR vs ONNX: min cosine {min(steps['top_vs_onnx']['cosine'].values()):.6f}")


def simulate(ctx: OpContext) -> None:
    req = _request(ctx)
    probe = load_npz(ctx.inputs["probe"])
    images = ctx.scratch / "probe_inputs.npy"
    np.save(images, canvas_to_input(probe["images"], float(ctx.params["scale"])))
    out_dir = ctx.scratch / "sim"
    out_dir.mkdir(parents=True, exist_ok=True)
    import onnx

    graph = onnx.load(str(ctx.inputs["source"]), load_external_data=False).graph
    req.update(model=str(ctx.inputs["model"]), images=str(images), out_dir=str(out_dir), work=str(ctx.scratch / "run"),
               lock=_lock(ctx), input_name=_onnx_input_name(ctx.inputs["source"]), names=[o.name for o in graph.output])
    result = call_in_env(ctx, "tpu-mlir", "yolobuild.toolchains.tpu_mlir_worker:simulate", req)
    names = result["outputs"]
    arrays = {n: np.load(out_dir / f"{i}.npy") for i, n in enumerate(names)}
    save_npz(ctx.outputs["outputs.npz"], __names__=np.array(names), **arrays)
    ctx.results["simulate"] = {"images": result["images"], "seconds_in_toolkit": result["_seconds"],
                               "bmodel_outputs": result["bmodel_outputs"]}


# --------------------------------------------------------------------------- environment fix-ups
# Where each workaround of TOOLCHAINS.md (TPU-MLIR 1.30.2) lives:
#   psutil (needed, not declared), setuptools<81 (pkg_resources), transformers (onnxruntime_extensions
#     imports it: cannot be skipped) -> pinned in requirements/tpu-mlir.txt
#   glibc 2.35 libs shipped in lib/third_party, the torch import -> fixup() below (1), (2)
#   venv bin first on PATH (model_deploy runs npz_tool.py via `#!/usr/bin/env python3`) -> worker.call
#   weight npz found relative to the cwd, clutter in the cwd -> tpu_mlir_worker: one folder per step,
#     the weight file linked into it
#   OMP_NUM_THREADS defaults to 4 -> EnvSpec.extra_env sets 2
#   cmodel runs re-point links in site-packages -> tpu_mlir_worker: a lock file in the env folder

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

