"""mmyolo YOLOv5 (v6.1 P5), written for yolobuild from mmyolo's public definition.

Module and attribute names follow mmyolo / mmdet / mmcv so that the `state_dict` of an mmengine
checkpoint (`yolov5_s-v61_syncbn_fast_8xb16-300e_coco.pth`) loads unchanged:

* `backbone` (YOLOv5CSPDarknet): `stem` and `stage1`..`stage4`, each stage a Sequential of a 3x3
  stride-2 ConvModule, a CSPLayer and (stage4) an SPPFBottleneck;
* `neck` (YOLOv5PAFPN): `reduce_layers`, `upsample_layers`, `top_down_layers`, `downsample_layers`,
  `bottom_up_layers`, `out_layers`;
* `bbox_head` (YOLOv5Head) with `head_module` (YOLOv5HeadModule) holding `convs_pred`.

mmcv's ConvModule is `conv` (no bias), `bn` (BatchNorm2d, eps 1e-3, momentum 0.03) and `activate`
(SiLU). mmdet's CSPLayer is `main_conv`, `short_conv`, `final_conv` and `blocks` of
DarknetBottleneck (`conv1` 1x1, `conv2` 3x3), concatenating (main, short).

Outputs (`bbox_head.layout`):

* raw: per level the `convs_pred` map (bs, na*(5+nc), ny, nx), channels per prior
  [x, y, w, h, obj, cls...]: what a truncated `YOLOv5HeadModule.forward` (the vacc flow's edit) returns.
  Without the `mmyolo_truncate_head` patch the head module splits the map as upstream does
  (cls_scores, bbox_preds, objectnesses) and the head joins the pieces again, so the values are
  the same and the exported graph carries the split; with the patch the outputs are the conv
  outputs themselves.
* split / decoded: YOLOv5BBoxCoder's decode (priors from mmdet's YOLOAnchorGenerator, centres at
  stride / 2: xy = (2 sigmoid - 0.5 + cell) * stride, wh = (2 sigmoid)^2 * anchor), objectness and
  class scores as sigmoids: xywh pixels, objectness, class probabilities. Rows are ordered (prior,
  y, x) per level like yolobuild's YOLOv5; mmyolo's predict_by_feat flattens (y, x, prior), which
  changes row order only, not the detections after NMS.

Preprocessing: mmyolo's data_preprocessor (mean 0, std 255, bgr_to_rgb) on a letterboxed image
(YOLOv5KeepRatioResize + LetterResize, pad 114) is the recipe's `dataset.preprocess`: letterbox
pad 114, RGB, scale 1/255.
"""
from __future__ import annotations

import ast
import math
import re
from typing import Any

import torch
from torch import nn

from ...errors import UserError
from ..graph import decode_anchor_based
from . import FAMILIES
from .layers import MMYOLO_YOLOV5_SCALES

FAMILY = "mmyolo-yolov5"
LAYOUT = "v61"
HEAD_KEY = "bbox_head.head_module.convs_pred.0.weight"
STEM_KEY = "backbone.stem.conv.weight"
# buffers older mmyolo versions saved (mmyolo's publish_model.py drops them): not weights of this model
_DROPPED = re.compile(r"^data_preprocessor\.|priors_base_sizes|grid_offset|prior_inds")


def make_divisible(x: float, widen_factor: float = 1.0, divisor: int = 8) -> int:
    return math.ceil(x * widen_factor / divisor) * divisor


def make_round(x: float, deepen_factor: float = 1.0) -> int:
    return max(round(x * deepen_factor), 1) if x > 1 else int(x)


# --------------------------------------------------------------------------- bricks (mmcv / mmdet / mmyolo names)

