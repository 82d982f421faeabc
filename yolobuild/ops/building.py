"""Building a yolobuild model from checkpoint metadata: anchors, the family's module, `model.pt` files.

`model.pt` is always a yolobuild checkpoint (fp32), whatever the source was; `patched.pt` is the
same plus the graph settings, and `load_patched` turns it back into an eval-mode module with
fuse, patches and head layout applied.
"""
from __future__ import annotations


import torch
from torch import nn

from ..errors import UserError
from ..models import registry
from ..models.family import ANCHOR_FREE
from ..models.yolov5.layers import DEFAULT_ANCHORS
from .checkpoint import CHECKPOINT_FORMAT, _fp32, load_checkpoint_file, load_into
from .patches import _as_syncbn, apply_graph_settings

# --------------------------------------------------------------------------- metadata helpers

def normalize_anchors(anchors, default=None) -> list[list[float]] | None:
    """Recipe / checkpoint anchors (lists of 2*na, or lists of [w, h] pairs) -> per-level lists of pixel floats."""
    if anchors is None:
        anchors = DEFAULT_ANCHORS if default is None else default
    if anchors is None:
        return None
    out = []
    for level in anchors:
        flat = []
        for v in level:
            flat.extend(float(x) for x in v) if isinstance(v, (list, tuple)) else flat.append(float(v))
        out.append(flat)
    return out


