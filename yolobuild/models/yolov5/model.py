"""YOLOv5 (ultralytics/yolov5 v5.0 Focus era and v6.0+ SPPF era), written for yolobuild.

Module names, attribute names and the state_dict key layout follow upstream
(`model.{i}.conv.weight`, `model.24.m.{j}.weight`, `model.24.anchors`) so that real
checkpoints load into these classes unchanged.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from torch import nn

from ..graph import SequentialDetector, decode_anchor_based, place, repeated

from . import FAMILIES
from .layers import YOLOV5_LAYOUTS, YOLOV5_SCALES


def autopad(k: int, p: int | None = None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d + BatchNorm2d + SiLU, upstream's basic block."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class Bottleneck(nn.Module):
    """Two conv blocks and a shortcut; kernels (1, 3) in YOLOv5 and YOLOR, (3, 3) in YOLOv8's C2f."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5, k=(1, 3)):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with three convolutions."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling (v5.0 era)."""

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP (v6.0+): three chained 5x5 max-pools, equal to SPP(5, 9, 13)."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth then conv (v5.0 era stem)."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """Anchor-based YOLOv5 head.

    `layout` selects what forward returns outside training: `decoded` (upstream's eval
    output, one (bs, N, 5+nc) tensor), `raw` (the per-level conv outputs, decode on the
    host) or `split` (decoded, with xy / wh / conf kept apart). Decode uses no in-place
    slice writes, so exported graphs carry no ScatterND.
    """

    stride = None

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.layout = "decoded"

    def forward(self, x):
        x = self._level_maps(x)
        if self.training:
            return [self._to_5d(t) for t in x]
        if self.layout == "raw":
            return tuple(x)
        strides, anchors = self._decode_constants()
        return decode_anchor_based(x, self.na, self.no, strides, anchors, self.layout)

    def _level_maps(self, x):
        return [self.m[i](x[i]) for i in range(self.nl)]

    def _decode_constants(self):
        """Per-level strides and anchors in pixels for the decode."""
        return self.stride, [self.anchors[i] * self.stride[i] for i in range(self.nl)]

    def _to_5d(self, t):
        bs, _, ny, nx = t.shape
        return t.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()


LAYER_TYPES = {c.__name__: c for c in (Conv, Bottleneck, C3, SPP, SPPF, Focus, Concat, Detect)}
LAYER_TYPES["nn.Upsample"] = nn.Upsample


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class DetectionModel(SequentialDetector):
    """Sequential YOLOv5 graph built from an upstream-style layer table."""

    def __init__(self, scale: str = "n", nc: int = 80, anchors: Sequence[Sequence[float]] | None = None,
                 layout: str = "v6", ch: int = 3):
        super().__init__()
        if scale not in YOLOV5_SCALES:
            raise ValueError(f"unknown YOLOv5 scale {scale!r}; choose one of {sorted(YOLOV5_SCALES)}")
        if layout not in YOLOV5_LAYOUTS:
            raise ValueError(f"unknown YOLOv5 layout {layout!r}; choose one of {sorted(YOLOV5_LAYOUTS)}")
        self.yaml = {"scale": scale, "nc": nc, "layout": layout,
                     "anchors": [list(map(float, a)) for a in
                                 (anchors or FAMILIES[0].layouts[layout]["anchors"])]}
        self.model, self.save = self._build(YOLOV5_LAYOUTS[layout], *YOLOV5_SCALES[scale], nc,
                                            self.yaml["anchors"], ch)
        self.names = [str(i) for i in range(nc)]
        detect = self.model[-1]
        self.probe_strides(ch)
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self.init_anchor_biases(eps=0.99999)
        self.train()

    @staticmethod
    def _build(table, depth_multiple, width_multiple, nc, anchors, ch_in):
        layers, save, ch = [], [], [ch_in]
        for i, (f, n, type_name, args) in enumerate(table):
            cls = LAYER_TYPES[type_name]
            args = [nc if a == "nc" else anchors if a == "anchors" else a for a in args]
            n = max(round(n * depth_multiple), 1) if n > 1 else n
            if cls in (Conv, Bottleneck, C3, SPP, SPPF, Focus):
                c1, c2 = ch[f], make_divisible(args[0] * width_multiple, 8)
                args = [c1, c2, *args[1:]]
                if cls is C3:
                    args.insert(2, n)
                    n = 1
            elif cls is Concat:
                c2 = sum(ch[x] for x in f)
            elif cls is Detect:
                args.append([ch[x] for x in f])
                c2 = None
            else:
                c2 = ch[f]
            m = place(layers, save, repeated(cls, args, n), i, f, type_name)
            m.np = sum(p.numel() for p in m.parameters())
            if i == 0:
                ch = []
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)


Model = DetectionModel  # name used by upstream before v6.2


def build_yolov5(scale: str = "n", nc: int = 80, anchors=None, layout: str = "v6") -> DetectionModel:
    return DetectionModel(scale=scale, nc=nc, anchors=anchors, layout=layout)


def build(scale: str = "n", layout: str = "v6", nc: int = 80, anchors=None) -> DetectionModel:
    """The family-table entry point (Family.module in models.yolov5)."""
    return DetectionModel(scale=scale, nc=nc, anchors=anchors, layout=layout)


# --------------------------------------------------------------------------- checkpoint recognition hooks

# the anchor-free ultralytics heads (YOLOv8 / YOLO11 / YOLO26: cv2 box branches per level, DFL, one-to-one
# branches) share the stem's key with YOLOv5; their family's hook names those
_ANCHOR_FREE_HEAD = re.compile(r"model\.\d+\.(cv2\.0\.0\.|dfl\.|one2one_cv)")


def guess_state_dict(sd: dict) -> str | None:
    """'yolov5s (layout v6)' from the stem conv's width (ops.checkpoint asks, for a state_dict that did not fit)."""
    if any(_ANCHOR_FREE_HEAD.match(k) for k in sd):
        return None
    stem, layout = sd.get("model.0.conv.weight"), "v6"
    if stem is None and "model.0.conv.conv.weight" in sd:
        stem, layout = sd["model.0.conv.conv.weight"], "v5"
    if stem is None or stem.ndim != 4:
        return None
    scale = next((s for s, (_, w) in YOLOV5_SCALES.items() if make_divisible(64 * w) == stem.shape[0]), None)
    return f"yolov5{scale} (layout {layout})" if scale else None
