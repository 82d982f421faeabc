"""The sequential YOLO graph both YOLOv5 and YOLOv8 models run: layers with `from` indices."""
from __future__ import annotations

import torch
from torch import nn


class SequentialDetector(nn.Module):
    """`self.model` is an nn.Sequential whose layers carry `.f` (inputs: -1 = previous layer, or
    indices) and `.i`; outputs of the layers listed in `self.save` are kept for later layers."""

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    @property
    def detect(self) -> nn.Module:
        return self.model[-1]

    def probe_strides(self, ch: int, probe: int = 256) -> None:
        """Each level's stride, from the size of its raw output on a probe input (as upstream measures it)."""
        detect = self.model[-1]
        self.eval()
        with torch.no_grad():
            detect.layout = "raw"
            outs = self.forward(torch.zeros(1, ch, probe, probe))
            detect.layout = "decoded"
        detect.stride = torch.tensor([probe / o.shape[-2] for o in outs])
        self.stride = detect.stride

    def init_anchor_biases(self, eps: float = 0.99) -> None:
        """Upstream's prior for an anchor-based head: objectness ~ 8 objects per 640 image, class ~ 0.6/nc."""
        import math

        detect = self.model[-1]
        with torch.no_grad():
            for mi, s in zip(detect.m, detect.stride):
                b = mi.bias.view(detect.na, -1)
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (detect.nc - eps))


def repeated(cls, args, n: int) -> nn.Module:
    """A layer-table row's module: n copies in a Sequential, or the one module."""
    return nn.Sequential(*(cls(*args) for _ in range(n))) if n > 1 else cls(*args)


def place(layers: list, save: list, m: nn.Module, i: int, f, type_name: str) -> nn.Module:
    """Append a row's module tagged as upstream tags it (.i, .f, .type; the state_dict keys follow .i) and
    record which earlier outputs later layers read (`save`)."""
    m.i, m.f, m.type = i, f, type_name
    save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
    layers.append(m)
    return m


def decode_anchor_based(maps, na: int, no: int, strides, anchors_px, layout: str):
    """Per-level conv maps (bs, na*no, ny, nx) -> the head layout's outputs, YOLOv5-style decode
    (xy = (2*sigmoid - 0.5 + cell) * stride, wh = (2*sigmoid)^2 * anchor), shared by every family whose
    head decodes that way (yolov5, mmyolo, YOLOR's IDetect).

    `anchors_px[i]` is level i's (na, 2) anchors in pixels. Grids and anchor grids are computed here,
    at trace time, so an export holds them as constants; no slice is written in place (no ScatterND).
    layout: "split" -> (xy, wh, conf); "decoded" -> one (bs, N, no) tensor."""
    xys, whs, confs = [], [], []
    for i, t in enumerate(maps):
        bs, _, ny, nx = t.shape
        y = t.view(bs, na, no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
        shape = (1, na, ny, nx, 2)
        yv, xv = torch.meshgrid(torch.arange(ny, device=t.device, dtype=t.dtype),
                                torch.arange(nx, device=t.device, dtype=t.dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = anchors_px[i].to(t.dtype).view(1, na, 1, 1, 2).expand(shape)
        xys.append(((y[..., 0:2] * 2 + grid) * strides[i]).reshape(bs, -1, 2))
        whs.append(((y[..., 2:4] * 2) ** 2 * anchor_grid).reshape(bs, -1, 2))
        confs.append(y[..., 4:].reshape(bs, -1, no - 4))
    xy, wh, conf = torch.cat(xys, 1), torch.cat(whs, 1), torch.cat(confs, 1)
    if layout == "split":
        return xy, wh, conf
    return torch.cat((xy, wh, conf), 2)
