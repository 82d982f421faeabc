"""ultralytics YOLOv8 detect (anchor-free, DFL box regression), written for yolobuild.

Module and attribute names follow ultralytics (`model.{i}.cv1.conv.weight`, `model.{i}.m.{j}.cv1`,
`model.22.cv2.{level}.{0,1,2}`, `model.22.cv3...`, `model.22.dfl.conv.weight`) so that the
state_dict of an ultralytics checkpoint loads unchanged.

Head layouts (what `Detect.forward` returns outside training):
  raw      per level cat(box distribution (4*reg_max), class logits (nc)) -> (bs, 4*reg_max+nc, ny, nx)
  split    xy (bs, N, 2), wh (bs, N, 2), class scores (bs, N, nc), in input pixels
  decoded  (bs, N, 4+nc): x, y, w, h, class scores. There is no objectness column: upstream's
           own output is the transpose, (bs, 4+nc, N).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..graph import SequentialDetector, place, repeated

from .layers import YOLOV8_LAYOUTS, YOLOV8_SCALES
from ..yolov5.model import SPPF, Bottleneck, Concat, Conv, make_divisible


class C2f(nn.Module):
    """CSP bottleneck with two convolutions; every bottleneck's output is kept and concatenated."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x):
        y = self.cv1(x)
        ys = [y[:, :self.c], y[:, self.c:]]          # chunk(2, 1) as two slices: exports as Slice, not Split
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over reg_max bins, expectation by a fixed 1x1 conv."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Anchor-free decoupled head (box: cv2, classes: cv3) with DFL box decode."""

    stride = None

    def __init__(self, nc=80, ch=(), reg_max=16):
        super().__init__()
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + reg_max * 4
        c2, c3 = max((16, ch[0] // 4, reg_max * 4)), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        self.layout = "decoded"

    def forward(self, x):
        x = [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl)]
        if self.training or self.layout == "raw":
            return tuple(x) if not self.training else x
        bs = x[0].shape[0]
        flat = torch.cat([t.view(bs, self.no, -1) for t in x], 2)            # (bs, no, N)
        box, cls = flat[:, :self.reg_max * 4], flat[:, self.reg_max * 4:]
        anchors, strides = self._anchors(x)                                   # (2, N), (1, N) constants
        dist = self.dfl(box)                                                  # (bs, 4, N) ltrb in grid units
        lt, rb = dist[:, :2], dist[:, 2:]
        xy = (anchors + (rb - lt) / 2) * strides
        wh = (lt + rb) * strides
        xy, wh, scores = xy.transpose(1, 2), wh.transpose(1, 2), cls.sigmoid().transpose(1, 2)
        if self.layout == "split":
            return xy, wh, scores
        return torch.cat((xy, wh, scores), 2)

    def _anchors(self, x):
        pts, strides = [], []
        for i, t in enumerate(x):
            _, _, ny, nx = t.shape
            sy, sx = torch.meshgrid(torch.arange(ny, dtype=t.dtype) + 0.5, torch.arange(nx, dtype=t.dtype) + 0.5,
                                    indexing="ij")
            pts.append(torch.stack((sx, sy), 0).view(2, -1))
            strides.append(torch.full((1, ny * nx), float(self.stride[i]), dtype=t.dtype))
        return torch.cat(pts, 1), torch.cat(strides, 1)


LAYER_TYPES = {c.__name__: c for c in (Conv, C2f, SPPF, Concat, Detect)}
LAYER_TYPES["nn.Upsample"] = nn.Upsample


class DetectionModel(SequentialDetector):
    """Sequential YOLOv8 graph built from an upstream-style layer table."""

    def __init__(self, scale: str | None = "n", nc: int = 80, layout: str = "v8", ch: int = 3, reg_max: int = 16,
                 multiples=None):
        super().__init__()
        if multiples is None and scale not in YOLOV8_SCALES:
            raise ValueError(f"unknown YOLOv8 scale {scale!r}; choose one of {sorted(YOLOV8_SCALES)}")
        if layout not in YOLOV8_LAYOUTS:
            raise ValueError(f"unknown YOLOv8 layout {layout!r}; choose one of {sorted(YOLOV8_LAYOUTS)}")
        self.yaml = {"scale": scale, "nc": nc, "layout": layout}
        depth, width, mc = multiples if multiples is not None else YOLOV8_SCALES[scale]   # a custom yaml's size
        self.model, self.save = self._build(YOLOV8_LAYOUTS[layout], depth, width, math.inf if mc is None else mc,
                                            nc, ch, reg_max)
        detect = self.model[-1]
        detect.stride = torch.ones(detect.nl)
        self.probe_strides(ch)
        self._init_biases()
        self.train()

    @staticmethod
    def _build(table, depth, width, max_channels, nc, ch_in, reg_max):
        layers, save, ch = [], [], [ch_in]
        for i, (f, n, type_name, args) in enumerate(table):
            cls = LAYER_TYPES[type_name]
            args = [nc if a == "nc" else a for a in args]
            n = max(round(n * depth), 1) if n > 1 else n
            if cls in (Conv, C2f, SPPF):
                c1, c2 = ch[f], make_divisible(min(args[0], max_channels) * width, 8)
                args = [c1, c2, *args[1:]]
                if cls is C2f:
                    args.insert(2, n)
                    n = 1
            elif cls is Concat:
                c2 = sum(ch[x] for x in f)
            elif cls is Detect:
                args = [args[0], [ch[x] for x in f], reg_max]
                c2 = None
            else:
                c2 = ch[f]
            place(layers, save, repeated(cls, args, n), i, f, type_name)
            if i == 0:
                ch = []
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)

    def _init_biases(self):
        d = self.model[-1]
        for a, b, s in zip(d.cv2, d.cv3, d.stride):
            a[-1].bias.data[:] = 1.0
            b[-1].bias.data[: d.nc] = math.log(5 / d.nc / (640 / s) ** 2)


def build(scale: str | None = "n", layout: str = "v8", nc: int = 80, anchors=None, multiples=None) -> DetectionModel:
    return DetectionModel(scale=scale, nc=nc, layout=layout, multiples=multiples)


# --------------------------------------------------------------------------- checkpoint recognition hooks

def state_dict_nc(sd: dict) -> int | None:
    """The class count of an ultralytics anchor-free head (YOLOv8, YOLO11, YOLO26: the last cv3 conv's outputs)."""
    import re

    last = sorted(k for k in sd if re.fullmatch(r"model\.\d+\.cv3\.0\.2\.weight", k))
    return int(sd[last[-1]].shape[0]) if last else None


def guess_state_dict(sd: dict) -> str | None:
    """'yolov8n (anchor-free), nc=80', 'yolo11n (layout 11), nc=3': the ultralytics detect layouts share their
    keys, so this one hook tells them apart (by the layer shapes, models.upstream)."""
    from ..upstream import scale_from_shapes

    nc = state_dict_nc(sd)
    tail = f", nc={nc}" if nc else ""
    if any(k.startswith("model.") and ".cv3." in k for k in sd):
        found = scale_from_shapes(sd)
        if found and found[0] != "yolov8":
            return f"{found[0]}{found[2]} (layout {found[1]}){tail}"
    if any(k.endswith(".dfl.conv.weight") for k in sd):
        stem = sd.get("model.0.conv.weight")
        scale = next((s for s, (_, w, mc) in YOLOV8_SCALES.items()
                      if stem is not None and make_divisible(min(64, mc) * w, 8) == stem.shape[0]), "")
        return f"yolov8{scale} (anchor-free){tail}"
    return None
