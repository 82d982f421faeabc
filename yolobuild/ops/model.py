"""Model ops: load weights into yolobuild's YOLOv5 (`load_model`), then patch it for a target (`patch`).

Every weight file is read with `torch.load(weights_only=True)`: no code from a checkpoint
ever runs. `model.pt` is always a yolobuild checkpoint (fp32), whatever the source was;
`patched.pt` is the same plus the graph settings, and `load_patched` turns it back into
an eval-mode module with fuse, patches and head layout applied.
"""
from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckFailed, UserError
from ..models import arch
from ..models.arch import ANCHOR_FREE, DEFAULT_ANCHORS, YOLOV5_SCALES
from ..models.yolov5 import DetectionModel, make_divisible
from . import OpContext

CHECKPOINT_FORMAT = "yolobuild-checkpoint/1"
FAMILIES = tuple(arch.FAMILIES)
HEADS = ("raw", "split", "decoded")

# keys a real upstream state_dict may carry that this model derives itself
_IGNORED_UNEXPECTED = re.compile(r"(^|\.)anchor_grid$")
_IGNORED_MISSING = re.compile(r"(^|\.)num_batches_tracked$")


# --------------------------------------------------------------------------- reading weight files

def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"))


def _sniff(path: Path) -> str | None:
    """What a file is when it plainly is not a torch checkpoint (zip) or pickle; None otherwise."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starts with {first!r})"
    return None


def _trust_hint() -> str:
    return ("set model.trust_checkpoint=true if you trust this file, or model.source.repo=PATH to import your own "
            "fork's code for custom layers")


def load_full_pickle(path, where: str, trust: bool = False, source_repo=None) -> Any:
    """A full-pickle checkpoint through yolobuild's restricted unpickler (models.safe_pickle)."""
    from ..models.safe_pickle import RefusedGlobal, SourceRepoError, restricted_load

    repo = None
    if source_repo:
        repo = Path(source_repo).expanduser()
        if not repo.is_dir():
            raise UserError(f"model.source.repo: {source_repo}: no such folder")
    try:
        return restricted_load(path, allow_unknown=trust, source_repo=repo)
    except RefusedGlobal as exc:
        raise UserError(f"{where}: refused a full pickle referencing {exc.name}: not a known model class, and "
                        f"loading it could run code from the file; save model.state_dict() instead, or "
                        f"{_trust_hint()}") from None
    except SourceRepoError as exc:
        raise UserError(str(exc)) from None
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{where}: cannot import what the checkpoint references ({exc.__class__.__name__}: "
                        f"{_first_line(str(exc), 120)})") from None
    except pickle.UnpicklingError as exc:
        raise UserError(f"{where}: not a PyTorch checkpoint (unpickler: {_first_line(str(exc), 120)})") from None


def load_checkpoint_file(path, key: str = "model.weights", full_pickle: dict | None = None) -> Any:
    """torch.load(weights_only=True) with every failure turned into one-line UserError.

    With `full_pickle` (a dict of load_full_pickle keyword arguments) a file that the weights-only
    unpickler refuses is read again through the restricted unpickler."""
    path = Path(path)
    where = f"{key}: {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: the file is empty")
    kind = _sniff(path)
    if kind:
        raise UserError(f"{where}: not a checkpoint: {kind}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if full_pickle is not None:       # anything the weights-only unpickler refuses: the restricted one decides
            return load_full_pickle(path, where, **full_pickle)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if m:
            raise UserError(f"{where} is a full pickle referencing {m.group(1)}; such files run code when loaded "
                            "and are not supported yet: save model.state_dict() instead "
                            "(torch.save(model.state_dict(), 'weights.pt'))") from None
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", msg)
        detail = m.group(1).strip() if m else _first_line(msg)
        raise UserError(f"{where}: not a PyTorch checkpoint (weights-only unpickler: {detail})") from None
    except RuntimeError as exc:
        msg = str(exc)
        if "Unsupported global" in msg and full_pickle is not None:
            return load_full_pickle(path, where, **full_pickle)
        if "zip archive" in msg or "central directory" in msg or "PytorchStreamReader" in msg or "corrupt" in msg:
            raise UserError(f"{where}: truncated or corrupt checkpoint ({_first_line(msg.split('.')[0])})") from None
        raise UserError(f"{where}: cannot be loaded ({_first_line(msg)})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{where}: truncated or corrupt checkpoint ({exc.__class__.__name__})") from None
    except (KeyError, ValueError, UnicodeDecodeError, IndexError, TypeError, AttributeError) as exc:
        raise UserError(f"{where}: not a PyTorch checkpoint ({exc.__class__.__name__}: "
                        f"{_first_line(str(exc), 60)})") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot be read ({exc.__class__.__name__}: {_first_line(str(exc), 80)})") from None


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()))


