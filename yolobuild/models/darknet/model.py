"""YOLOv3 and YOLOv3-tiny, built by parsing a Darknet `.cfg`, loaded from Darknet `.weights`.

The network is the cfg's layer list (`module_list.{i}` is cfg layer i; route, shortcut and yolo
layers hold no weights) with the [yolo] layers' output convolutions gathered into one head,
`detect`, in increasing stride order like every yolobuild family. State-dict keys:

    module_list.{i}.conv.weight, module_list.{i}.bn.{weight,bias,running_mean,running_var}  (conv + BN)
    module_list.{i}.conv.{weight,bias}                                                  (conv, no BN)
    detect.m.{level}.{weight,bias}                                         (the conv before a [yolo])

Anchors are not in the state_dict (the cfg and checkpoint metadata carry them). Plain
state_dicts of the PyTorch ports that number layers the Darknet way (`module_list.{i}.conv_{i}` /
`batch_norm_{i}`, as in the cfg-based ultralytics/yolov3 and PyTorch-YOLOv3, or
`module_list.{i}.Conv2d` / `BatchNorm2d`) are converted to these keys (`convert_state_dict`).

Decode follows Darknet's [yolo] layer: xy = (sigmoid(t) + cell) * stride, wh = exp(t) * anchor,
objectness and classes sigmoid (runtime.decode.decode_raw_darknet on the host). BatchNorm uses
PyTorch's sqrt(var + 1e-5) where Darknet divides by sqrt(var) + 1e-6; the two agree to ~1e-6
relative for the variances real weights carry.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from . import darknet_cfg as dc
from . import FAMILIES
from ..yolov5.model import Conv

BN_EPS = 1e-5


def _act(name: str) -> nn.Module:
    return {"leaky": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, "linear": nn.Identity}[name]()


class DarknetConv(Conv):
    """[convolutional] with batch_normalize=1: conv (no bias) + BN + activation; fuse folds the BN."""

    def __init__(self, c1, c2, k=1, s=1, p=0, g=1, act="leaky"):
        super().__init__(c1, c2, k, s, p, g, act=_act(act) if act != "linear" else False)
        self.bn.eps = BN_EPS
        self.bn.momentum = 0.01


class ConvBias(nn.Module):
    """[convolutional] without batch norm: conv with bias + activation."""

    def __init__(self, c1, c2, k=1, s=1, p=0, g=1, act="leaky"):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, groups=g, bias=True)
        self.act = _act(act)

    def forward(self, x):
        return self.act(self.conv(x))


class MaxPool(nn.Module):
    """Darknet [maxpool]: out = (in + padding - size) // stride + 1 with padding = size - 1 by default,
    the window starting padding // 2 before the first pixel and padded cells never winning. The pad is
    by edge replication (an edge pixel lies in every window that reaches the pad, so the max is the
    same as with -inf) and only where the pad is read: stride-2 pools of even maps stay plain."""

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x):
        k, s, pad = self.size, self.stride, self.padding
        h, w = int(x.shape[-2]), int(x.shape[-1])
        lo = pad // 2
        oh, ow = (h + pad - k) // s + 1, (w + pad - k) // s + 1
        hi_h, hi_w = (oh - 1) * s + k - lo - h, (ow - 1) * s + k - lo - w   # cells read past the far edge
        if lo or hi_h > 0 or hi_w > 0:
            x = F.pad(x, (lo, max(hi_w, 0), lo, max(hi_h, 0)), mode="replicate")
        return F.max_pool2d(x, k, s)


class Detect(nn.Module):
    """The [yolo] layers' output convolutions and decode, levels in increasing stride order.

    `layout`: `decoded` (bs, N, 5+nc) in input pixels, `split` (xy, wh, conf), `raw` the per-level
    conv outputs. Grids and anchor grids are trace-time constants; no in-place slice writes."""

    def __init__(self, nc: int, anchors, strides, convs: list[nn.Conv2d]):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.stride = torch.tensor([float(s) for s in strides])
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1), persistent=False)  # grid units
        self.m = nn.ModuleList(convs)
        self.layout = "decoded"

    def forward(self, x):
        x = [self.m[i](x[i]) for i in range(self.nl)]
        if self.training or self.layout == "raw":
            return tuple(x)
        xys, whs, confs = [], [], []
        for i, t in enumerate(x):
            bs, _, ny, nx = t.shape
            y = t.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            grid, anchor_grid = self._make_grid(nx, ny, i, t.dtype, t.device)
            xys.append(((y[..., 0:2].sigmoid() + grid) * self.stride[i]).reshape(bs, -1, 2))
            whs.append((y[..., 2:4].exp() * anchor_grid).reshape(bs, -1, 2))
            confs.append(y[..., 4:].sigmoid().reshape(bs, -1, self.no - 4))
        xy, wh, conf = torch.cat(xys, 1), torch.cat(whs, 1), torch.cat(confs, 1)
        if self.layout == "split":
            return xy, wh, conf
        return torch.cat((xy, wh, conf), 2)

    def _make_grid(self, nx, ny, i, dtype, device):
        shape = (1, self.na, ny, nx, 2)
        yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                torch.arange(nx, device=device, dtype=dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape)
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class Darknet(nn.Module):
    """A Darknet YOLO network from cfg sections (classes / filters already set for nc)."""

    def __init__(self, sections: list[dict], anchors=None, layout: str | None = None):
        super().__init__()
        layers = dc.walk(sections)
        yolos = dc.levels(layers)
        nc = yolos[0]["nc"]
        if any(y["nc"] != nc for y in yolos):
            raise ValueError("cfg: the [yolo] layers disagree on classes")
        if anchors is None:
            anchors = [y["anchors"] for y in yolos]
        if len(anchors) != len(yolos) or any(len(a) != len(y["anchors"]) for a, y in zip(anchors, yolos)):
            raise ValueError(f"{len(anchors)} anchor levels of {[len(a) // 2 for a in anchors]} do not fit the cfg "
                             f"({len(yolos)} [yolo] layers of {[len(y['anchors']) // 2 for y in yolos]} anchors)")
        heads = {y["index"] - 1: level for level, y in enumerate(yolos)}
        mods, convs = [], [None] * len(yolos)
        for la in layers:
            t = la["type"]
            if t == "convolutional":
                args = (la["c_in"], la["filters"], la["size"], la["stride"], la["pad"], la["groups"])
                if la["index"] in heads:
                    convs[heads[la["index"]]] = nn.Conv2d(*args[:5], groups=la["groups"], bias=True)
                    mods.append(nn.Identity())      # its conv lives in detect.m; the slot passes the features on
                    continue
                mods.append(DarknetConv(*args, act=la["act"]) if la["bn"] else ConvBias(*args, act=la["act"]))
            elif t == "maxpool":
                mods.append(MaxPool(la["size"], la["stride"], la["pad"]))
            elif t == "upsample":
                mods.append(nn.Upsample(scale_factor=la["stride"], mode="nearest"))
            else:
                mods.append(nn.Identity())
        self.module_list = nn.ModuleList(mods)
        self.detect = Detect(nc, anchors, [y["stride_px"] for y in yolos], convs)
        self.layers = [{"type": la["type"], "inputs": la["inputs"], "index": la["index"]} for la in layers]
        self.save = sorted({k for la in layers if la["type"] in ("route", "shortcut") for k in la["inputs"]})
        self.level_of = {y["index"]: level for level, y in enumerate(yolos)}
        self.stride = self.detect.stride
        self.names = [str(i) for i in range(nc)]
        _, h, w = dc.net_input(sections)
        self.yaml = {"layout": layout, "nc": nc, "anchors": [list(map(float, a)) for a in anchors],
                     "input_size": [h, w]}

    def forward(self, x):
        outs: list = []
        feats: list = [None] * len(self.level_of)
        save = self.save
        for la, m in zip(self.layers, self.module_list):
            t = la["type"]
            if t == "route":
                ins = la["inputs"]
                x = outs[ins[0]] if len(ins) == 1 else torch.cat([outs[k] for k in ins], 1)
            elif t == "shortcut":
                x = x + outs[la["inputs"][1]]
            elif t == "yolo":
                feats[self.level_of[la["index"]]] = x
            else:
                x = m(x)
            outs.append(x if la["index"] in save else None)
        return self.detect(feats)


# --------------------------------------------------------------------------- building

def layout_sections(layout: str, nc: int) -> list[dict]:
    if layout not in dc.LAYOUT_CFG:
        raise ValueError(f"unknown yolov3 layout {layout!r}; choose one of {sorted(dc.LAYOUT_CFG)}")
    return dc.with_classes(dc.read_cfg(layout), nc)


def build(scale=None, layout: str = "yolov3", nc: int = 80, anchors=None, cfg: str | None = None) -> Darknet:
    """The family-table entry point (Family.module in models.darknet). With `cfg` (a user's
    cfg text) the network, anchors and masks are that cfg's; else the layout's shipped cfg."""
    if scale is not None:
        raise ValueError(f"yolov3 has no scales (model.scale must be null, got {scale!r})")
    if cfg is not None:
        return Darknet(dc.with_classes(dc.parse_cfg(cfg, "model.cfg"), nc), anchors, layout)
    if anchors is None:
        anchors = FAMILIES[0].layouts[layout]["anchors"] if layout in dc.LAYOUT_CFG else None
    return Darknet(layout_sections(layout, nc), anchors, layout)


def cfg_meta(text: str, where: str) -> dict:
    """What a user's cfg states about the model: {cfg, nc, anchors (per level, pixels), input_size, layout}."""
    try:
        layers = dc.walk(dc.parse_cfg(text, where))
    except (ValueError, KeyError) as exc:
        raise UserError(f"model.cfg: {exc}") from None
    yolos = dc.levels(layers)
    _, h, w = dc.net_input(dc.parse_cfg(text, where))
    return {"cfg": text, "nc": yolos[0]["nc"], "anchors": [y["anchors"] for y in yolos], "input_size": [h, w],
            "layout": dc.layout_of(layers)}


