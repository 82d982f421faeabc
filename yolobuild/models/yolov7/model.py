"""YOLOv7 and YOLOv7-tiny, written for yolobuild from the public layer definitions of WongKinYiu/yolov7.

Module and attribute names follow the original repository (`model.{i}.conv.weight`, `model.{i}.bn`,
`model.77.m.{level}`, `model.77.ia.{level}.implicit`, `model.77.im.{level}.implicit`,
`model.77.anchors`), so the state_dict of its `train.py` checkpoints loads unchanged. The head is
YOLOR's IDetect (models.yolor), whose export-clean decode (constants, no in-place writes) it shares.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import UserError
from ..graph import SequentialDetector, place
from ..yolor.model import IDetect
from ..yolov5.model import Concat, Conv
from . import FAMILIES
from .layers import YOLOV7_BACKBONE_ROWS, YOLOV7_LAYOUTS

BN_EPS = 1e-3            # upstream's initialize_weights sets every BatchNorm2d to eps 1e-3


class MP(nn.Module):
    """k x k max-pool with stride k (the stage downsampler)."""

    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class SP(nn.Module):
    """Stride-s max-pool keeping the map size (the SPP branches)."""

    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x):
        return self.m(x)


class SPPCSPC(nn.Module):
    """SPP (5, 9, 13 pools) inside a CSP split: one branch 1x1-3x3-1x1, pools, 1x1-3x3; the other a 1x1."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1, self.cv2 = Conv(c1, c_, 1, 1), Conv(c1, c_, 1, 1)
        self.cv3, self.cv4 = Conv(c_, c_, 3, 1), Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5, self.cv6 = Conv(4 * c_, c_, 1, 1), Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        a = self.cv4(self.cv3(self.cv1(x)))
        a = self.cv6(self.cv5(torch.cat([a] + [pool(a) for pool in self.m], 1)))
        return self.cv7(torch.cat((a, self.cv2(x)), 1))


def _conv_bn(c1, c2, k, s, p):
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, p, bias=False), nn.BatchNorm2d(c2, eps=BN_EPS, momentum=0.03))


class RepConv(nn.Module):
    """Training-time RepVGG block: act(3x3+BN  +  1x1+BN  (+ BN of the input when shapes allow));
    `fuse_repconv` turns it into one 3x3 conv (`rbr_reparam`)."""

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True):
        super().__init__()
        if k != 3 or g != 1 or p not in (None, 1):
            raise ValueError("RepConv: only 3x3, groups 1, padding 1 is supported")
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        self.rbr_identity = nn.BatchNorm2d(c1, eps=BN_EPS, momentum=0.03) if c1 == c2 and s == 1 else None
        self.rbr_dense = _conv_bn(c1, c2, 3, s, 1)
        self.rbr_1x1 = _conv_bn(c1, c2, 1, s, 0)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return self.act(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        return self.act(y if self.rbr_identity is None else y + self.rbr_identity(x))


def _fold(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var.double() + bn.eps).sqrt()
    scale = bn.weight.double() / std
    return weight.double() * scale.view(-1, 1, 1, 1), bn.bias.double() - bn.running_mean.double() * scale


def fuse_repconv(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """The named patch: every RepConv's branches folded (in float64) into one 3x3 conv with bias."""
    from ...errors import UserError as _UserError

    found = [m for m in model.modules() if isinstance(m, RepConv) and not hasattr(m, "rbr_reparam")]
    if not found:
        raise _UserError("graph.patches: fuse_repconv found no unfused RepConv in the model")
    for m in found:
        w, b = _fold(m.rbr_dense[0].weight, m.rbr_dense[1])
        w1, b1 = _fold(m.rbr_1x1[0].weight, m.rbr_1x1[1])
        w, b = w + nn.functional.pad(w1, (1, 1, 1, 1)), b + b1
        if m.rbr_identity is not None:
            c = w.shape[0]
            eye = torch.zeros(c, c, 3, 3, dtype=torch.float64)
            eye[torch.arange(c), torch.arange(c), 1, 1] = 1.0
            wi, bi = _fold(eye, m.rbr_identity)
            w, b = w + wi, b + bi
        dense = m.rbr_dense[0]
        conv = nn.Conv2d(dense.in_channels, dense.out_channels, 3, dense.stride, 1, bias=True)
        with torch.no_grad():
            conv.weight.copy_(w.float())
            conv.bias.copy_(b.float())
        m.rbr_reparam = conv.requires_grad_(False)
        del m.rbr_dense, m.rbr_1x1
        m.rbr_identity = None
    return {"fused": len(found)}


def _act(spec):
    if spec is True:
        return True
    if spec == "nn.LeakyReLU(0.1)":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"activation {spec!r} is not supported")


class Model(SequentialDetector):
    """The sequential YOLOv7 graph built from the layer table (models.yolov7.layers)."""

    def __init__(self, layout: str = "yolov7-tiny", nc: int = 80, anchors=None, ch: int = 3):
        super().__init__()
        if layout not in YOLOV7_LAYOUTS:
            raise ValueError(f"unknown yolov7 layout {layout!r}; choose one of {sorted(YOLOV7_LAYOUTS)}")
        spec = FAMILIES[0].layouts[layout]
        anchors = [list(map(float, a)) for a in (anchors or spec["anchors"])]
        table = YOLOV7_LAYOUTS[layout]
        rows = YOLOV7_BACKBONE_ROWS[layout]
        self.yaml = {"nc": nc, "anchors": anchors, "backbone": table[:rows], "head": table[rows:], "layout": layout}
        self.model, self.save = self._build(table, nc, anchors, ch)
        detect = self.model[-1]
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
            if type_name == "Conv":
                c2, k, s, p, g, act = (list(args) + [None, 1, True][len(args) - 3:])[:6]
                m = Conv(c_in(f), c2, k, s, p, g, act=_act(act))
                m.bn.eps = BN_EPS
            elif type_name == "RepConv":
                c2, m = args[0], RepConv(c_in(f), *args)
            elif type_name == "SPPCSPC":
                c2, m = args[0], SPPCSPC(c_in(f), args[0], n)
                for mod in m.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        mod.eps = BN_EPS
            elif type_name == "Concat":
                c2, m = sum(c_in(x) for x in f), Concat(*args)
            elif type_name == "MP":
                c2, m = c_in(f), MP(*args)
            elif type_name == "SP":
                c2, m = c_in(f), SP(*args)
            elif type_name == "nn.Upsample":
                c2, m = c_in(f), nn.Upsample(*args)
            elif type_name == "IDetect":
                c2, m = None, IDetect(nc, anchors, [c_in(x) for x in f])
            else:
                raise ValueError(f"layer type {type_name!r} is not supported")
            place(layers, save, m, i, f, type_name)
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)