def classify(obj: Any, where: str) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """-> (source, metadata, state_dict) for a loaded file; UserError when it is not a checkpoint."""
    if isinstance(obj, dict) and "format" in obj:
        fmt = obj.get("format")
        if fmt != CHECKPOINT_FORMAT:
            raise UserError(f"{where}: checkpoint format {fmt!r} is not supported; allowed: {CHECKPOINT_FORMAT}")
        sd = obj.get("state_dict")
        if not _is_state_dict(sd):
            raise UserError(f"{where}: {CHECKPOINT_FORMAT} file without a state_dict of tensors")
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return "yolobuild-checkpoint", meta, sd
    if _is_state_dict(obj):
        return "state_dict", {}, obj
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "ema"):
            if _is_state_dict(obj.get(k)):
                return "state_dict", {}, obj[k]
        keys = ", ".join(map(repr, list(obj)[:5]))
        raise UserError(f"{where}: not a checkpoint: a dict with keys {keys or '(none)'} and no state_dict of tensors "
                        "(expected a yolobuild checkpoint, a state_dict, or a dict with a 'state_dict' or 'model' key)")
    raise UserError(f"{where}: not a checkpoint: holds a {type(obj).__name__}, expected a state_dict (dict of tensors)")


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a DataParallel 'module.' prefix when every key carries it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _fp32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous() for k, v in sd.items()}


def _file_nc(sd: dict[str, torch.Tensor]) -> int | None:
    """The class count a yolov5 / yolov8 style state_dict's head was trained for, when it can be read."""
    v8 = sorted(k for k in sd if re.fullmatch(r"model\.\d+\.cv3\.0\.2\.weight", k))
    if v8:
        return int(sd[v8[-1]].shape[0])
    m = re.search(r"nc=(\d+)", _guess_arch(sd, nc_only=True))
    return int(m.group(1)) if m else None


def _guess_arch(sd: dict[str, torch.Tensor], nc_only: bool = False) -> str:
    """A hint at what a mismatching state_dict is ('yolov5s (layout v6), nc=80'), or ''."""
    parts = []
    if "bbox_head.head_module.convs_pred.0.weight" in sd:    # mmyolo (mmengine) key layout
        from ..models.mmyolo import guess_arch as _mmyolo_guess

        return _mmyolo_guess(sd)
    if not nc_only and any(k.endswith(".dfl.conv.weight") for k in sd):
        stem = sd.get("model.0.conv.weight")
        scale = next((s for s, (_, w, mc) in arch.YOLOV8_SCALES.items()
                      if stem is not None and make_divisible(min(64, mc) * w, 8) == stem.shape[0]), "")
        nc = _file_nc(sd)
        return f"yolov8{scale} (anchor-free){f', nc={nc}' if nc else ''}"
    for family in ([] if nc_only else arch.FAMILIES):   # families that recognise their own key layout
        try:
            guess = getattr(family_module(family), "guess_state_dict", None)
        except ImportError:                             # a hint only: a family that cannot load gives none
            guess = None
        name = guess(sd) if guess is not None else None
        if name:
            parts.append(name)
            break
    stem = sd.get("model.0.conv.weight")
    layout = "v6"
    if stem is None and "model.0.conv.conv.weight" in sd:
        stem, layout = sd["model.0.conv.conv.weight"], "v5"
    if stem is not None and stem.ndim == 4:
        for scale, (_, w) in YOLOV5_SCALES.items():
            if make_divisible(64 * w, 8) == stem.shape[0]:
                parts.append(f"yolov5{scale} (layout {layout})")
                break
    heads = sorted(k for k in sd if re.fullmatch(r"(model\.\d+|detect)\.m\.0\.weight", k) and sd[k].ndim == 4
                   and sd[k].shape[2:] == (1, 1))
    if heads:
        head = heads[-1]
        anchors = sd.get(head.rsplit(".m.0.", 1)[0] + ".anchors")
        na = anchors.shape[1] if anchors is not None and anchors.ndim == 3 else 3
        c = sd[head].shape[0]
        if c % na == 0 and c // na > 5:
            parts.append(f"nc={c // na - 5}")
    return ", ".join(parts)