class ConvModule(nn.Module):
    """mmcv ConvModule with norm_cfg BN and act_cfg SiLU: conv (no bias) -> bn -> activate."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.activate = nn.SiLU()

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.activate(self.conv(x))


class DarknetBottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, expansion: float = 1.0, add_identity: bool = True):
        super().__init__()
        hidden = int(c2 * expansion)
        self.conv1 = ConvModule(c1, hidden, 1)
        self.conv2 = ConvModule(hidden, c2, 3, 1, 1)
        self.add_identity = add_identity and c1 == c2

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    def __init__(self, c1: int, c2: int, expand_ratio: float = 0.5, num_blocks: int = 1, add_identity: bool = True):
        super().__init__()
        mid = int(c2 * expand_ratio)
        self.main_conv = ConvModule(c1, mid, 1)
        self.short_conv = ConvModule(c1, mid, 1)
        self.final_conv = ConvModule(2 * mid, c2, 1)
        self.blocks = nn.Sequential(*(DarknetBottleneck(mid, mid, 1.0, add_identity) for _ in range(num_blocks)))

    def forward(self, x):
        return self.final_conv(torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), 1))


class SPPFBottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, kernel_sizes: int = 5):
        super().__init__()
        mid = c1 // 2
        self.conv1 = ConvModule(c1, mid, 1)
        self.poolings = nn.MaxPool2d(kernel_size=kernel_sizes, stride=1, padding=kernel_sizes // 2)
        self.conv2 = ConvModule(mid * 4, c2, 1)

    def forward(self, x):
        x = self.conv1(x)
        y1 = self.poolings(x)
        y2 = self.poolings(y1)
        return self.conv2(torch.cat((x, y1, y2, self.poolings(y2)), 1))


# --------------------------------------------------------------------------- backbone, neck, head

# in, out, blocks, add_identity, use_spp (mmyolo YOLOv5CSPDarknet arch_settings['YOLOv5']['P5'])
_P5 = [[64, 128, 3, True, False], [128, 256, 6, True, False], [256, 512, 9, True, False], [512, 1024, 3, True, True]]


class YOLOv5CSPDarknet(nn.Module):
    def __init__(self, deepen_factor: float, widen_factor: float, out_indices=(2, 3, 4)):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.stem = ConvModule(3, make_divisible(64, widen_factor), 6, 2, 2)
        self.layers = ["stem"]
        for i, (c1, c2, n, add, spp) in enumerate(_P5):
            c1, c2 = make_divisible(c1, widen_factor), make_divisible(c2, widen_factor)
            stage = [ConvModule(c1, c2, 3, 2, 1), CSPLayer(c2, c2, num_blocks=make_round(n, deepen_factor),
                                                           add_identity=add)]
            if spp:
                stage.append(SPPFBottleneck(c2, c2, 5))
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
            self.layers.append(f"stage{i + 1}")

    def forward(self, x):
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


class YOLOv5PAFPN(nn.Module):
    def __init__(self, deepen_factor: float, widen_factor: float, in_channels=(256, 512, 1024),
                 num_csp_blocks: int = 3):
        super().__init__()
        ch = [make_divisible(c, widen_factor) for c in in_channels]
        n = make_round(num_csp_blocks, deepen_factor)
        last = len(ch) - 1
        self.in_channels = list(in_channels)
        self.reduce_layers = nn.ModuleList(
            ConvModule(ch[i], ch[i - 1], 1) if i == last else nn.Identity() for i in range(len(ch)))
        self.upsample_layers = nn.ModuleList()
        self.top_down_layers = nn.ModuleList()
        for idx in range(last, 0, -1):
            self.upsample_layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            csp = CSPLayer(make_divisible(in_channels[idx - 1] * 2, widen_factor), ch[idx - 1], num_blocks=n,
                           add_identity=False)
            if idx != 1:
                csp = nn.Sequential(csp, ConvModule(ch[idx - 1], ch[idx - 2], 1))
            self.top_down_layers.append(csp)
        self.downsample_layers = nn.ModuleList()
        self.bottom_up_layers = nn.ModuleList()
        for idx in range(last):
            self.downsample_layers.append(ConvModule(ch[idx], ch[idx], 3, 2, 1))
            self.bottom_up_layers.append(CSPLayer(make_divisible(in_channels[idx] * 2, widen_factor), ch[idx + 1],
                                                  num_blocks=n, add_identity=False))
        self.out_layers = nn.ModuleList(nn.Identity() for _ in ch)

    def forward(self, inputs):
        k = len(self.in_channels)
        reduce_outs = [self.reduce_layers[i](inputs[i]) for i in range(k)]
        inner_outs = [reduce_outs[-1]]
        for idx in range(k - 1, 0, -1):
            up = self.upsample_layers[k - 1 - idx](inner_outs[0])
            inner_outs.insert(0, self.top_down_layers[k - 1 - idx](torch.cat((up, reduce_outs[idx - 1]), 1)))
        outs = [inner_outs[0]]
        for idx in range(k - 1):
            down = self.downsample_layers[idx](outs[-1])
            outs.append(self.bottom_up_layers[idx](torch.cat((down, inner_outs[idx + 1]), 1)))
        return tuple(self.out_layers[i](outs[i]) for i in range(k))


class YOLOv5HeadModule(nn.Module):
    """mmyolo's YOLOv5HeadModule: one 1x1 `convs_pred` conv per level, na*(5+nc) channels.

    `forward` is upstream's: each map viewed as (bs, na, 5+nc, ny, nx) and split into
    (cls_scores, bbox_preds, objectnesses). The `mmyolo_truncate_head` patch swaps it for
    `forward_truncated`, the vacc flow's edit: the three conv maps as they are."""

    def __init__(self, num_classes: int, in_channels=(256, 512, 1024), widen_factor: float = 1.0,
                 num_base_priors: int = 3, featmap_strides=(8, 16, 32)):
        super().__init__()
        self.num_classes = num_classes
        self.featmap_strides = list(featmap_strides)
        self.num_out_attrib = 5 + num_classes
        self.num_levels = len(self.featmap_strides)
        self.num_base_priors = num_base_priors
        self.in_channels = [make_divisible(c, widen_factor) for c in in_channels]
        self.convs_pred = nn.ModuleList(nn.Conv2d(c, num_base_priors * self.num_out_attrib, 1)
                                        for c in self.in_channels)
        self.truncated = False

    def init_weights(self):
        """Upstream's bias prior: objectness ~ 8 objects per 640 image, class ~ 0.6 / nc."""
        with torch.no_grad():
            for mi, s in zip(self.convs_pred, self.featmap_strides):
                b = mi.bias.view(self.num_base_priors, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (self.num_classes - 0.999999))

    def forward(self, x):
        assert len(x) == self.num_levels
        cls_scores, bbox_preds, objectnesses = [], [], []
        for xi, conv in zip(x, self.convs_pred):
            c, b, o = self.forward_single(xi, conv)
            cls_scores.append(c)
            bbox_preds.append(b)
            objectnesses.append(o)
        return cls_scores, bbox_preds, objectnesses

    def forward_single(self, x, convs):
        pred_map = convs(x)
        bs, _, ny, nx = pred_map.shape
        pred_map = pred_map.view(bs, self.num_base_priors, self.num_out_attrib, ny, nx)
        cls_score = pred_map[:, :, 5:, ...].reshape(bs, -1, ny, nx)
        bbox_pred = pred_map[:, :, :4, ...].reshape(bs, -1, ny, nx)
        objectness = pred_map[:, :, 4:5, ...].reshape(bs, -1, ny, nx)
        return cls_score, bbox_pred, objectness

    def forward_truncated(self, x):
        """The vacc flow's head: the raw convs_pred outputs, one per level."""
        assert len(x) == self.num_levels
        return tuple(self.convs_pred[i](x[i]) for i in range(self.num_levels))


