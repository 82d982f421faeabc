"""ultralytics YOLO11 and YOLO26 detect, written for yolobuild from the public layer definitions.

Module and attribute names follow ultralytics 8.4 (`model.{i}.m.{j}.cv1.conv.weight`,
`model.10.m.0.attn.qkv.conv.weight`, `model.23.cv3.{level}.0.0.conv.weight`,
`model.23.one2one_cv2...`), so the state_dict of an ultralytics checkpoint loads unchanged.

YOLO11: C3k2 blocks (C2f whose inner blocks are bottlenecks or, for m / l / x, C3k), C2PSA
attention after SPPF, and the anchor-free DFL head whose class branch is depthwise (`legacy` off).
YOLO26: the same body with a residual SPPF and attention in the last C3k2, and an end-to-end head:
two branch sets, one-to-many (`cv2`/`cv3`, for training) and one-to-one (`one2one_cv2`/`_cv3`,
what inference runs), with reg_max 1 (the box branch gives the ltrb distances directly, no DFL).

Head layouts (the branch inference runs):
  raw      per level cat(box (4*reg_max), class logits (nc)) -> (bs, 4*reg_max+nc, ny, nx)
  split    xy (bs, N, 2), wh (bs, N, 2), class scores (bs, N, nc), in input pixels
  decoded  (bs, N, 4+nc): x, y, w, h, class scores (upstream's own output is the transpose)
  topk     YOLO26's end-to-end output (bs, max_det, 6): x1, y1, x2, y2, score, class of the best
           (anchor point, class) pairs, no NMS needed (the one-to-one head gives one box per object);
           a module-level layout for now, not yet a `graph.head` choice
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..graph import SequentialDetector, place, repeated
from .layers import (HEAD_OPTIONS, REPEATED, SCALED, YOLO11_LAYOUTS, YOLO11_SCALES, YOLO26_LAYOUTS,
                               YOLO26_SCALES, make_divisible)
from ..yolov5.model import C3, Bottleneck, Concat, Conv
from ..yolov8.model import C2f, DFL


def dw_conv(c1, c2, k=1, s=1, act=True) -> Conv:
    """Depthwise conv (groups = gcd(c1, c2)), ultralytics' DWConv: a Conv with groups."""
    return Conv(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class SPPF(nn.Module):
    """SPPF with `n` pooling steps; YOLO26's has a residual and no activation after cv1."""

    def __init__(self, c1, c2, k=5, n=3, shortcut=False, cv1_act=True):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=cv1_act)
        self.cv2 = Conv(c_ * (n + 1), c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n = n
        self.add = shortcut and c1 == c2

    def forward(self, x):
        feats = [self.cv1(x)]
        for _ in range(self.n):
            feats.append(self.m(feats[-1]))
        y = self.cv2(torch.cat(feats, 1))
        return x + y if self.add else y


class C3k(C3):
    """C3 whose bottlenecks use k x k convolutions on both sides."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, k=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, k=(k, k)) for _ in range(n)))


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, qkv by one 1x1 conv, plus a depthwise positional
    term on v."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        b, c, h, w = x.shape
        kd, hd = self.key_dim, self.head_dim
        qkv = self.qkv(x).view(b, self.num_heads, 2 * kd + hd, h * w)
        q, k, v = qkv[:, :, :kd], qkv[:, :, kd:2 * kd], qkv[:, :, 2 * kd:]
        # softmax(Q K^T * scale) V with positions as rows, the form compilers fuse into one attention op
        # (rknn-toolkit2's fuse rule fails on the V @ W^T form)
        weights = (q.transpose(-2, -1) * self.scale @ k).softmax(dim=-1)          # (b, heads, N, N)
        y = (weights @ v.transpose(-2, -1)).transpose(-2, -1).reshape(b, c, h, w)
        return self.proj(y + self.pe(v.reshape(b, c, h, w)))


class PSABlock(nn.Module):
    """Attention then a two-conv feed-forward, each with a residual."""

    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """Split in two halves; PSA blocks on one, then both joined by a 1x1 conv."""

    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x):
        y = self.cv1(x)
        a, b = y[:, :self.c], y[:, self.c:]
        return self.cv2(torch.cat((a, self.m(b)), 1))


class C3k2(C2f):
    """C2f whose inner blocks are bottlenecks, C3k blocks (c3k) or bottleneck + PSA block (attn)."""

    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, attn=False, g=1, shortcut=True):
        super().__init__(c1, c2, n, shortcut, g, e)
        c = self.c

        def block():
            if attn:
                return nn.Sequential(Bottleneck(c, c, shortcut, g, e=0.5, k=(3, 3)),
                                     PSABlock(c, attn_ratio=0.5, num_heads=max(c // 64, 1)))
            if c3k:
                return C3k(c, c, 2, shortcut, g)
            return Bottleneck(c, c, shortcut, g, e=0.5, k=(3, 3))

        self.m = nn.ModuleList(block() for _ in range(n))


def _box_branch(ch, c2, reg_max):
    return nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch)


def _cls_branch(ch, c3, nc):
    return nn.ModuleList(nn.Sequential(nn.Sequential(dw_conv(x, x, 3), Conv(x, c3, 1)),
                                       nn.Sequential(dw_conv(c3, c3, 3), Conv(c3, c3, 1)),
                                       nn.Conv2d(c3, nc, 1)) for x in ch)


class Detect(nn.Module):
    """Anchor-free head with a depthwise class branch; `end2end` adds the one-to-one branches, which
    inference then runs. reg_max 1: the box branch is the ltrb distance itself."""

    stride = None

    def __init__(self, nc=80, ch=(), reg_max=16, end2end=False):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        self.no = nc + 4 * reg_max
        c2, c3 = max((16, ch[0] // 4, reg_max * 4)), max(ch[0], min(nc, 100))
        self.cv2 = _box_branch(ch, c2, reg_max)
        self.cv3 = _cls_branch(ch, c3, nc)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        self.end2end = end2end
        if end2end:
            self.one2one_cv2 = copy.deepcopy(self.cv2)
            self.one2one_cv3 = copy.deepcopy(self.cv3)
        self.layout = "decoded"

    def branches(self):
        return (self.one2one_cv2, self.one2one_cv3) if self.end2end else (self.cv2, self.cv3)

    def forward(self, x):
        box, cls = self.branches()
        x = [torch.cat((box[i](x[i]), cls[i](x[i])), 1) for i in range(self.nl)]
        if self.training or self.layout == "raw":
            return tuple(x) if not self.training else x
        bs = x[0].shape[0]
        flat = torch.cat([t.view(bs, self.no, -1) for t in x], 2)
        dist = self.dfl(flat[:, :4 * self.reg_max])                          # (bs, 4, N) ltrb, grid units
        scores = flat[:, 4 * self.reg_max:].sigmoid()
        points, strides = self._anchors(x)
        lt, rb = dist[:, :2], dist[:, 2:]
        xy = (points + (rb - lt) / 2) * strides
        wh = (lt + rb) * strides
        xy, wh, scores = xy.transpose(1, 2), wh.transpose(1, 2), scores.transpose(1, 2)
        if self.layout == "topk":
            return self._topk(torch.cat((xy - wh / 2, xy + wh / 2), 2), scores)
        if self.layout == "split":
            return xy, wh, scores
        return torch.cat((xy, wh, scores), 2)

    max_det = 300

    def _topk(self, boxes, scores):
        """The k best anchor points by their best class, then the k best (point, class) pairs among them."""
        bs, n, nc = scores.shape
        k = min(self.max_det, n)
        points = scores.amax(-1).topk(k, dim=1).indices                                   # (bs, k)
        cand = scores.gather(1, points[..., None].expand(-1, -1, nc))                      # (bs, k, nc)
        best, flat = cand.flatten(1).topk(k, dim=1)
        rows = points.gather(1, flat // nc)
        xyxy = boxes.gather(1, rows[..., None].expand(-1, -1, 4))
        return torch.cat((xyxy, best[..., None], (flat % nc)[..., None].to(boxes.dtype)), 2)

    def _anchors(self, x):
        pts, strides = [], []
        for i, t in enumerate(x):
            _, _, ny, nx = t.shape
            sy, sx = torch.meshgrid(torch.arange(ny, dtype=t.dtype) + 0.5, torch.arange(nx, dtype=t.dtype) + 0.5,
                                    indexing="ij")
            pts.append(torch.stack((sx, sy), 0).view(2, -1))
            strides.append(torch.full((1, ny * nx), float(self.stride[i]), dtype=t.dtype))
        return torch.cat(pts, 1), torch.cat(strides, 1)


LAYOUTS = {"11": ("yolo11", YOLO11_LAYOUTS["11"], YOLO11_SCALES), "26": ("yolo26", YOLO26_LAYOUTS["26"], YOLO26_SCALES)}


class DetectionModel(SequentialDetector):
    """Sequential YOLO11 / YOLO26 graph from the layer table, a named scale or explicit multiples."""

    def __init__(self, scale: str | None = "n", nc: int = 80, layout: str = "11", multiples=None, ch: int = 3,
                 sppf_act: bool | None = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
        family, table, scales = LAYOUTS[layout]
        if multiples is None:
            if scale not in scales:
                raise ValueError(f"unknown {family} scale {scale!r}; choose one of {sorted(scales)}")
            multiples = scales[scale]
        depth, width, max_channels = multiples
        head = HEAD_OPTIONS[family]
        self.yaml = {"scale": scale, "nc": nc, "layout": layout, "multiples": list(multiples)}
        self.model, self.save = self._build(table, depth, width, math.inf if max_channels is None else max_channels,
                                            scale, nc, ch, head["reg_max"], head["end2end"], sppf_act)
        detect = self.model[-1]
        detect.stride = torch.ones(detect.nl)
        self.probe_strides(ch)
        self._init_biases()
        self.train()

    @staticmethod
    def _build(table, depth, width, max_channels, scale, nc, ch_in, reg_max, end2end, sppf_act=None):
        types = {"Conv": Conv, "C3k2": C3k2, "C2PSA": C2PSA, "SPPF": SPPF, "Concat": Concat,
                 "nn.Upsample": nn.Upsample, "Detect": Detect}
        layers, save, ch = [], [], [ch_in]
        for i, (f, n, type_name, args) in enumerate(table):
            cls = types[type_name]
            args = [nc if a == "nc" else a for a in args]
            n = max(round(n * depth), 1) if n > 1 else n
            if type_name in SCALED:
                c2 = make_divisible(min(args[0], max_channels) * width, 8)
                extra = list(args[1:])
                if type_name == "C3k2" and scale in ("m", "l", "x"):    # upstream reads the scale's name here
                    extra[0:1] = [True]
                if type_name == "SPPF":           # k, n, shortcut; rows that predate YOLO26 keep cv1's activation
                    extra = extra + [5, 3, False][len(extra):] + [len(args) <= 2 if sppf_act is None else sppf_act]
                args = [ch[f], c2, *extra]
                if type_name in REPEATED:
                    args.insert(2, n)
                    n = 1
            elif type_name == "Concat":
                c2 = sum(ch[x] for x in f)
            elif type_name == "Detect":
                args, c2 = [args[0], [ch[x] for x in f], reg_max, end2end], None
            else:
                c2 = ch[f]
            place(layers, save, repeated(cls, args, n), i, f, type_name)
            if i == 0:
                ch = []
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)

    def _init_biases(self):
        d = self.model[-1]
        pairs = [(d.cv2, d.cv3)] + ([(d.one2one_cv2, d.one2one_cv3)] if d.end2end else [])
        for box, cls in pairs:
            for a, b, s in zip(box, cls, d.stride):
                a[-1].bias.data[:] = 2.0 if d.reg_max == 1 else 1.0
                b[-1].bias.data[: d.nc] = math.log(5 / d.nc / (640 / s) ** 2)


def build(scale: str | None = "n", layout: str = "11", nc: int = 80, anchors=None, multiples=None,
          sppf_act: bool | None = None) -> DetectionModel:
    """The family-table entry point for yolo11 and yolo26 (Family.module in models.yolo11).

    `sppf_act`: whether SPPF's first conv has its activation. ultralytics up to about 8.4.3x built
    every SPPF without it; later versions give it back to the rows that predate YOLO26, so a
    checkpoint's own modules say which (models.upstream reads them)."""
    return DetectionModel(scale=scale, nc=nc, layout=layout, multiples=multiples, sppf_act=sppf_act)