# --------------------------------------------------------------------------- the .weights layout

def weight_keys(layers: list[dict]) -> list[tuple[str, tuple[int, ...]]]:
    """(state_dict key, shape) of every array of a .weights file, in file order."""
    heads = {y["index"] - 1: level for level, y in enumerate(dc.levels(layers))}
    out = []
    for la in layers:
        if la["type"] != "convolutional":
            continue
        i, f = la["index"], la["filters"]
        wshape = (f, la["c_in"] // la["groups"], la["size"], la["size"])
        if i in heads:
            out += [(f"detect.m.{heads[i]}.bias", (f,)), (f"detect.m.{heads[i]}.weight", wshape)]
        elif la["bn"]:
            out += [(f"module_list.{i}.bn.{n}", (f,)) for n in ("bias", "weight", "running_mean", "running_var")]
            out.append((f"module_list.{i}.conv.weight", wshape))
        else:
            out += [(f"module_list.{i}.conv.bias", (f,)), (f"module_list.{i}.conv.weight", wshape)]
    return out


def write_weights(state_dict: dict, layout_or_sections, path, version=(0, 2, 0), seen: int = 0) -> int:
    """A Darknet .weights file from a state_dict in this module's key layout; returns its size in bytes."""
    sections = layout_or_sections
    if isinstance(layout_or_sections, str):
        nc = int(state_dict["detect.m.0.weight"].shape[0]) // 3 - 5
        sections = layout_sections(layout_or_sections, nc)
    major, minor, revision = version
    with open(path, "wb") as f:
        f.write(np.array([major, minor, revision], "<i4").tobytes())
        f.write(np.array([seen], "<i8" if dc.seen_is_64bit(major, minor) else "<i4").tobytes())
        for key, shape in weight_keys(dc.walk(sections)):
            t = state_dict[key].detach().cpu().float()
            if tuple(t.shape) != shape:
                raise ValueError(f"{key}: shape {tuple(t.shape)}, the cfg needs {shape}")
            f.write(t.numpy().astype("<f4").tobytes())
    return Path(path).stat().st_size


def _size_error(path: Path, layout: str, where: str, size: int, header: dict | None) -> UserError:
    cfg = dc.cfg_path(layout).name
    layers = dc.walk(dc.read_cfg(layout))
    hb = header["header_bytes"] if header else 20
    floats = dc.weights_floats(layers)
    per_class = 4 * (dc.weights_floats(dc.walk(dc.with_classes(dc.read_cfg(layout), 2)))
                     - dc.weights_floats(dc.walk(dc.with_classes(dc.read_cfg(layout), 1))))
    others = [f"recipe={lay} model.nc={nc}" for lay, nc in (dc.guess_layout(path) if header else []) if lay != layout]
    hint = f"; its size fits {' or '.join(others)}" if others else ("; truncated?" if size < hb + 4 * floats else "")
    return UserError(f"{where}: Darknet weights of {size} bytes do not match {cfg}: expected {hb + 4 * floats} bytes "
                     f"for nc=80 ({hb}-byte header + {floats} float32; {per_class} bytes per class), "
                     f"actual {size} bytes{hint}")


def read_darknet(path: Path, layout: str, where: str, cfg: str | None = None) -> tuple[dict, dict, int]:
    """-> (header, state_dict, nc) of a .weights file read against the layout's cfg (or a user's `cfg` text,
    whose classes and sizes must then match the file exactly)."""
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    size = path.stat().st_size
    header = dc.read_header(path)
    if header is None:
        raise UserError(f"{where}: Darknet weights of {size} bytes: too short for the header (16 or 20 bytes)")
    body = size - header["header_bytes"]
    if cfg is not None:
        layers = dc.walk(dc.parse_cfg(cfg, "model.cfg"))
        nc = dc.levels(layers)[0]["nc"]
        if body != 4 * dc.weights_floats(layers):
            raise UserError(f"{where}: Darknet weights of {size} bytes do not match model.cfg (classes={nc}): "
                            f"expected {header['header_bytes'] + 4 * dc.weights_floats(layers)} bytes")
    else:
        nc = dc.nc_for_size(layout, body // 4) if body % 4 == 0 else None
        if nc is None:
            raise _size_error(path, layout, where, size, header)
        layers = dc.walk(layout_sections(layout, nc))
    data = np.fromfile(path, dtype="<f4", offset=header["header_bytes"])
    sd, ptr = {}, 0
    for key, shape in weight_keys(layers):
        n = int(np.prod(shape))
        sd[key] = torch.from_numpy(data[ptr:ptr + n].astype(np.float32).reshape(shape).copy())
        ptr += n
    assert ptr == len(data)
    return header, sd, nc


def read_foreign(path: Path, layout: str, where: str, cfg: str | None = None):
    """ops.checkpoint.read_weights hook: a Darknet .weights file -> (source, file_meta, state_dict); None otherwise.

    The class count follows from the file size; it is not put in file_meta (the file does not name it),
    so a file of another nc than the recipe's fails load_into's class-count check."""
    if not dc.looks_like_darknet(path):
        return None
    _, sd, _ = read_darknet(path, layout, where, cfg)
    _, h, w = dc.net_input(dc.parse_cfg(cfg) if cfg is not None else dc.read_cfg(layout))
    return "darknet-weights", {"input_size": [h, w]}, sd


# --------------------------------------------------------------------------- plain state_dicts of PyTorch ports

_PORT_KEY = re.compile(r"module_list\.(\d+)\.(?:(conv_\d+|Conv2d)|(batch_norm_\d+|BatchNorm2d))\."
                       r"(weight|bias|running_mean|running_var|num_batches_tracked)")


def convert_state_dict(obj, sd: dict[str, torch.Tensor], where: str):
    """ops.checkpoint.read_weights hook: Darknet-numbered PyTorch ports' keys -> this module's; (sd, extra meta)."""
    if not any(_PORT_KEY.fullmatch(k) for k in sd):
        return sd, {}
    idx = {int(_PORT_KEY.fullmatch(k).group(1)) for k in sd if _PORT_KEY.fullmatch(k)}
    layout = None
    for name in dc.LAYOUT_CFG:
        convs = {la["index"] for la in dc.walk(dc.read_cfg(name)) if la["type"] == "convolutional"}
        if convs == idx:
            layout = name
    if layout is None:
        raise UserError(f"{where}: a Darknet-numbered PyTorch state_dict (module_list.N.conv_N) whose conv layers "
                        f"match neither yolov3.cfg nor yolov3-tiny.cfg")
    layers = dc.walk(dc.read_cfg(layout))
    heads = {y["index"] - 1: level for level, y in enumerate(dc.levels(layers))}
    out = {}
    for k, v in sd.items():
        m = _PORT_KEY.fullmatch(k)
        if not m:
            out[k] = v
            continue
        i, is_conv, field = int(m.group(1)), m.group(2) is not None, m.group(4)
        if i in heads:
            out[f"detect.m.{heads[i]}.{field}"] = v
        else:
            out[f"module_list.{i}.{'conv' if is_conv else 'bn'}.{field}"] = v
    return out, {}


# --------------------------------------------------------------------------- inspect

def inspect_foreign(path: Path) -> dict | None:
    """ops.checkpoint.inspect_weights hook: what a Darknet .weights file holds, from its header and size."""
    path = Path(path)
    if not path.is_file() or not dc.looks_like_darknet(path):
        return None
    size = path.stat().st_size
    header = dc.read_header(path)
    if header is None:
        raise UserError(f"model.weights: {path}: Darknet weights of {size} bytes: too short for the header")
    fits = dc.guess_layout(path)
    info = {"file": str(path), "source": "Darknet .weights (read against the shipped cfgs)", "family": "yolov3",
            "darknet_version": f"{header['major']}.{header['minor']}.{header['revision']}", "seen": header["seen"]}
    if not fits:
        info["layout"] = "unknown: the size fits neither yolov3.cfg nor yolov3-tiny.cfg for any class count"
        info["bytes"] = size
        return info
    layout, nc = fits[0]
    spec = FAMILIES[0].layouts[layout]
    layers = dc.walk(layout_sections(layout, nc))
    _, h, w = dc.net_input(dc.read_cfg(layout))
    info.update({"layout": layout if len(fits) == 1 else " or ".join(f"{lay} (nc={n})" for lay, n in fits),
                 "nc": nc, "strides": spec["strides"], "anchors": [y["anchors"] for y in dc.levels(layers)],
                 "input_size": [h, w], "head_kind": FAMILIES[0].head,
                 "tensors": len(weight_keys(layers)), "parameters": dc.weights_floats(layers), "bytes": size})
    return info


def guess_state_dict(sd: dict) -> str | None:
    """ops.checkpoint._guess_arch hook: 'yolov3 (layout yolov3-tiny)' for a state_dict in this module's key layout."""
    if "detect.m.0.weight" not in sd or not any(k.startswith("module_list.") for k in sd):
        return None
    idx = {int(k.split(".")[1]) for k in sd if re.fullmatch(r"module_list\.\d+\.conv\.weight", k)}
    for layout in dc.LAYOUT_CFG:
        layers = dc.walk(dc.read_cfg(layout))
        heads = {y["index"] - 1 for y in dc.levels(layers)}
        if idx == {la["index"] for la in layers if la["type"] == "convolutional"} - heads:
            return f"yolov3 (layout {layout})"
    return "yolov3 (Darknet layers)"
