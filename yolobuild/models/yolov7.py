"""YOLOv7-tiny, written for yolobuild from the public layer definitions of WongKinYiu/yolov7.

Module and attribute names follow the original repository (`model.{i}.conv.weight`, `model.{i}.bn`,
`model.77.m.{level}`, `model.77.ia.{level}.implicit`, `model.77.im.{level}.implicit`,
`model.77.anchors`), so the state_dict of its `train.py` checkpoints loads unchanged. The head is
YOLOR's IDetect (models.yolor), whose export-clean decode (constants, no in-place writes) it shares.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .graph import SequentialDetector
from .yolor import IDetect
from .yolov5 import Concat, Conv
from .yolov7_arch import FAMILIES, YOLOV7_BACKBONE_ROWS, YOLOV7_LAYOUTS

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


def _act(spec):
    if spec == "nn.LeakyReLU(0.1)":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"activation {spec!r} is not supported")


class Model(SequentialDetector):
    """The sequential YOLOv7 graph built from the layer table (models.yolov7_arch)."""

    def __init__(self, layout: str = "yolov7-tiny", nc: int = 80, anchors=None, ch: int = 3):
        super().__init__()
        if layout not in YOLOV7_LAYOUTS:
            raise ValueError(f"unknown yolov7 layout {layout!r}; choose one of {sorted(YOLOV7_LAYOUTS)}")
        spec = FAMILIES["yolov7"]["layouts"][layout]
        anchors = [list(map(float, a)) for a in (anchors or spec["anchors"])]
        table = YOLOV7_LAYOUTS[layout]
        rows = YOLOV7_BACKBONE_ROWS[layout]
        self.yaml = {"nc": nc, "anchors": anchors, "backbone": table[:rows], "head": table[rows:], "layout": layout}
        self.model, self.save = self._build(table, nc, anchors, ch)
        detect = self.model[-1]
        detect.stride = torch.tensor(spec["strides"], dtype=torch.float32)
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self.stride = detect.stride
        self._init_biases()

    @staticmethod
    def _build(table, nc, anchors, ch_in):
        layers, save, ch = [], [], []

        def c_in(j):
            return ch_in if not ch and j == -1 else ch[j]

        for i, (f, n, type_name, args) in enumerate(table):
            if type_name == "Conv":
                c2, k, s, p, g, act = args
                m = Conv(c_in(f), c2, k, s, p, g, act=_act(act))
                m.bn.eps = BN_EPS
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
            m.i, m.f, m.type = i, f, type_name
            save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(m)
            ch.append(c2)
        return nn.Sequential(*layers), sorted(save)

    def _init_biases(self):
        detect = self.model[-1]
        with torch.no_grad():
            for mi, s in zip(detect.m, detect.stride):
                b = mi.bias.view(detect.na, -1)
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (detect.nc - 0.99))


def build(scale=None, layout: str = "yolov7-tiny", nc: int = 80, anchors=None) -> Model:
    """The family-table entry point (models.arch.FAMILIES['yolov7']['module'])."""
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


def describe_yolov7(container: Any, model: nn.Module, where: str) -> tuple[dict, dict] | None:
    """A YOLOv7 `train.py` full pickle's stand-in tree -> (meta, state_dict); None when its yaml is no
    yolov7 layout (then it may be YOLOR's)."""
    from .safe_pickle import module_attr, upstream_name
    from .upstream import _names

    yaml = module_attr(model, "yaml") or {}
    layout = match_layout(yaml) if isinstance(yaml, dict) else None
    if layout is None:
        return None
    head = [m for m in model.modules() if upstream_name(m).rsplit(".", 1)[-1] == "IDetect"][-1]
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