def _shape(t) -> str:
    return "[" + ",".join(str(int(s)) for s in t.shape) + "]"


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], where: str, what: str, nc: int | None = None,
              anchor_free: bool = False) -> None:
    """Strict load with a one-line UserError naming the first missing / unexpected / mismatched keys."""
    own = model.state_dict()
    count = ""
    if nc is not None:
        file_nc = _file_nc(sd)
        if file_nc is not None and file_nc != nc:
            count = (f"class count mismatch: the checkpoint's head has nc={file_nc}, the recipe says nc={nc} "
                     f"(set model.nc={file_nc} and model.names); ")
    missing = [k for k in own if k not in sd and not _IGNORED_MISSING.search(k)]
    unexpected = [k for k in sd if k not in own and not _IGNORED_UNEXPECTED.search(k)]
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): " + ", ".join(
                f"{k} file {_shape(sd[k])} vs model {_shape(own[k])}" for k in mismatched[:3]))
        if missing:
            parts.append(f"{len(missing)} missing key(s): " + ", ".join(f"{k} {_shape(own[k])}" for k in missing[:3]))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(
                f"{k} {_shape(sd[k])}" for k in unexpected[:3]))
        guess = _guess_arch(sd)
        hint = f"; the file looks like {guess}" if guess else ""
        raise UserError(f"{where}: state_dict does not fit {what}: {count}{'; '.join(parts)}{hint}")
    filled = {k: (sd[k] if k in sd else own[k]) for k in own}
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in filled.items()}, strict=True)


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
    """The module that builds a family (models.arch.FAMILIES[family]['module'])."""
    import importlib

    if family not in arch.FAMILIES:
        raise UserError(f"model.family: {family!r} is not supported; allowed: {', '.join(FAMILIES)}")
    return importlib.import_module(arch.FAMILIES[family]["module"])


def is_anchor_free(meta: dict) -> bool:
    return arch.FAMILIES[meta.get("family", "yolov5")]["head"] == ANCHOR_FREE


def _model_anchors_px(model: nn.Module) -> list[list[float]] | None:
    d = model.detect
    if getattr(d, "anchors", None) is None or not isinstance(d.anchors, torch.Tensor):
        return None
    px = (d.anchors.double() * d.stride.double().view(-1, 1, 1)).view(d.nl, -1)
    return [[round(float(v), 4) for v in row] for row in px]


def _what(meta: dict) -> str:
    return arch.describe(meta.get("family", "yolov5"), meta.get("scale"), meta.get("layout"))


def build_from_meta(meta: dict) -> nn.Module:
    """A fresh model from checkpoint metadata (family, scale, layout, nc, anchors in pixels)."""
    family = meta.get("family", "yolov5")
    mod = family_module(family)
    layouts = arch.FAMILIES[family]["layouts"]
    if meta.get("layout") not in layouts:
        raise UserError(f"model.layout: {meta.get('layout')!r} is not a {family} layout; allowed: {', '.join(layouts)}")
    anchors = meta.get("anchors")
    if anchors is None and meta.get("anchors_px") is not None:
        anchors = meta["anchors_px"]
    if is_anchor_free(meta):
        anchors = None
    else:
        anchors = normalize_anchors(anchors, layouts[meta["layout"]]["anchors"])
    model = mod.build(meta.get("scale"), meta["layout"], int(meta["nc"]), anchors)
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
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
    }


def _decode_info(family: str) -> dict:
    spec = arch.FAMILIES[family]
    return {"head_kind": spec["head"], "decode": spec["decode"]}


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


# --------------------------------------------------------------------------- load_model

