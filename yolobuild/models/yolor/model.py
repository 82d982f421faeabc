"""YOLOR-P6 / YOLOR-W6 (WongKinYiu/yolor, branch `paper`: yaml models, ImplicitA / ImplicitM, IDetect),
written for yolobuild.

Module names, attribute names and the state_dict key layout follow upstream's
models/common.py and models/yolo.py (`model.{i}.cv1.conv.weight`, `model.41.ia.{j}.implicit`,
`model.41.m.{j}.weight`, `model.41.anchors`) so that real checkpoints load into these classes
unchanged; upstream's `anchor_grid` buffer is derived here and ignored on load.

IDetect is export-clean by construction, the two export fixes YOLOR users apply by hand built in:

* training flag: upstream's forward runs `self.training |= self.export`, so an export-mode
  model returned the raw per-level maps (wrong output shape). Here the flag is never written:
  eval returns the head layout chosen by `layout` (raw / split / decoded);
* broadcast: upstream decodes with in-place slice writes (`y[..., 0:2] = ...`) against an
  `anchor_grid` of shape (nl, 1, na, 1, 1, 2), which ONNX runtimes got wrong. Here xy / wh / conf
  are computed apart and concatenated, anchors broadcast explicitly as (1, na, 1, 1, 2), grids
  are built at trace time (constants).

The named patch `idetect_export` (verify-only, every yolor build) proves both on the finished
module; `fuse_implicit` folds ImplicitA / ImplicitM into the output convs (YOLOR's own fuse).
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from ...errors import CheckFailed, UserError
from ...runtime.quiet import TORCH_EXPORT_LOCK
from ..graph import SequentialDetector, place, repeated
from ..yolov5.model import Bottleneck, Concat, Conv, Detect  # upstream YOLOR's common.py has the same blocks
from . import FAMILIES
from .layers import YOLOR_BACKBONE_ROWS, YOLOR_LAYOUTS

FAMILY = "yolor"
BN_EPS, BN_MOMENTUM = 1e-3, 0.03   # upstream's initialize_weights sets these on every BatchNorm2d


class ImplicitA(nn.Module):
    """A learned per-channel offset added to the input (upstream: implicit.expand_as(x) + x)."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x):
        return x + self.implicit