def anchors_px_pairs(anchors: list[list[float]] | None) -> list[list[list[float]]] | None:
    if anchors is None:
        return None
    return [[[level[2 * j], level[2 * j + 1]] for j in range(len(level) // 2)] for level in anchors]


def family_module(family: str):
    """The torch module that builds a family (Family.module) and holds its hooks."""
    import importlib

    return importlib.import_module(family_of(family).module)


def family_of(family: str):
    """The family's declaration (models.registry), or a UserError naming the known ones."""
    fam = registry.find(family)
    if fam is None:
        raise UserError(f"model.family: {family!r} is not supported; allowed: {', '.join(registry.families())}")
    return fam


def is_anchor_free(meta: dict) -> bool:
    return family_of(meta.get("family", "yolov5")).head == ANCHOR_FREE


def _model_anchors_px(model: nn.Module) -> list[list[float]] | None:
    d = model.detect
    if getattr(d, "anchors", None) is None or not isinstance(d.anchors, torch.Tensor):
        return None
    px = (d.anchors.double() * d.stride.double().view(-1, 1, 1)).view(d.nl, -1)
    return [[round(float(v), 4) for v in row] for row in px]


def _what(meta: dict) -> str:
    return family_of(meta.get("family", "yolov5")).describe(meta.get("scale"), meta.get("layout"))


def build_from_meta(meta: dict) -> nn.Module:
    """A fresh model from checkpoint metadata (family, scale, layout, nc, anchors in pixels)."""
    family = meta.get("family", "yolov5")
    mod = family_module(family)
    layouts = family_of(family).layouts
    if meta.get("layout") not in layouts:
        raise UserError(f"model.layout: {meta.get('layout')!r} is not a {family} layout; allowed: {', '.join(layouts)}")
    anchors = meta.get("anchors")
    if anchors is None and meta.get("anchors_px") is not None:
        anchors = meta["anchors_px"]
    if is_anchor_free(meta):
        anchors = None
    else:
        anchors = normalize_anchors(anchors, layouts[meta["layout"]]["anchors"])
    extra = {"cfg": meta["cfg"]} if meta.get("cfg") else {}     # a user's Darknet cfg (model.cfg)
    if meta.get("multiples"):                                    # an ultralytics yaml's own depth / width
        extra["multiples"] = meta["multiples"]
    extra.update(meta.get("arch_options") or {})                 # what the checkpoint's own modules say
    model = mod.build(meta.get("scale"), meta["layout"], int(meta["nc"]), anchors, **extra)
    if meta.get("syncbn"):          # the file held SyncBatchNorm: keep it so that syncbn_to_bn converts it
        _as_syncbn(model, meta["syncbn"])
    return model


def _set_anchors_px(model: nn.Module, anchors: list[list[float]] | None) -> None:
    d = model.detect
    if anchors is None or getattr(d, "anchors", None) is None:
        return
    t = torch.tensor(anchors, dtype=torch.float32)
    if t.numel() != d.anchors.numel() or t.shape[0] != d.nl:
        raise UserError(f"model.anchors: {len(anchors)} levels of {t.shape[-1] // 2} anchors do not fit the head "
                        f"({d.nl} levels of {d.na})")
    d.anchors.copy_(t.view(d.nl, -1, 2) / d.stride.view(-1, 1, 1))


def checkpoint_dict(model: nn.Module, meta: dict) -> dict:
    """The yolobuild checkpoint written as model.pt (fp32 state_dict, plain types only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "family": meta["family"],
        "scale": meta["scale"],
        "layout": meta["layout"],
        "nc": int(meta["nc"]),
        "names": list(meta["names"]),
        "anchors": _model_anchors_px(model),
        "strides": [int(s) for s in model.detect.stride.tolist()],
        "input_size": meta.get("input_size"),
        **({"syncbn": meta["syncbn"]} if meta.get("syncbn") else {}),
        **({"cfg": meta["cfg"]} if meta.get("cfg") else {}),
        **({"multiples": list(meta["multiples"])} if meta.get("multiples") else {}),
        **({"arch_options": dict(meta["arch_options"])} if meta.get("arch_options") else {}),
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
    }


def _decode_info(family: str) -> dict:
    return family_of(family).decode_info()


def meta_json(ckpt: dict, random: bool, source: str, parameters: int) -> dict:
    return {
        "family": ckpt["family"], "scale": ckpt["scale"], "layout": ckpt["layout"],
        "nc": ckpt["nc"], "names": list(ckpt["names"]),
        "anchors_px": anchors_px_pairs(ckpt["anchors"]),
        "strides": list(ckpt["strides"]), **_decode_info(ckpt["family"]),
        "input_size": ckpt.get("input_size"),
        "random": bool(random), "source": source, "parameters": int(parameters),
    }


def host_meta(ckpt: dict) -> dict:
    """What runtime.decode needs, from a checkpoint dict."""
    return {"nc": ckpt["nc"], "anchors_px": anchors_px_pairs(ckpt["anchors"]), "strides": list(ckpt["strides"]),
            **_decode_info(ckpt.get("family", "yolov5"))}


def load_checkpoint(path) -> tuple[dict, nn.Module]:
    """A yolobuild checkpoint written by load_model / patch -> (dict, eval-mode model, decoded layout)."""
    ckpt = load_checkpoint_file(path, key="model")
    if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT):
        raise UserError(f"model: {path}: not a {CHECKPOINT_FORMAT} file")
    model = build_from_meta(ckpt)
    load_into(model, _fp32(ckpt["state_dict"]), f"model: {path}", _what(ckpt))
    model.eval()
    model.detect.layout = "decoded"
    return ckpt, model


def load_patched(path, verify: bool = False, example: torch.Tensor | None = None) -> nn.Module:
    """patched.pt -> eval-mode module with fuse, patches and head layout applied."""
    ckpt = load_checkpoint_file(path, key="model")
    if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT and "head" in ckpt):
        raise UserError(f"model: {path}: not a patched yolobuild checkpoint")
    model = build_from_meta(ckpt)
    load_into(model, _fp32(ckpt["state_dict"]), f"model: {path}", _what(ckpt))
    if example is None and verify:
        example = example_input(ckpt)
    model.patch_figures = apply_graph_settings(model, ckpt["head"], ckpt.get("patches") or (),
                                               bool(ckpt.get("fuse")), example, verify)
    return model


def example_input(ckpt: dict, batch: int = 1) -> torch.Tensor:
    """The deterministic probe input of the patch check: rand(batch, 3, H, W) after manual_seed(0)."""
    h, w = ckpt.get("height") or 320, ckpt.get("width") or 320
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, int(h), int(w), generator=g)