def _names(names, nc: int) -> list[str]:
    if names and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def read_weights(path, family: str, layout: str, trust: bool = False, source_repo=None) -> tuple[str, dict, dict]:
    """Any weight file a user has -> (source, file metadata, fp32 state_dict in yolobuild's key layout).

    Plain state_dicts, yolobuild checkpoints, upstream full pickles (restricted unpickler) and,
    where the family module provides `read_foreign`, formats of its own (Darknet .weights,
    mmengine .pth)."""
    where = f"model.weights: {path}"
    mod = family_module(family)
    foreign = getattr(mod, "read_foreign", None)
    if foreign is not None:
        got = foreign(Path(path), layout, where)
        if got is not None:
            return got
    if Path(path).suffix.lower() == ".weights":
        raise UserError(f"{where}: a Darknet .weights file is a yolov3 model but the recipe says "
                        f"{arch.describe(family, None, layout)}; pick recipe=yolov3 or recipe=yolov3-tiny")
    obj = load_checkpoint_file(path, full_pickle={"trust": trust, "source_repo": source_repo})
    from ..models.safe_pickle import Stub
    from ..models.upstream import describe_upstream, pick_model

    if pick_model(obj) is not None:
        file_meta, sd = describe_upstream(obj, where)
        return f"upstream:{file_meta.pop('upstream')}", file_meta, _fp32(_strip_prefix(sd))
    if isinstance(obj, Stub):
        raise UserError(f"{where}: a full pickle without a model")
    convert = getattr(mod, "convert_state_dict", None)
    source, file_meta, sd = classify(obj, where)
    sd = _fp32(_strip_prefix(sd))
    if convert is not None and source != "yolobuild-checkpoint":
        sd, extra = convert(obj, sd, where)
        file_meta = {**extra, **file_meta}
    return source, file_meta, sd


def _check_family(file_meta: dict, meta: dict, where: str) -> None:
    if "family" in file_meta and file_meta["family"] != meta["family"]:
        raise UserError(f"{where}: the checkpoint is a {_what(file_meta)} model but the recipe says "
                        f"{_what(meta)}; pick a {file_meta['family']} recipe (model.family={file_meta['family']})")
    for key in ("scale", "layout"):
        if file_meta.get(key) is not None and file_meta[key] != meta[key]:
            raise UserError(f"{where}: the checkpoint is {_what(file_meta)} but the recipe says {_what(meta)}; "
                            f"set model.{key}={file_meta[key]}")


def load_model(ctx: OpContext) -> None:
    p = ctx.params
    family = p["family"]
    family_module(family)
    layouts = arch.FAMILIES[family]["layouts"]
    if p["layout"] not in layouts:
        raise UserError(f"model.layout: {p['layout']!r} is not a {family} layout; allowed: {', '.join(layouts)}")
    free = arch.FAMILIES[family]["head"] == ANCHOR_FREE
    meta = {"family": family, "scale": p["scale"], "layout": p["layout"], "nc": int(p["nc"]),
            "names": p.get("names"), "input_size": None,
            "anchors": None if free else normalize_anchors(p.get("anchors"), layouts[p["layout"]]["anchors"])}
    weights = ctx.inputs.get("weights")
    overrides: dict[str, Any] = {}
    torch.manual_seed(int(p.get("seed", 0)))

    if p.get("random") or weights is None:
        source, file_meta, sd = "random", {}, None
    else:
        where = f"model.weights: {weights}"
        source, file_meta, sd = read_weights(weights, family, p["layout"], bool(p.get("trust_checkpoint")),
                                             p.get("source_repo"))
        _check_family(file_meta, meta, where)
        if "nc" in file_meta and int(file_meta["nc"]) != meta["nc"]:
            overrides["nc"] = [meta["nc"], int(file_meta["nc"])]
            meta["nc"] = int(file_meta["nc"])
        if file_meta.get("names"):
            if meta["names"] and list(meta["names"]) != list(file_meta["names"]):
                overrides["names"] = [list(meta["names"]), list(file_meta["names"])]
            meta["names"] = list(file_meta["names"])
        if file_meta.get("anchors") is not None and not free:
            a = normalize_anchors(file_meta["anchors"])
            if p.get("anchors") is not None and a != meta["anchors"]:
                overrides["anchors"] = "checkpoint"
            meta["anchors"] = a
        if file_meta.get("input_size") is not None:
            meta["input_size"] = [int(v) for v in file_meta["input_size"]]
        if file_meta.get("syncbn"):
            meta["syncbn"] = file_meta["syncbn"]
    if meta["names"] and len(meta["names"]) != meta["nc"] and "names" not in overrides:
        ctx.log(f"load_model: {len(meta['names'])} names for nc={meta['nc']}; using '0'..'{meta['nc'] - 1}'")
    meta["names"] = _names(meta["names"], meta["nc"])

    try:
        model = build_from_meta(meta)
    except ValueError as exc:
        raise UserError(f"model: {exc}") from None
    if sd is not None:
        what = f"{_what(meta)[:-1]}, nc={meta['nc']})"
        load_into(model, sd, f"model.weights: {weights}", what, nc=meta["nc"], anchor_free=free)
        if source == "yolobuild-checkpoint" or file_meta.get("anchors") is not None:
            _set_anchors_px(model, meta["anchors"])   # the file's metadata is what the model was trained with
        elif p.get("anchors") is not None and not free and _model_anchors_px(model) != [
                [round(v, 4) for v in lv] for lv in meta["anchors"]]:
            overrides["anchors"] = "state_dict"      # the anchors buffer in the file wins over the recipe
    for k, v in overrides.items():
        ctx.log(f"load_model: the checkpoint's {k} wins over the recipe's ({v})")
    model.eval()

    ckpt = checkpoint_dict(model, meta)
    n_params = sum(t.numel() for t in model.parameters())
    out = ctx.outputs["model.pt"]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    info = meta_json(ckpt, random=source == "random", source=source, parameters=n_params)
    ctx.outputs["model.json"].write_text(json.dumps(info, indent=2) + "\n")
    ctx.results.update({"source": source, "nc": ckpt["nc"], "scale": ckpt["scale"], "layout": ckpt["layout"],
                        "parameters": n_params})
    if overrides:
        ctx.results["checkpoint_overrides"] = sorted(overrides)


