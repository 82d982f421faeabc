"""Find the function that runs an op: host op table, or the target's toolchain module."""
from __future__ import annotations

import importlib
from functools import partial
from typing import Callable

from ..errors import ToolchainError
from ..ops import OP_KINDS, OpContext, resolve_impl
from ..plan.ir import Op
from ..toolchains import TOOLCHAINS

TOOLCHAIN_OPS = ("quantize", "compile", "simulate", "handoff")


def runs_in_child(op: Op) -> bool:
    """A numpy/Pillow host op that engine.child runs in its helper process."""
    kind = OP_KINDS.get(op.kind)
    return op.kind not in TOOLCHAIN_OPS and kind is not None and kind.own_process


def implementation(op: Op) -> Callable[[OpContext], None]:
    if runs_in_child(op):
        from .child import run_in_child

        return partial(run_in_child, OP_KINDS[op.kind].impl)
    if op.kind not in TOOLCHAIN_OPS:
        return resolve_impl(OP_KINDS[op.kind].impl)
    toolchain = op.toolchain
    spec = TOOLCHAINS[toolchain]
    if spec.module is None:
        raise ToolchainError(f"{op.id}: the {toolchain} toolchain is not wired into this yolobuild version yet; "
                             "validate and plan work, building for this target does not")
    module = importlib.import_module(spec.module)
    func = getattr(module, op.kind, None)
    if func is None:
        raise ToolchainError(f"{op.id}: toolchain {toolchain} has no {op.kind} step")
    return func