class YOLOv5Head(nn.Module):
    """mmyolo's YOLOv5Head as yolobuild's detect head: `layout`, `stride`, `anchors` (nl, na, 2) in grid
    units (a non-persistent buffer, like upstream's `priors_base_sizes`), `nl`, `na`, `nc`, and `m` (the
    per-level output convs, `head_module.convs_pred`)."""

    def __init__(self, head_module: YOLOv5HeadModule, anchors_px):
        super().__init__()
        self.head_module = head_module
        self.featmap_strides = list(head_module.featmap_strides)
        self.stride = torch.tensor(self.featmap_strides, dtype=torch.float32)
        a = torch.tensor(anchors_px, dtype=torch.float32).view(len(self.featmap_strides), -1, 2)
        if a.shape[1] != head_module.num_base_priors:
            raise ValueError(f"{a.shape[1]} anchors per level do not fit num_base_priors="
                             f"{head_module.num_base_priors}")
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1), persistent=False)
        self.layout = "decoded"

    @property
    def m(self) -> nn.ModuleList:
        return self.head_module.convs_pred

    @property
    def nl(self) -> int:
        return self.head_module.num_levels

    @property
    def na(self) -> int:
        return self.head_module.num_base_priors

    @property
    def nc(self) -> int:
        return self.head_module.num_classes

    @property
    def no(self) -> int:
        return self.head_module.num_out_attrib

    def _maps(self, outs) -> list[torch.Tensor]:
        """Per level (bs, na*no, ny, nx) maps from the head module's output, split or truncated."""
        if isinstance(outs[0], torch.Tensor):           # truncated: the conv outputs themselves
            return list(outs)
        maps = []
        for cls, box, obj in zip(*outs):                 # upstream: join (bbox, obj, cls) per prior again
            bs, _, ny, nx = cls.shape
            maps.append(torch.cat((box.view(bs, self.na, 4, ny, nx), obj.view(bs, self.na, 1, ny, nx),
                                   cls.view(bs, self.na, self.nc, ny, nx)), 2).view(bs, self.na * self.no, ny, nx))
        return maps

    def forward(self, feats):
        outs = self.head_module(feats)
        if self.training:
            return outs
        maps = self._maps(outs)
        if self.layout == "raw":
            return tuple(maps)
        return decode_anchor_based(maps, self.na, self.no, self.stride,
                                   [self.anchors[i] * self.stride[i] for i in range(self.nl)], self.layout)