# --------------------------------------------------------------------------- fuse and patches

def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias equal to conv followed by bn in eval mode (folded in float64)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    k = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    with torch.no_grad():
        fused.weight.copy_((w * k.view(-1, 1, 1, 1)).float())
        fused.bias.copy_(((b - bn.running_mean.detach().double()) * k + beta).float())
    return fused.requires_grad_(False)


def fuse(model: nn.Module) -> int:
    """Fold every conv block's BatchNorm into its conv; returns how many were fused.

    A conv block is any module with a `conv` (Conv2d), a `bn` (BatchNorm) and a `forward_fuse`
    method (yolov5's Conv, and each family's own blocks that follow the same convention)."""
    n = 0
    for m in model.modules():
        if (isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
                and callable(getattr(m, "forward_fuse", None))):
            m.conv = fuse_conv_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
            n += 1
    return n


class SigmoidMul(nn.Module):
    """SiLU written as x * sigmoid(x), for runtimes without a SiLU / Swish kernel."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def silu_as_sigmoid_mul(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, SigmoidMul())
                n += 1
    if n == 0:
        raise UserError("graph.patches: silu_as_sigmoid_mul found no nn.SiLU in the model")
    return {"replaced": n}


# ops that write into a tensor in place (scatter-like after export: ScatterND / Scatter / Where chains)
_INPLACE_WRITES = {"aten::copy_", "aten::index_put_", "aten::index_put", "aten::slice_scatter",
                   "aten::select_scatter", "aten::masked_scatter_", "aten::masked_fill_", "aten::index_fill_",
                   "aten::scatter_", "aten::fill_", "aten::zero_"}
_VIEW_KINDS = {"aten::slice", "aten::select", "aten::narrow", "aten::view", "aten::reshape", "aten::unsqueeze",
               "aten::expand", "aten::as_strided", "aten::index", "aten::permute", "aten::transpose"}


def _trace(model: nn.Module, example: torch.Tensor):
    from . import TORCH_EXPORT_LOCK

    with TORCH_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(model, example, check_trace=False, strict=False)


def verify_no_inplace_slice(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Verify: tracing the model records no in-place write into a tensor slice (no ScatterND on export)."""
    if example is None:
        raise ValueError("no_inplace_slice needs an example input to trace")
    graph = _trace(model, example).inlined_graph
    bad = []
    nodes = 0
    for node in graph.nodes():
        nodes += 1
        kind = node.kind()
        if kind in _INPLACE_WRITES:
            bad.append(kind)
        elif kind.startswith("aten::") and kind.endswith("_") and not kind.endswith("__"):
            inputs = list(node.inputs())
            if inputs and inputs[0].node().kind() in _VIEW_KINDS:
                bad.append(f"{kind} on {inputs[0].node().kind()}")
    if bad:
        raise CheckFailed(f"graph.patches: no_inplace_slice: the traced model writes into tensor slices in place "
                          f"({len(bad)} node(s), first {', '.join(sorted(set(bad))[:3])}); export would emit ScatterND")
    return {"traced_nodes": nodes}


def _onnx_export_bytes(model: nn.Module, example: torch.Tensor, opset: int = 13) -> bytes:
    import io

    from . import TORCH_EXPORT_LOCK

    buf = io.BytesIO()
    with TORCH_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(model, example, buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                              input_names=["images"])
    return buf.getvalue()


