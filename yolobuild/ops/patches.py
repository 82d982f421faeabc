"""Graph patches on the PyTorch module (conv+BN fuse, SiLU as x*sigmoid(x), Focus as a conv, ...)
and their verifications, each named in the patch table (models.registry.patches()); `apply_graph_settings` applies a set."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckFailed, UserError
from ..models import registry
from ..models.family import COMMON_HEADS

def known_heads() -> tuple[str, ...]:
    """Every graph.head layout some family's head gives (which family gives which: Family.heads)."""
    return tuple(dict.fromkeys(COMMON_HEADS + tuple(h for f in registry.families().values() for h in f.heads)))


# --------------------------------------------------------------------------- fuse and patches

def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias equal to conv followed by bn in eval mode (folded in float64)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    k = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    with torch.no_grad():
        fused.weight.copy_((w * k.view(-1, 1, 1, 1)).float())
        fused.bias.copy_(((b - bn.running_mean.detach().double()) * k + beta).float())
    return fused.requires_grad_(False)


def fuse(model: nn.Module) -> int:
    """Fold every conv block's BatchNorm into its conv; returns how many were fused.

    A conv block is any module with a `conv` (Conv2d), a `bn` (BatchNorm) and a `forward_fuse`
    method (yolov5's Conv, and each family's own blocks that follow the same convention)."""
    n = 0
    for m in model.modules():
        if (isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
                and callable(getattr(m, "forward_fuse", None))):
            m.conv = fuse_conv_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
            n += 1
    return n


class SigmoidMul(nn.Module):
    """SiLU written as x * sigmoid(x), for runtimes without a SiLU / Swish kernel."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def silu_as_sigmoid_mul(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, SigmoidMul())
                n += 1
    if n == 0:
        raise UserError("graph.patches: silu_as_sigmoid_mul found no nn.SiLU in the model")
    return {"replaced": n}


# ops that write into a tensor in place (scatter-like after export: ScatterND / Scatter / Where chains)
_INPLACE_WRITES = {"aten::copy_", "aten::index_put_", "aten::index_put", "aten::slice_scatter",
                   "aten::select_scatter", "aten::masked_scatter_", "aten::masked_fill_", "aten::index_fill_",
                   "aten::scatter_", "aten::fill_", "aten::zero_"}
_VIEW_KINDS = {"aten::slice", "aten::select", "aten::narrow", "aten::view", "aten::reshape", "aten::unsqueeze",
               "aten::expand", "aten::as_strided", "aten::index", "aten::permute", "aten::transpose"}


def _trace(model: nn.Module, example: torch.Tensor):
    from . import TORCH_EXPORT_LOCK

    with TORCH_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(model, example, check_trace=False, strict=False)


def verify_no_inplace_slice(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Verify: tracing the model records no in-place write into a tensor slice (no ScatterND on export)."""
    if example is None:
        raise ValueError("no_inplace_slice needs an example input to trace")
    graph = _trace(model, example).inlined_graph
    bad = []
    nodes = 0
    for node in graph.nodes():
        nodes += 1
        kind = node.kind()
        if kind in _INPLACE_WRITES:
            bad.append(kind)
        elif kind.startswith("aten::") and kind.endswith("_") and not kind.endswith("__"):
            inputs = list(node.inputs())
            if inputs and inputs[0].node().kind() in _VIEW_KINDS:
                bad.append(f"{kind} on {inputs[0].node().kind()}")
    if bad:
        raise CheckFailed(f"graph.patches: no_inplace_slice: the traced model writes into tensor slices in place "
                          f"({len(bad)} node(s), first {', '.join(sorted(set(bad))[:3])}); export would emit ScatterND")
    return {"traced_nodes": nodes}


def _onnx_export_bytes(model: nn.Module, example: torch.Tensor, opset: int = 13) -> bytes:
    import io

    from . import TORCH_EXPORT_LOCK

    buf = io.BytesIO()
    with TORCH_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(model, example, buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                              input_names=["images"])
    return buf.getvalue()