class YOLODetector(nn.Module):
    """mmyolo's YOLODetector (backbone, neck, bbox_head), without the data_preprocessor: inputs are RGB / 255."""

    def __init__(self, scale: str = "s", nc: int = 80, anchors=None, layout: str = LAYOUT):
        super().__init__()
        if scale not in MMYOLO_YOLOV5_SCALES:
            raise ValueError(f"unknown mmyolo YOLOv5 scale {scale!r}; choose one of {sorted(MMYOLO_YOLOV5_SCALES)}")
        if layout != LAYOUT:
            raise ValueError(f"unknown mmyolo YOLOv5 layout {layout!r}; choose {LAYOUT}")
        spec = FAMILIES[0].layouts[layout]
        d, w = MMYOLO_YOLOV5_SCALES[scale]
        self.yaml = {"scale": scale, "nc": nc, "layout": layout}
        self.backbone = YOLOv5CSPDarknet(d, w)
        self.neck = YOLOv5PAFPN(d, w, (256, 512, 1024), num_csp_blocks=3)
        head_module = YOLOv5HeadModule(nc, (256, 512, 1024), w, 3, spec["strides"])
        head_module.init_weights()
        self.bbox_head = YOLOv5Head(head_module, anchors or spec["anchors"])
        self.names = [str(i) for i in range(nc)]

    @property
    def detect(self) -> YOLOv5Head:
        return self.bbox_head

    @property
    def stride(self) -> torch.Tensor:
        return self.bbox_head.stride

    def forward(self, x):
        return self.bbox_head(self.neck(self.backbone(x)))


def build(scale: str = "s", layout: str = LAYOUT, nc: int = 80, anchors=None) -> YOLODetector:
    """The family-table entry point (Family.module in models.mmyolo)."""
    return YOLODetector(scale=scale, nc=nc, anchors=anchors, layout=layout)


# --------------------------------------------------------------------------- the named patch