def verify_anchors_as_constants(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """Verify: the exported graph holds each level's anchor grid as a constant, never reads anchors at run time."""
    if example is None:
        raise ValueError("anchors_as_constants needs an example input to export")
    import onnx
    from onnx import numpy_helper

    detect = model.detect
    if getattr(detect, "anchors", None) is None or not isinstance(detect.anchors, torch.Tensor):
        return {"anchors": "none (anchor-free head: cell centres are constants of the graph)"}
    if detect.layout == "raw":
        return {"anchors": "host (raw head: anchors are applied by the host decode)"}
    proto = onnx.load_from_string(_onnx_export_bytes(model, example))
    g = proto.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    anchors_grid = detect.anchors.detach().numpy().astype(np.float64)          # (nl, na, 2), grid units
    anchors_px = anchors_grid * detect.stride.numpy().reshape(-1, 1, 1)

    def holds(arr: np.ndarray, target: np.ndarray) -> bool:
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != 2 or a.size < target.size:
            return False
        rows = np.unique(a.reshape(-1, 2), axis=0)
        return len(rows) == len(target) and np.allclose(np.sort(rows, 0), np.sort(target, 0), rtol=1e-5, atol=1e-4)

    # anchors read at run time: a runtime node consumes a tensor holding all levels' anchors (the buffer)
    runtime_reads = []
    for node in g.node:
        for name in node.input:
            arr = consts.get(name)
            if arr is None:
                continue
            if "anchors" in name or (arr.shape == anchors_grid.shape and np.allclose(arr, anchors_grid, atol=1e-6)):
                runtime_reads.append(f"{node.op_type}({name})")
    if runtime_reads:
        raise CheckFailed(f"graph.patches: anchors_as_constants: the exported graph reads the anchors buffer at run "
                          f"time ({', '.join(runtime_reads[:3])}); compute anchor_grid from constants at trace time")
    missing = [i for i in range(detect.nl) if not any(holds(a, anchors_px[i]) for a in consts.values())]
    if missing:
        raise CheckFailed(f"graph.patches: anchors_as_constants: no constant anchor grid for level(s) "
                          f"{', '.join(map(str, missing))} in the exported graph")
    return {"anchor_grid_constants": detect.nl}


def _replace_children(model: nn.Module, match: Callable[[nn.Module], bool],
                      make: Callable[[nn.Module], nn.Module]) -> int:
    """Swap every child module for which `match` holds by `make(child)`, keeping the sequential
    graph's bookkeeping attributes (i, f, type, np); returns how many were swapped."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                new = make(child)
                for attr in ("i", "f", "type", "np"):
                    if hasattr(child, attr):
                        setattr(new, attr, getattr(child, attr))
                setattr(parent, name, new)
                n += 1
    return n


class StridedStem(nn.Module):
    """What Focus becomes: one Conv block whose conv reads the image directly at stride 2."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def _focus_to_strided(focus: nn.Module) -> nn.Module:
    """Focus = conv(k, s, p) over cat(x[::2, ::2], x[1::2, ::2], x[::2, 1::2], x[1::2, 1::2]); the same
    as a conv of kernel 2k, stride 2s, padding 2p on x whose tap (2ky+dy, 2kx+dx) is block (dy, dx)'s (ky, kx)."""
    block = copy.deepcopy(focus.conv)
    old = block.conv
    c = old.in_channels // 4
    k, s, p = old.kernel_size[0], old.stride[0], old.padding[0]
    if old.groups != 1 or old.kernel_size[0] != old.kernel_size[1] or old.dilation != (1, 1):
        raise UserError("graph.patches: focus_as_conv supports the upstream Focus conv only (square kernel, "
                        "no groups, no dilation)")
    new = nn.Conv2d(c, old.out_channels, 2 * k, 2 * s, 2 * p, bias=old.bias is not None)
    w = old.weight.detach().view(old.out_channels, 4, c, k, k)
    w6 = torch.zeros(old.out_channels, c, 2 * k, 2 * k, dtype=w.dtype)
    for b, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):   # the order Focus concatenates in
        w6[:, :, dy::2, dx::2] = w[:, b]
    with torch.no_grad():
        new.weight.copy_(w6)
        if old.bias is not None:
            new.bias.copy_(old.bias.detach())
    block.conv = new
    return StridedStem(block)


