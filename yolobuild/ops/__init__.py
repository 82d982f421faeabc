"""The op kinds a plan is made of: one table, implementations imported lazily.

An op implementation is a function `run(ctx: OpContext) -> None` that reads `ctx.inputs`,
writes every name of `ctx.outputs` (files or folders), and may put small JSON-able
figures in `ctx.results` (they are cached with the outputs and land in the manifest).
It raises `UserError` for bad user input (exit 2), `ToolchainError` / `CheckFailed` (exit 3).
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

from ..context import OpContext  # noqa: F401 (re-exported: ops import it from here)


@dataclass(frozen=True)
class OpKind:
    impl: str                 # "module:function"
    version: int              # bump when the implementation's output changes
    tools: tuple[str, ...]    # distributions whose versions enter the fingerprint
    cacheable: bool = True
    own_process: bool = False  # numpy/Pillow only: runs in engine.child's process, beside the torch ops


# Host ops. Toolchain ops (quantize, compile, simulate, handoff) come from yolobuild.toolchains.
OP_KINDS: dict[str, OpKind] = {
    "generate_dataset": OpKind("yolobuild.ops.inputs:generate_dataset", 1, ("numpy", "pillow"), own_process=True),
    "load_model": OpKind("yolobuild.ops.model:load_model", 1, ("torch",)),
    "patch": OpKind("yolobuild.ops.model:patch", 1, ("torch",)),
    "check_patch": OpKind("yolobuild.ops.model:check_patch", 1, ("torch",)),
    "export_onnx": OpKind("yolobuild.ops.export:export_onnx", 1, ("torch", "onnx")),
    "export_torchscript": OpKind("yolobuild.ops.export:export_torchscript", 1, ("torch",)),
    "simplify": OpKind("yolobuild.ops.export:simplify", 2, ("onnx", "onnxslim")),
    "check_simplify": OpKind("yolobuild.ops.export:check_simplify", 1, ("onnx", "onnxruntime")),
    "prepare_inputs": OpKind("yolobuild.ops.inputs:prepare_inputs", 1, ("numpy", "pillow"), own_process=True),
    "calibrate": OpKind("yolobuild.ops.inputs:calibrate", 1, ("numpy", "pillow"), own_process=True),
    "reference": OpKind("yolobuild.ops.reference:reference", 1, ("torch",)),
    "check_parity": OpKind("yolobuild.ops.check:check_parity", 1, ("numpy",)),
    "evaluate": OpKind("yolobuild.ops.check:evaluate", 1, ("numpy", "faster-coco-eval")),
    "package": OpKind("yolobuild.ops.package:package", 2, ("numpy", "pillow")),
    # timing, cached like any result of the artifact and these tools (`yolobuild benchmark DIR` times afresh)
    "benchmark": OpKind("yolobuild.ops.benchmark:benchmark", 1, ("onnxruntime", "openvino")),
    # hand-off builds: a generic int8 fake-quant of the exported ONNX on the host, labelled a preview
    "preview": OpKind("yolobuild.ops.preview:preview", 1, ("onnxruntime", "onnx", "numpy", "faster-coco-eval")),
}


# torch.onnx.export and torch.jit.trace keep process-wide state (GLOBALS.in_onnx_export, the tracing
# state), and quiet() swaps sys.stdout: ops running side by side take this lock around them.
TORCH_EXPORT_LOCK = threading.RLock()


def resolve_impl(impl: str) -> Callable[[OpContext], None]:
    module, func = impl.split(":")
    return getattr(importlib.import_module(module), func)