def truncate_head(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """The vacc flow's cut: YOLOv5HeadModule.forward returns the three raw convs_pred outputs (no split into
    cls / bbox / objectness). With an example input it verifies that what the head module returns
    is exactly what its convs_pred produced (nothing is computed after the convs)."""
    heads = [m for m in model.modules() if isinstance(m, YOLOv5HeadModule)]
    if not heads:
        raise UserError("graph.patches: mmyolo_truncate_head found no mmyolo YOLOv5HeadModule in the model "
                        f"(only {FAMILY} recipes have one; other families cut the head with graph.head=raw)")
    for h in heads:
        h.forward = h.forward_truncated
        h.truncated = True
    figures: dict[str, Any] = {"truncated": len(heads)}
    if example is not None:
        h = heads[0]
        convs: list[torch.Tensor] = []
        got: list[Any] = []
        hooks = [c.register_forward_hook(lambda _m, _i, out: convs.append(out)) for c in h.convs_pred]
        hooks.append(h.register_forward_hook(lambda _m, _i, out: got.append(out)))
        try:
            with torch.no_grad():
                model(example)
        finally:
            for k in hooks:
                k.remove()
        outs = got[0] if got else ()
        if len(outs) != len(convs) or not all(a is b for a, b in zip(outs, convs)):
            raise UserError("graph.patches: mmyolo_truncate_head: the head module still computes after its "
                            "convs_pred; the truncation did not take")
        figures["outputs"] = [list(t.shape) for t in outs]
    return figures


# --------------------------------------------------------------------------- mmengine checkpoints

def _scale_of(sd: dict) -> str | None:
    stem = sd.get(STEM_KEY)
    if stem is None or stem.ndim != 4:
        return None
    return next((s for s, (_, w) in MMYOLO_YOLOV5_SCALES.items() if make_divisible(64, w) == stem.shape[0]), None)


def head_nc(sd: dict, na: int = 3) -> int | None:
    w = sd.get(HEAD_KEY)
    if w is None or w.ndim != 4 or w.shape[0] % na:
        return None
    return int(w.shape[0] // na - 5)


def guess_arch(sd: dict) -> str:
    """'mmyolo-yolov5s (layout v61), nc=80' for an mmyolo YOLOv5 state_dict (ops.checkpoint._guess_arch)."""
    scale = _scale_of(sd) or ""
    nc = head_nc(sd)
    return f"{FAMILY}{scale} (layout {LAYOUT}){f', nc={nc}' if nc and nc > 0 else ''}"


def _literal(node: ast.AST) -> Any:
    """A config value: literals and dict(...) calls with literal arguments; anything else -> None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_cfg(text: str) -> dict:
    """Top-level assignments of an mmengine config dump (meta['cfg'], Config.pretty_text), read without
    running it: only literals and dict(...) calls are understood."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _literal(stmt.value)
    return out


def _dig(d: Any, *keys) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _pixels(base_sizes) -> list[list[float]] | None:
    try:
        return [[float(v) for pair in level for v in pair] for level in base_sizes]
    except (TypeError, ValueError):
        return None


def _other_family(sd: dict) -> dict:
    """What a state_dict that is not mmyolo's is, in family-table terms (for _check_family), or {}."""
    from ..upstream import guess_ultralytics_family

    return guess_ultralytics_family(sd)


def convert_state_dict(obj: Any, sd: dict, where: str) -> tuple[dict, dict]:
    """An mmengine checkpoint ({'meta', 'state_dict', 'message_hub', 'optimizer', ...}) or a bare mmyolo
    state_dict -> (state_dict in this model's key layout, file metadata).

    Metadata taken from the file where it carries it: class names and count (meta.dataset_meta.classes),
    and from the config dump (meta.cfg) the scale (deepen / widen factor), strides, anchors
    (prior_generator.base_sizes) and input size (img_scale, mmcv's (width, height)). The scale is also
    read from the stem conv's width. A checkpoint of another family returns that family, so the loader
    names both."""
    sd = {k: v for k, v in sd.items() if not _DROPPED.search(k)}
    if HEAD_KEY not in sd:
        mm_head = sorted(k for k in sd if k.startswith("bbox_head."))
        if mm_head:
            raise UserError(f"{where}: the checkpoint is an mmyolo / mmdet detector whose head is not mmyolo's "
                            f"YOLOv5HeadModule (no bbox_head.head_module.convs_pred; it has {mm_head[0]}), but "
                            f"the recipe says {FAMILY}; only mmyolo YOLOv5 checkpoints fit {FAMILY} recipes")
        return sd, _other_family(sd)
    if any(k.startswith("backbone.stage5.") for k in sd):
        raise UserError(f"{where}: the checkpoint is an mmyolo YOLOv5 P6 model (backbone.stage5, four levels); "
                        f"{FAMILY} builds the P5 layout {LAYOUT} only")
    extra: dict[str, Any] = {"family": FAMILY, "layout": LAYOUT}
    scale = _scale_of(sd)
    if scale:
        extra["scale"] = scale
    meta = obj.get("meta") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    cfg_text = meta.get("cfg", meta.get("config"))
    cfg = parse_cfg(cfg_text) if isinstance(cfg_text, str) else {}
    head_cfg = _dig(cfg, "model", "bbox_head") or {}
    head_type = head_cfg.get("type") if isinstance(head_cfg, dict) else None
    if isinstance(head_type, str) and head_type.rsplit(".", 1)[-1] != "YOLOv5Head":
        raise UserError(f"{where}: the checkpoint's config builds a {head_type} head, not mmyolo's YOLOv5Head; "
                        f"the recipe says {FAMILY}")
    na = 3
    anchors = _pixels(_dig(head_cfg, "prior_generator", "base_sizes") or cfg.get("anchors") or ())
    if anchors:
        na = len(anchors[0]) // 2
        extra["anchors"] = anchors
    strides = _dig(head_cfg, "head_module", "featmap_strides") or cfg.get("strides")
    if strides is not None:
        try:
            strides = [int(s) for s in strides]
        except (TypeError, ValueError):
            strides = None
    if strides and strides != FAMILIES[0].layouts[LAYOUT]["strides"]:
        raise UserError(f"{where}: the checkpoint's head has strides {strides}; {FAMILY} layout {LAYOUT} has "
                        f"{FAMILIES[0].layouts[LAYOUT]['strides']}")
    if strides:
        extra["strides"] = strides
    bb = _dig(cfg, "model", "backbone") or {}
    factors = (bb.get("deepen_factor"), bb.get("widen_factor")) if isinstance(bb, dict) else (None, None)
    cfg_scale = next((s for s, f in MMYOLO_YOLOV5_SCALES.items() if f == factors), None)
    if cfg_scale and scale and cfg_scale != scale:
        raise UserError(f"{where}: the checkpoint's config says deepen/widen {factors} ({FAMILY}{cfg_scale}) but "
                        f"its stem conv is {FAMILY}{scale}'s; the file is inconsistent")
    size = cfg.get("img_scale")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        extra["input_size"] = [int(size[1]), int(size[0])]          # mmcv scale (w, h) -> [height, width]
    nc = head_nc(sd, na)
    classes = _dig(meta, "dataset_meta", "classes")
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
            raise UserError(f"{where}: meta.dataset_meta.classes is not a list of class names")
        classes = list(classes)
        if nc is not None and len(classes) != nc:
            raise UserError(f"{where}: class count mismatch: meta.dataset_meta.classes names {len(classes)} "
                            f"classes but the head (bbox_head.head_module.convs_pred) predicts nc={nc}")
        extra["nc"], extra["names"] = len(classes), classes
    return sd, extra


def guess_state_dict(sd: dict) -> str | None:
    """ops.checkpoint hook: guess_arch for a state_dict in mmyolo's (mmengine's) key layout, else None."""
    return guess_arch(sd) if HEAD_KEY in sd else None


def state_dict_nc(sd: dict) -> int | None:
    """ops.checkpoint hook: the class count of mmyolo's head (convs_pred), else None."""
    nc = head_nc(sd) if HEAD_KEY in sd else None
    return nc if nc and nc > 0 else None