def focus_as_conv(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    from ..models.yolov5 import Focus

    n = _replace_children(model, lambda m: isinstance(m, Focus), _focus_to_strided)
    if n == 0:
        raise UserError("graph.patches: focus_as_conv found no Focus layer in the model (only YOLOv5 v5.0-era "
                        "layouts, model.layout=v5, have one)")
    return {"replaced": n}


def _bn_from_syncbn(sbn: nn.Module) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(sbn.num_features, sbn.eps, sbn.momentum, sbn.affine, sbn.track_running_stats)
    bn.load_state_dict(sbn.state_dict())
    return bn.eval()


def syncbn_to_bn(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    n = _replace_children(model, lambda m: isinstance(m, nn.SyncBatchNorm), _bn_from_syncbn)
    if n == 0:
        raise UserError("graph.patches: syncbn_to_bn found no SyncBatchNorm in the model (the checkpoint was "
                        "trained without --sync-bn); drop the patch")
    return {"replaced": n}


def _as_syncbn(model: nn.Module, which) -> int:
    """The BatchNorm2d layers a checkpoint held as SyncBatchNorm ("all", or their module names) become
    SyncBatchNorm again (eval on CPU is plain batch norm), for the syncbn_to_bn patch to convert."""
    names = None if which == "all" else set(which)
    n = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.BatchNorm2d and (names is None or full in names):
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats)
                sync.load_state_dict(child.state_dict())
                setattr(parent, name, sync.train(child.training))
                n += 1
                if names is not None:
                    names.discard(full)
    if names:
        raise UserError(f"model: the checkpoint's SyncBatchNorm layer(s) {', '.join(sorted(names)[:3])} are not "
                        "BatchNorm layers of the model")
    return n


def patch_function(name: str) -> Callable[[nn.Module, torch.Tensor | None], dict]:
    """The function behind a named patch (models.arch.PATCHES)."""
    import importlib

    check_patch_names([name])
    module, func = arch.PATCHES[name]["function"].split(":")
    return getattr(importlib.import_module(module), func)


def check_patch_names(patches) -> None:
    from ..errors import nearest

    for name in patches or ():
        if name not in arch.PATCHES:
            raise UserError(f"graph.patches: {name!r} is not a known patch{nearest(name, arch.PATCHES)}; "
                            f"allowed: {', '.join(arch.PATCHES)}")


def apply_graph_settings(model: DetectionModel, head: str, patches=(), do_fuse: bool = False,
                         example: torch.Tensor | None = None, verify: bool = False) -> dict:
    """Fuse, patch and set the head layout in place; verification patches run when `verify`."""
    if head not in HEADS:
        raise UserError(f"graph.head: {head!r} is not allowed; allowed: {', '.join(HEADS)}")
    check_patch_names(patches)
    model.eval()
    figures: dict[str, Any] = {}
    patches = list(patches or ())
    if "syncbn_to_bn" in patches and do_fuse:     # BatchNorm first, so that fuse folds the converted layers
        figures["syncbn_to_bn"] = syncbn_to_bn(model, example)
        patches.remove("syncbn_to_bn")
    if do_fuse:
        figures["fused"] = fuse(model)
    model.detect.layout = head
    for name in patches:
        if arch.PATCHES[name]["verify_only"] and not verify:
            continue
        figures[name] = patch_function(name)(model, example)
    return figures


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


def _outputs_numpy(out) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    return [t.detach().numpy() for t in out]


def compare_fields(a: np.ndarray, b: np.ndarray, meta: dict | None = None) -> dict[str, dict[str, float]]:
    """Per field (boxes, objectness, class_scores) cosine and max_abs of two decoded arrays."""
    from .check import field_stats

    return field_stats(a, b, meta)


def patch(ctx: OpContext) -> None:
    """patched.pt: the model with the graph settings (head, patches, fuse) that export applies."""
    p = ctx.params
    head = p["head"]
    patches = list(p.get("patches") or [])
    check_patch_names(patches)
    if head not in HEADS:
        raise UserError(f"graph.head: {head!r} is not allowed; allowed: {', '.join(HEADS)}")
    src = load_checkpoint_file(ctx.inputs["model"], key="model")
    if not (isinstance(src, dict) and src.get("format") == CHECKPOINT_FORMAT):
        raise UserError(f"model: {ctx.inputs['model']}: not a {CHECKPOINT_FORMAT} file")
    if src.get("syncbn") and "syncbn_to_bn" not in patches:   # the file held SyncBatchNorm (load_model)
        patches.insert(0, "syncbn_to_bn")
    patched = dict(src)
    patched.update({"head": head, "patches": patches, "fuse": bool(p.get("fuse")),
                    "height": int(p["height"]), "width": int(p["width"])})
    out = ctx.outputs["patched.pt"]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(patched, out)
    if "patch_check.json" in ctx.outputs:     # verified in the same op (plans run check_patch beside export)
        _verify_patched(ctx, patched)


def check_patch(ctx: OpContext) -> None:
    """The patch op's proof as an op of its own, so a plan can run it beside export and compile."""
    patched = load_checkpoint_file(ctx.inputs["patched"], key="model")
    if not (isinstance(patched, dict) and patched.get("format") == CHECKPOINT_FORMAT and "head" in patched):
        raise UserError(f"model: {ctx.inputs['patched']}: not a patched yolobuild checkpoint")
    _verify_patched(ctx, patched)


def _verify_patched(ctx: OpContext, patched: dict) -> None:
    """The patched model decodes to what the original computes (patch_check.json), else CheckFailed."""
    from ..runtime.decode import to_decoded

    head, patches, fused = patched["head"], list(patched.get("patches") or []), bool(patched.get("fuse"))
    x = example_input(patched)
    _, reference = load_checkpoint(ctx.inputs["model"])
    model = copy.deepcopy(reference)          # same as load_patched(out), without building twice
    model.patch_figures = apply_graph_settings(model, head, patches, fused, x, verify=True)
    with torch.no_grad():
        ref = reference(x).numpy()
        got = to_decoded(_outputs_numpy(model(x)), head, host_meta(patched))
    if got.shape != ref.shape:
        raise CheckFailed(f"patch: patched model decodes to {got.shape}, the original to {ref.shape}")
    figures = compare_fields(got, ref, host_meta(patched))
    report = {"head": head, "fuse": fused, "patches": patches,
              "input": list(x.shape), "fields": figures,
              "applied": {k: v for k, v in model.patch_figures.items()}}
    ctx.outputs["patch_check.json"].write_text(json.dumps(report, indent=2) + "\n")
    ctx.results["patch_check"] = figures
    bad = [f"{k} cosine {v['cosine']:.6f} < 0.99999" for k, v in figures.items()
           if not v["cosine"] >= 0.99999]   # written so that a NaN cosine (inf outputs) fails too
    # float32 reassociation (a fused conv, a 6x6 conv for Focus) moves boxes by a few 1e-4 of their size
    box_tol = max(1e-2, 1e-3 * float(np.abs(ref[..., :4]).max()))
    if figures["boxes"]["max_abs"] > box_tol:
        bad.append(f"boxes max_abs {figures['boxes']['max_abs']:.3g} px > {box_tol:.3g} (1e-3 of the largest box value)")
    if bad:
        raise CheckFailed(f"patch: the patched model ({head} head, fuse={fused}, "
                          f"patches={patches or 'none'}) differs from the original: {'; '.join(bad)}")


# --------------------------------------------------------------------------- inspect

def inspect_weights(path, trust: bool = False, source_repo=None) -> dict:
    """What a weight file holds (family, scale, layout, classes, strides, anchors, input size), without building."""
    from ..models.upstream import describe_upstream, pick_model

    where = f"model.weights: {path}"
    for family in arch.FAMILIES:     # formats of a family's own (Darknet .weights): its inspect_foreign says
        foreign = getattr(family_module(family), "inspect_foreign", None)
        info = foreign(Path(path)) if foreign is not None else None
        if info is not None:
            return info
    obj = load_checkpoint_file(path, full_pickle={"trust": trust, "source_repo": source_repo})
    if pick_model(obj) is not None:
        meta, sd = describe_upstream(obj, where)
        source = f"full pickle ({meta.pop('upstream')}), read by the restricted unpickler"
    else:
        source, meta, sd = classify(obj, where)
        meta = {k: v for k, v in meta.items() if k in ("family", "scale", "layout", "nc", "names", "anchors",
                                                       "strides", "input_size")}
        if source == "state_dict":
            guess = _guess_arch(_strip_prefix(sd))
            meta = {"guess": guess or "unknown", "nc": _file_nc(_strip_prefix(sd))}
    info = {"file": str(path), "source": source, **meta,
            "tensors": len(sd), "parameters": int(sum(v.numel() for v in sd.values() if v.is_floating_point()))}
    if info.get("family") in arch.FAMILIES:
        info["head_kind"] = arch.FAMILIES[info["family"]]["head"]
    return info
