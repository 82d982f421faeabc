"""Find the function that runs an op: the host op table, or the toolchain step the plan names."""
from __future__ import annotations

from functools import partial
from typing import Callable

from ..errors import ToolchainError
from ..ops import OP_KINDS, OpContext, resolve_impl
from ..plan.ir import Op


def runs_in_child(op: Op) -> bool:
    """A numpy/Pillow host op that engine.child runs in its helper process."""
    kind = OP_KINDS.get(op.kind)
    return op.toolchain is None and kind is not None and kind.own_process


def implementation(op: Op) -> Callable[[OpContext], None]:
    if runs_in_child(op):
        from .child import run_in_child

        return partial(run_in_child, OP_KINDS[op.kind].impl)
    if op.toolchain is None:
        return resolve_impl(OP_KINDS[op.kind].impl)
    if op.impl is None:   # the declaration names no steps module
        raise ToolchainError(f"{op.id}: the {op.toolchain} toolchain is not wired into this yolobuild version yet; "
                             "validate and plan work, building for this target does not")
    try:
        return resolve_impl(op.impl)
    except AttributeError:
        raise ToolchainError(f"{op.id}: toolchain {op.toolchain} has no {op.kind} step ({op.impl})") from None