class ImplicitM(nn.Module):
    """A learned per-channel scale (upstream: implicit.expand_as(x) * x)."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x):
        return x * self.implicit


class ReOrg(nn.Module):
    """Space-to-depth stem: (b, c, h, w) -> (b, 4c, h/2, w/2), blocks in upstream's order."""

    def forward(self, x):
        return torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class BottleneckCSPF(nn.Module):
    """CSP stage of the backbone: bottlenecks on one half, a bare 1x1 conv on the other, BN + SiLU
    over both, then a conv block (upstream keeps the name cv4; there is no cv3)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = _bn(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv4(self.act(self.bn(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))))


class BottleneckCSP2(nn.Module):
    """CSP stage of the neck: both halves start from cv1's output; no shortcuts by default."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        c_ = int(c2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv3 = Conv(2 * c_, c2, 1, 1)
        self.bn = _bn(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        x1 = self.cv1(x)
        return self.cv3(self.act(self.bn(torch.cat((self.m(x1), self.cv2(x1)), 1))))


class SPPCSP(nn.Module):
    """CSP spatial pyramid pooling (max-pools 5, 9, 13) on top of the P6 stage."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.bn = _bn(2 * c_)
        self.act = nn.SiLU()
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(self.act(self.bn(torch.cat((y1, self.cv2(x)), 1))))


class IDetect(Detect):
    """YOLOR's anchor-based head: per level `im[i](m[i](ia[i](x)))`, then YOLOv5's decode.

    `layout` selects the eval output: `decoded` ((bs, N, 5+nc): xywh pixels, objectness, class
    probabilities), `split` (xy, wh, conf) or `raw` (the per-level maps after ImplicitM, decoded on
    the host). Training returns the per-level maps as (bs, na, ny, nx, no)."""

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def _level_maps(self, x):
        return [self.im[i](self.m[i](self.ia[i](x[i]))) for i in range(self.nl)]

    def _decode_constants(self):
        """Python floats: constants when traced, never a buffer read."""
        return [float(s) for s in self.stride], [self._anchors_px(i) for i in range(self.nl)]

    def _make_grid(self, nx, ny, i, dtype, device):
        """Cell offsets (minus 0.5) and this level's anchors in pixels as (1, na, 1, 1, 2): constants of a
        traced graph, broadcast explicitly (the export fix: `anchor_grid[i].view(1, na, 1, 1, 2)` instead of
        upstream's buffer multiplied into a slice in place)."""
        yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                torch.arange(nx, device=device, dtype=dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
        anchor_grid = self._anchors_px(i).to(dtype=dtype, device=device).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid

    def _anchors_px(self, i: int) -> torch.Tensor:
        """Level i's anchors in pixels from Python floats: a constant when traced, never a buffer read."""
        return torch.tensor([[float(v) * float(self.stride[i]) for v in pair] for pair in self.anchors[i].tolist()])


LAYER_TYPES = {c.__name__: c for c in (ReOrg, Conv, Bottleneck, BottleneckCSPF, BottleneckCSP2, SPPCSP, Concat,
                                       IDetect)}
LAYER_TYPES["nn.Upsample"] = nn.Upsample
_CSP = (BottleneckCSPF, BottleneckCSP2, SPPCSP)


class Model(SequentialDetector):
    """The sequential YOLOR graph built from an upstream layer table (models.yolor.layers)."""

    def __init__(self, layout: str = "p6", nc: int = 80, anchors: Sequence[Sequence[float]] | None = None,
                 ch: int = 3):
        super().__init__()
        if layout not in YOLOR_LAYOUTS:
            raise ValueError(f"unknown YOLOR layout {layout!r}; choose one of {sorted(YOLOR_LAYOUTS)}")
        spec = FAMILIES[0].layouts[layout]
        anchors = [list(map(float, a)) for a in (anchors or spec["anchors"])]
        table = YOLOR_LAYOUTS[layout]
        self.yaml = {"nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": anchors,
                     "backbone": table[:YOLOR_BACKBONE_ROWS], "head": table[YOLOR_BACKBONE_ROWS:], "layout": layout}
        self.model, self.save = self._build(table, nc, anchors, ch)
        self.names = [str(i) for i in range(nc)]
        detect = self.model[-1]
        if len(anchors) != len(spec["strides"]):
            raise ValueError(f"{len(anchors)} anchor levels for the {len(spec['strides'])} levels of yolor {layout}")
        detect.stride = torch.tensor(spec["strides"], dtype=torch.float32)
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self.stride = detect.stride
        self.init_anchor_biases()

    @staticmethod
    def _build(table, nc, anchors, ch_in):
        layers, save, ch = [], [], []

        def c_in(j):
            return ch_in if not ch and j == -1 else ch[j]

        for i, (f, n, type_name, args) in enumerate(table):
            cls = LAYER_TYPES[type_name]
            args = [nc if a == "nc" else anchors if a == "anchors" else a for a in args]
            if cls in (Conv, *_CSP):
                c1, c2 = c_in(f), args[0]
                args = [c1, c2, *args[1:]]
                if cls in _CSP:
                    args.insert(2, n)
                    n = 1
            elif cls is ReOrg:
                c2 = 4 * c_in(f)
            elif cls is Concat:
                c2 = sum(c_in(x) for x in f)
            elif cls is IDetect:
                args.append([c_in(x) for x in f])
                c2 = None
            else:
                c2 = c_in(f)
            m = place(layers, save, repeated(cls, args, n), i, f, type_name)
            m.np = sum(p.numel() for p in m.parameters())
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)


def build(scale=None, layout: str = "p6", nc: int = 80, anchors=None) -> Model:
    """The family-table entry point (Family.module in models.yolor)."""
    if scale not in (None, "", "null"):
        raise ValueError(f"yolor has no scales (got {scale!r}); the layout (p6, w6) picks the model")
    return Model(layout=layout, nc=nc, anchors=anchors)


def heads(model: nn.Module) -> list[IDetect]:
    return [m for m in model.modules() if isinstance(m, IDetect)]


# --------------------------------------------------------------------------- named patches

def fuse_implicit(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Fold each level's ImplicitA into the 1x1 output conv's bias (b + W.a) and ImplicitM into its
    weight and bias (m*W, m*b), in float64; the Implicit layers become Identity."""
    found = heads(model)
    if not found:
        raise UserError("graph.patches: fuse_implicit found no YOLOR IDetect head in the model (only "
                        "model.family=yolor has one)")
    n = 0
    for d in found:
        for i in range(d.nl):
            ia, conv, im = d.ia[i], d.m[i], d.im[i]
            if not (isinstance(ia, ImplicitA) and isinstance(im, ImplicitM)):
                continue
            if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.bias is None:
                raise UserError("graph.patches: fuse_implicit folds into 1x1 output convs with a bias only")
            w = conv.weight.detach().double()
            b = conv.bias.detach().double() + w.flatten(1) @ ia.implicit.detach().double().view(-1)
            scale = im.implicit.detach().double().view(-1)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=True)
            with torch.no_grad():
                fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).float())
                fused.bias.copy_((b * scale).float())
            d.m[i] = fused.requires_grad_(False)
            d.ia[i], d.im[i] = nn.Identity(), nn.Identity()
            n += 1
    if n == 0:
        raise UserError("graph.patches: fuse_implicit found no ImplicitA / ImplicitM left to fold (already fused)")
    return {"folded_levels": n}


_INPLACE = re.compile(r"aten::(copy_|index_put_?|slice_scatter|select_scatter|masked_scatter_|masked_fill_|"
                      r"index_fill_|scatter_|fill_|zero_)$")


def verify_idetect_export(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Verify the IDetect export fixes on the finished module: for each IDetect, with the
    inputs the model's own feature maps give for `example`,

    * the eval forward returns the head layout (raw: nl maps; split: 3; decoded: one (bs, N, 5+nc))
      and leaves `training` False (upstream's `training |= export` returned raw maps);
    * its traced graph writes into no tensor slice in place and reads no anchors buffer at run time
      (upstream's `y[..., 0:2] = ...` and anchor_grid broadcast);
    * its ONNX export has no ScatterND and gives the same output shapes as PyTorch."""
    if example is None:
        raise ValueError("idetect_export needs an example input")
    found = heads(model)
    if not found:
        raise UserError("graph.patches: idetect_export found no YOLOR IDetect head in the model "
                        "(only model.family=yolor has one)")
    inputs: dict[int, list] = {}
    hooks = [d.register_forward_pre_hook(lambda mod, args, k=k: inputs.__setitem__(k, [t.detach() for t in args[0]]))
             for k, d in enumerate(found)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    figures: dict[str, Any] = {}
    for k, d in enumerate(found):
        feats = inputs.get(k)
        if feats is None:
            raise CheckFailed("graph.patches: idetect_export: the IDetect head did not run on the example input")
        with torch.no_grad():
            out = d(list(feats))
        if d.training:
            raise CheckFailed("graph.patches: idetect_export: IDetect switched itself to training mode in forward")
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        bs = example.shape[0]
        cells = sum(f.shape[-2] * f.shape[-1] for f in feats) * d.na
        want = {"raw": [(bs, d.na * d.no, f.shape[-2], f.shape[-1]) for f in feats],
                "split": [(bs, cells, 2), (bs, cells, 2), (bs, cells, d.no - 4)],
                "decoded": [(bs, cells, d.no)]}[d.layout]
        got = [tuple(t.shape) for t in outs]
        if got != want:
            raise CheckFailed(f"graph.patches: idetect_export: the {d.layout} head returns shapes {got}, "
                              f"expected {want}")
        with TORCH_EXPORT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.trace(d, (list(feats),), check_trace=False, strict=False)
        graph = traced.inlined_graph
        bad = sorted({n.kind() for n in graph.nodes() if _INPLACE.match(n.kind())})
        if bad:
            raise CheckFailed(f"graph.patches: idetect_export: the IDetect decode writes into tensor slices in "
                              f"place ({', '.join(bad)}); export would emit ScatterND")
        reads = [n.s("name") for n in graph.nodes() if n.kind() == "prim::GetAttr" and n.s("name") == "anchors"]
        if reads and d.layout != "raw":
            raise CheckFailed("graph.patches: idetect_export: the traced IDetect reads its anchors buffer at run "
                              "time; the anchor grid must be a constant of the graph")
        onnx_ops = _head_onnx_ops(d, feats)
        if "ScatterND" in onnx_ops["ops"]:
            raise CheckFailed("graph.patches: idetect_export: the exported IDetect holds ScatterND")
        if onnx_ops["shapes"] != [list(s) for s in want]:
            raise CheckFailed(f"graph.patches: idetect_export: the exported IDetect's outputs are "
                              f"{onnx_ops['shapes']}, PyTorch's {[list(s) for s in want]}")
        figures[f"head{k}"] = {"layout": d.layout, "outputs": [list(s) for s in want],
                               "traced_nodes": sum(1 for _ in graph.nodes()), "onnx_nodes": onnx_ops["nodes"]}
    model.train(was_training)
    return figures


def _head_onnx_ops(head: IDetect, feats: list[torch.Tensor]) -> dict:
    import io

    import onnx

    buf = io.BytesIO()
    with TORCH_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(head, (list(feats),), buf, dynamo=False, opset_version=13, do_constant_folding=True)
    g = onnx.load_from_string(buf.getvalue()).graph
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in g.output]
    return {"ops": sorted({n.op_type for n in g.node}), "nodes": len(g.node), "shapes": shapes}


# --------------------------------------------------------------------------- checkpoints

def _norm_rows(rows) -> list:
    from ..upstream import _norm_table
    import json

    return json.loads(_norm_table(rows))


def match_layout(yaml: dict) -> str | None:
    want = _norm_rows(list(yaml.get("backbone") or []) + list(yaml.get("head") or []))
    return next((name for name, table in YOLOR_LAYOUTS.items() if _norm_rows(table) == want), None)


def describe_pickle(container: Any, model: nn.Module, where: str) -> tuple[dict, dict] | None:
    """The family hook (models.family): a YOLOR full pickle's stand-in tree (upstream models.yolo.Model with
    IDetect, read by the restricted unpickler) -> (meta, state_dict); None when it has no IDetect head or its
    yaml is no yolor layout (another family's, or none). Meta carries the layout matched from `model.yaml`,
    nc, names, strides and anchors in pixels, and `syncbn`: "all" or the module names that were
    SyncBatchNorm in the file (the unpickler reads them as BatchNorm2d; a SyncBatchNorm keeps its
    `process_group` attribute, which tells them apart)."""
    from ..safe_pickle import module_attr, upstream_name
    from ..upstream import _names

    cls = upstream_name(model)
    found = [m for m in model.modules() if upstream_name(m).rsplit(".", 1)[-1] in ("IDetect", "IAuxDetect")]
    if not found:
        return None
    head = found[-1]
    head_cls = upstream_name(head)
    if head_cls.endswith("IAuxDetect"):
        raise UserError(f"{where}: a YOLOv7 checkpoint with an auxiliary head ({cls} with {head_cls}); yolobuild "
                        f"builds YOLOR's IDetect models only (recipe yolor-p6, yolor-w6)")
    yaml = module_attr(model, "yaml") or {}
    layout = match_layout(yaml) if isinstance(yaml, dict) else None
    dm, wm = (yaml.get("depth_multiple"), yaml.get("width_multiple")) if isinstance(yaml, dict) else (None, None)
    if layout is None or dm != 1.0 or wm != 1.0:
        return None
    sd = model.state_dict()
    w = sd.get("model.41.m.0.weight")
    anchors_buf = head._buffers.get("anchors")
    na = int(anchors_buf.shape[1]) if anchors_buf is not None and anchors_buf.ndim == 3 else 3
    yaml_nc = yaml.get("nc")
    nc = int(module_attr(head, "nc") or yaml_nc or 0)
    if w is None or w.shape[0] != na * (nc + 5):
        got = f"{int(w.shape[0])} channels" if w is not None else "no model.41.m.0.weight"
        raise UserError(f"{where}: class count mismatch inside the checkpoint: its IDetect says nc={nc} "
                        f"({na} anchors -> {na * (nc + 5)} output channels) but its output conv has {got}")
    acts = sorted({upstream_name(m) for name, m in model.named_modules()
                   if name.rsplit(".", 1)[-1] == "act" and type(m) not in (nn.SiLU, nn.Identity)})
    if acts:
        raise UserError(f"{where}: a yolor {layout} whose blocks use {', '.join(acts)}; upstream's (and yolobuild's) "
                        "Conv uses SiLU: set model.source.repo=PATH for a fork")
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    eps = sorted({float(m.eps) for _, m in bns if abs(float(m.eps) - BN_EPS) > 1e-12})
    if eps:
        raise UserError(f"{where}: BatchNorm eps {eps[0]:g} in the checkpoint; upstream YOLOR (and yolobuild) use "
                        f"{BN_EPS:g}")
    sync = [name for name, m in bns if "process_group" in m.__dict__]
    stride = module_attr(model, "stride")
    if stride is None:
        stride = module_attr(head, "stride")
    strides = [int(round(float(s))) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else None
    meta: dict[str, Any] = {"family": FAMILY, "scale": None, "layout": layout, "nc": nc,
                            "names": _names(module_attr(model, "names"), nc), "strides": strides,
                            "upstream": cls, "input_size": None}
    if anchors_buf is not None and strides:
        a = anchors_buf.float()
        px = (a * a.new_tensor(strides).view(-1, 1, 1)).view(a.shape[0], -1)
        meta["anchors"] = [[round(float(v), 4) for v in row] for row in px]
    if sync:
        meta["syncbn"] = "all" if len(sync) == len(bns) else sync
    return meta, sd


_YOLOR_HEAD = re.compile(r"model\.41\.ia\.(\d+)\.implicit")


def _layout_of(sd: dict) -> str | None:
    widths = [int(sd[f"model.41.ia.{j}.implicit"].shape[1]) for j in range(4) if f"model.41.ia.{j}.implicit" in sd]
    for name, table in YOLOR_LAYOUTS.items():
        if widths == [table[j][3][0] for j in table[-1][0]]:
            return name
    return None


def guess_state_dict(sd: dict) -> str | None:
    """ops.checkpoint._guess_arch hook: 'yolor (layout p6)' for a state_dict in this module's key layout."""
    if not any(_YOLOR_HEAD.fullmatch(k) for k in sd):
        return None
    layout = _layout_of(sd)
    return f"yolor (layout {layout})" if layout else "yolor (IDetect, unknown layout)"


def _other_family(sd: dict) -> dict:
    """What a state_dict that is not YOLOR's is, in family-table terms (so the loader names both), or {}."""
    from ..upstream import guess_ultralytics_family

    if any(k.startswith("bbox_head.head_module.") for k in sd):
        return {"family": "mmyolo-yolov5", "scale": None, "layout": "v61"}
    return guess_ultralytics_family(sd)


def convert_state_dict(obj: Any, sd: dict, where: str) -> tuple[dict, dict]:
    """ops.checkpoint.read_weights hook for plain state_dicts: a YOLOR (paper branch) one returns its layout, read
    from the IDetect widths; one of another family returns that family, so the loader names both. The class
    count is left to the loader's check against the recipe's."""
    if any(_YOLOR_HEAD.fullmatch(k) for k in sd):
        layout = _layout_of(sd)
        return sd, ({"family": FAMILY, "layout": layout} if layout else {})
    if any(re.fullmatch(r"module_list\.\d+\.implicit", k) for k in sd):
        raise UserError(f"{where}: a YOLOR main-branch checkpoint (Darknet cfg, module_list.N.implicit); yolobuild "
                        "builds the paper-branch yaml models (models/yolor-p6.yaml, yolor-w6.yaml) only")
    return sd, _other_family(sd)
