"""The op kinds a plan is made of: one table, implementations imported lazily.

An op implementation is a function `run(ctx: OpContext) -> None` that reads `ctx.inputs`,
writes every name of `ctx.outputs` (files or folders), and may put small JSON-able
figures in `ctx.results` (they are cached with the outputs and land in the manifest).
It raises `UserError` for bad user input (exit 2), `ToolchainError` / `CheckFailed` (exit 3).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..context import OpContext  # noqa: F401 (re-exported: ops import it from here)
from ..runtime.quiet import TORCH_EXPORT_LOCK  # noqa: F401 (ops take it around torch's global export state)


@dataclass(frozen=True)
class OpKind:
    impl: str                 # "module:function"
    version: int              # bump when the implementation's output changes
    tools: tuple[str, ...]    # distributions whose versions enter the fingerprint
    code: tuple[str, ...] = ()  # files / folders under yolobuild/ it runs: their source enters the fingerprint
    cacheable: bool = True
    own_process: bool = False  # numpy/Pillow only: runs in engine.child's process, beside the torch ops


# What each op kind runs, by job (paths under yolobuild/; a folder means every .py in it). Editing a
# file re-runs only the op kinds that list it: an edit to one vendor's package keeps every other cache.
INPUTS = ("ops/inputs.py", "runtime")
MODEL = ("ops/checkpoint.py", "ops/building.py", "ops/patches.py", "models", "runtime")
CHECKS = ("ops/check.py", "ops/inputs.py", "runtime")
EXPORT = ("ops/export.py", "runtime/quiet.py")

# Host ops. Toolchain ops (quantize, compile, simulate, handoff) come from the toolchain packages.
OP_KINDS: dict[str, OpKind] = {
    "generate_dataset": OpKind("yolobuild.ops.inputs:generate_dataset", 1, ("numpy", "pillow"),
                               INPUTS + ("data",), own_process=True),
    "load_model": OpKind("yolobuild.ops.model:load_model", 1, ("torch",), ("ops/model.py",) + MODEL),
    "patch": OpKind("yolobuild.ops.model:patch", 1, ("torch",), ("ops/model.py", "ops/check.py") + MODEL),
    "check_patch": OpKind("yolobuild.ops.model:check_patch", 1, ("torch",), ("ops/model.py", "ops/check.py") + MODEL),
    "export_onnx": OpKind("yolobuild.ops.export:export_onnx", 1, ("torch", "onnx"), EXPORT + MODEL),
    "export_torchscript": OpKind("yolobuild.ops.export:export_torchscript", 1, ("torch",), EXPORT + MODEL),
    # the weights-only state_dict + the family's standalone model definition, for vendor flows that rebuild it
    "export_state_dict": OpKind("yolobuild.ops.state_dict:export_state_dict", 1, ("torch",),
                                ("ops/state_dict.py",) + MODEL),
    "simplify": OpKind("yolobuild.ops.export:simplify", 2, ("onnx", "onnxslim"), EXPORT),
    "check_simplify": OpKind("yolobuild.ops.export:check_simplify", 1, ("onnx", "onnxruntime"), EXPORT + ("runtime",)),
    "prepare_inputs": OpKind("yolobuild.ops.inputs:prepare_inputs", 1, ("numpy", "pillow"), INPUTS, own_process=True),
    "calibrate": OpKind("yolobuild.ops.inputs:calibrate", 1, ("numpy", "pillow"), INPUTS, own_process=True),
    "reference": OpKind("yolobuild.ops.reference:reference", 1, ("torch",), ("ops/reference.py",) + INPUTS + MODEL),
    "check_parity": OpKind("yolobuild.ops.check:check_parity", 1, ("numpy",), CHECKS),
    "evaluate": OpKind("yolobuild.ops.check:evaluate", 1, ("numpy", "faster-coco-eval"), CHECKS),
    "package": OpKind("yolobuild.ops.package:package", 2, ("numpy", "pillow"),
                      ("ops/package.py", "ops/export.py", "ops/check.py", "ops/inputs.py", "runtime", "deploy")),
    # the report's pairs: PyTorch fp32 and built detections drawn on a few evaluation images
    "compare_detections": OpKind("yolobuild.ops.side_by_side:compare_detections", 1, ("numpy", "pillow"),
                                 ("ops/side_by_side.py", "deploy/drawing.py", "deploy/samples.py") + CHECKS,
                                 own_process=True),
    # timing, cached like any result of the artifact and these tools (`yolobuild benchmark DIR` times afresh)
    "benchmark": OpKind("yolobuild.ops.benchmark:benchmark", 1, ("onnxruntime", "openvino"),
                        ("ops/benchmark.py", "deploy")),
    # hand-off builds: a generic int8 fake-quant of the exported ONNX on the host, labelled a preview
    "preview": OpKind("yolobuild.ops.preview:preview", 1, ("onnxruntime", "onnx", "numpy", "faster-coco-eval"),
                      ("ops/preview.py", "toolchains/onnxruntime/steps.py", "toolchains/onnxruntime/toolchain.yaml")
                      + CHECKS),
}


def code_paths(kind: OpKind) -> tuple[str, ...]:
    """An op kind's code as import-root-relative paths (the form toolchain declarations use too)."""
    return tuple(f"yolobuild/{path}" for path in kind.code)


def resolve_impl(impl: str) -> Callable[[OpContext], None]:
    module, func = impl.split(":")
    return getattr(importlib.import_module(module), func)