def build(scale=None, layout: str = "yolov7-tiny", nc: int = 80, anchors=None) -> Model:
    """The family-table entry point (Family.module in models.yolov7)."""
    if scale not in (None, "", "null"):
        raise ValueError(f"yolov7 has no scales (got {scale!r}); the layout picks the model")
    return Model(layout=layout, nc=nc, anchors=anchors)


def _norm(rows) -> str:
    import json

    out = []
    for f, n, t, args in rows or []:
        out.append([f, n, str(t).replace("torch.nn.", "nn."), ["None" if a is None else str(a) for a in args]])
    return json.dumps(out)


def match_layout(yaml: dict) -> str | None:
    """The layout whose table the checkpoint's `model.yaml` lists (nc / anchors given by name or value)."""
    rows = list(yaml.get("backbone") or []) + list(yaml.get("head") or [])
    if rows:
        rows = rows[:-1] + [[rows[-1][0], rows[-1][1], rows[-1][2], ["nc", "anchors"]]]
    want = _norm(rows)
    return next((name for name, table in YOLOV7_LAYOUTS.items() if _norm(table) == want), None)


def describe_pickle(container: Any, model: nn.Module, where: str) -> tuple[dict, dict] | None:
    """The family hook (models.family): a YOLOv7 `train.py` full pickle's stand-in tree -> (meta, state_dict);
    None when it has no IDetect head or its yaml is no yolov7 layout (another family's, or none)."""
    from ..safe_pickle import module_attr, upstream_name
    from ..upstream import _names

    heads = [m for m in model.modules() if upstream_name(m).rsplit(".", 1)[-1] == "IDetect"]
    yaml = module_attr(model, "yaml") or {}
    layout = match_layout(yaml) if heads and isinstance(yaml, dict) else None
    if layout is None:
        return None
    head = heads[-1]
    sd = model.state_dict()
    nc = int(module_attr(head, "nc") or yaml.get("nc") or 0)
    eps = sorted({float(m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)})
    if eps != [BN_EPS]:
        raise UserError(f"{where}: BatchNorm eps {eps} in the checkpoint; upstream YOLOv7 (and yolobuild) use "
                        f"{BN_EPS:g}")
    stride = module_attr(model, "stride")
    strides = [int(round(float(s))) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else None
    meta: dict[str, Any] = {"family": "yolov7", "scale": None, "layout": layout, "nc": nc,
                            "names": _names(module_attr(model, "names"), nc), "strides": strides,
                            "upstream": upstream_name(model), "input_size": None}
    a = head._buffers.get("anchors")
    if a is not None and strides:
        px = (a.float() * a.new_tensor(strides).float().view(-1, 1, 1)).view(a.shape[0], -1)
        meta["anchors"] = [[round(float(v), 4) for v in row] for row in px]
    return meta, sd