def verify_anchors_as_constants(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Verify: the exported graph holds each level's anchor grid as a constant, never reads anchors at run time."""
    if example is None:
        raise ValueError("anchors_as_constants needs an example input to export")
    import onnx
    from onnx import numpy_helper

    detect = model.detect
    if getattr(detect, "anchors", None) is None or not isinstance(detect.anchors, torch.Tensor):
        return {"anchors": "none (anchor-free head: cell centres are constants of the graph)"}
    if detect.layout == "raw":
        return {"anchors": "host (raw head: anchors are applied by the host decode)"}
    proto = onnx.load_from_string(_onnx_export_bytes(model, example))
    g = proto.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    anchors_grid = detect.anchors.detach().numpy().astype(np.float64)          # (nl, na, 2), grid units
    anchors_px = anchors_grid * detect.stride.numpy().reshape(-1, 1, 1)

    def holds(arr: np.ndarray, target: np.ndarray) -> bool:
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != 2 or a.size < target.size:
            return False
        rows = np.unique(a.reshape(-1, 2), axis=0)
        return len(rows) == len(target) and np.allclose(np.sort(rows, 0), np.sort(target, 0), rtol=1e-5, atol=1e-4)

    # anchors read at run time: a runtime node consumes a tensor holding all levels' anchors (the buffer)
    runtime_reads = []
    for node in g.node:
        for name in node.input:
            arr = consts.get(name)
            if arr is None:
                continue
            if "anchors" in name or (arr.shape == anchors_grid.shape and np.allclose(arr, anchors_grid, atol=1e-6)):
                runtime_reads.append(f"{node.op_type}({name})")
    if runtime_reads:
        raise CheckFailed(f"graph.patches: anchors_as_constants: the exported graph reads the anchors buffer at run "
                          f"time ({', '.join(runtime_reads[:3])}); compute anchor_grid from constants at trace time")
    missing = [i for i in range(detect.nl) if not any(holds(a, anchors_px[i]) for a in consts.values())]
    if missing:
        raise CheckFailed(f"graph.patches: anchors_as_constants: no constant anchor grid for level(s) "
                          f"{', '.join(map(str, missing))} in the exported graph")
    return {"anchor_grid_constants": detect.nl}


def _replace_children(model: nn.Module, match: Callable[[nn.Module], bool],
                      make: Callable[[nn.Module], nn.Module]) -> int:
    """Swap every child module for which `match` holds by `make(child)`, keeping the sequential
    graph's bookkeeping attributes (i, f, type, np); returns how many were swapped."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                new = make(child)
                for attr in ("i", "f", "type", "np"):
                    if hasattr(child, attr):
                        setattr(new, attr, getattr(child, attr))
                setattr(parent, name, new)
                n += 1
    return n


class StridedStem(nn.Module):
    """What Focus becomes: one Conv block whose conv reads the image directly at stride 2."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def _focus_to_strided(focus: nn.Module) -> nn.Module:
    """Focus = conv(k, s, p) over cat(x[::2, ::2], x[1::2, ::2], x[::2, 1::2], x[1::2, 1::2]); the same
    as a conv of kernel 2k, stride 2s, padding 2p on x whose tap (2ky+dy, 2kx+dx) is block (dy, dx)'s (ky, kx)."""
    block = copy.deepcopy(focus.conv)
    old = block.conv
    c = old.in_channels // 4
    k, s, p = old.kernel_size[0], old.stride[0], old.padding[0]
    if old.groups != 1 or old.kernel_size[0] != old.kernel_size[1] or old.dilation != (1, 1):
        raise UserError("graph.patches: focus_as_conv supports the upstream Focus conv only (square kernel, "
                        "no groups, no dilation)")
    new = nn.Conv2d(c, old.out_channels, 2 * k, 2 * s, 2 * p, bias=old.bias is not None)
    w = old.weight.detach().view(old.out_channels, 4, c, k, k)
    w6 = torch.zeros(old.out_channels, c, 2 * k, 2 * k, dtype=w.dtype)
    for b, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):   # the order Focus concatenates in
        w6[:, :, dy::2, dx::2] = w[:, b]
    with torch.no_grad():
        new.weight.copy_(w6)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach())
    block.conv = new
    return StridedStem(block)


def focus_as_conv(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    from ..models.yolov5.model import Focus

    n = _replace_children(model, lambda m: isinstance(m, Focus), _focus_to_strided)
    if n == 0:
        raise UserError("graph.patches: focus_as_conv found no Focus layer in the model (only YOLOv5 v5.0-era "
                        "layouts, model.layout=v5, have one)")
    return {"replaced": n}


def _bn_from_syncbn(sbn: nn.Module) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(sbn.num_features, sbn.eps, sbn.momentum, sbn.affine, sbn.track_running_stats)
    bn.load_state_dict(sbn.state_dict())
    return bn.eval()


def syncbn_to_bn(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    n = _replace_children(model, lambda m: isinstance(m, nn.SyncBatchNorm), _bn_from_syncbn)
    if n == 0:
        raise UserError("graph.patches: syncbn_to_bn found no SyncBatchNorm in the model (the checkpoint was "
                        "trained without --sync-bn); drop the patch")
    return {"replaced": n}


def _as_syncbn(model: nn.Module, which) -> int:
    """The BatchNorm2d layers a checkpoint held as SyncBatchNorm ("all", or their module names) become
    SyncBatchNorm again (eval on CPU is plain batch norm), for the syncbn_to_bn patch to convert."""
    names = None if which == "all" else set(which)
    n = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.BatchNorm2d and (names is None or full in names):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
                sync.load_state_dict(child.state_dict())
                setattr(parent, name, sync.train(child.training))
                n += 1
                if names is not None:
                    names.discard(full)
    if names:
        raise UserError(f"model: the checkpoint's SyncBatchNorm layer(s) {', '.join(sorted(names)[:3])} are not "
                        "BatchNorm layers of the model")
    return n


def patch_function(name: str) -> Callable[[nn.Module, torch.Tensor | None], dict]:
    """The function behind a named patch (models.registry.patches())."""
    import importlib

    check_patch_names([name])
    module, func = registry.patch(name)["function"].split(":")
    return getattr(importlib.import_module(module), func)


def check_patch_names(patches) -> None:
    from ..errors import nearest

    for name in patches or ():
        if registry.patch(name) is None:
            known = registry.patches()
            raise UserError(f"graph.patches: {name!r} is not a known patch{nearest(name, known)}; "
                            f"allowed: {', '.join(known)}")


def apply_graph_settings(model: nn.Module, head: str, patches=(), do_fuse: bool = False,
                         example: torch.Tensor | None = None, verify: bool = False) -> dict:
    """Fuse, patch and set the head layout in place; verification patches run when `verify`."""
    if head not in known_heads():
        raise UserError(f"graph.head: {head!r} is not allowed; allowed: {', '.join(known_heads())}")
    check_patch_names(patches)
    model.eval()
    figures: dict[str, Any] = {}
    patches = list(patches or ())
    if "syncbn_to_bn" in patches and do_fuse:     # BatchNorm first, so that fuse folds the converted layers
        figures["syncbn_to_bn"] = syncbn_to_bn(model, example)
        patches.remove("syncbn_to_bn")
    if do_fuse:
        figures["fused"] = fuse(model)
    model.detect.layout = head
    for name in patches:
        if registry.patch(name)["verify_only"] and not verify:
            continue
        figures[name] = patch_function(name)(model, example)
    return figures
