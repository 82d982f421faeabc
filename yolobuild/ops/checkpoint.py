"""Reading weight files: every format a user has (yolobuild checkpoints, plain state_dicts, upstream
full pickles through the restricted unpickler, a family's own formats) -> a state_dict and what it says.

Every weight file is read with `torch.load(weights_only=True)` (or the restricted unpickler):
no code from a checkpoint ever runs.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..runtime.sniff import not_a_checkpoint
from ..models import arch
from ..models.arch import YOLOV5_SCALES
from ..models.yolov5 import make_divisible

CHECKPOINT_FORMAT = "yolobuild-checkpoint/1"
# keys a real upstream state_dict may carry that this model derives itself
_IGNORED_UNEXPECTED = re.compile(r"(^|\.)anchor_grid$")
_IGNORED_MISSING = re.compile(r"(^|\.)num_batches_tracked$")


# --------------------------------------------------------------------------- reading weight files

def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


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
    kind = not_a_checkpoint(path)
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
    if not nc_only and any(k.startswith("model.") and ".cv3." in k for k in sd):   # ultralytics detect layouts
        from ..models.upstream import scale_from_shapes

        found = scale_from_shapes(sd)
        if found and found[0] != "yolov8":     # yolov8 keeps its own wording below
            nc = _file_nc(sd)
            return f"{found[0]}{found[2]} (layout {found[1]}){f', nc={nc}' if nc else ''}"
    if not nc_only and any(k.endswith(".dfl.conv.weight") for k in sd):
        stem = sd.get("model.0.conv.weight")
        scale = next((s for s, (_, w, mc) in arch.YOLOV8_SCALES.items()
                      if stem is not None and make_divisible(min(64, mc) * w, 8) == stem.shape[0]), "")
        nc = _file_nc(sd)
        return f"yolov8{scale} (anchor-free){f', nc={nc}' if nc else ''}"
    from .building import family_module

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


def read_weights(path, family: str, layout: str, trust: bool = False, source_repo=None,
                 cfg: str | None = None) -> tuple[str, dict, dict]:
    """Any weight file a user has -> (source, file metadata, fp32 state_dict in yolobuild's key layout).

    Plain state_dicts, yolobuild checkpoints, upstream full pickles (restricted unpickler) and,
    where the family module provides `read_foreign`, formats of its own (Darknet .weights,
    mmengine .pth)."""
    where = f"model.weights: {path}"
    from .building import family_module

    mod = family_module(family)
    foreign = getattr(mod, "read_foreign", None)
    if foreign is not None:
        got = foreign(Path(path), layout, where, **({"cfg": cfg} if cfg else {}))
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


# --------------------------------------------------------------------------- inspect

def inspect_weights(path, trust: bool = False, source_repo=None) -> dict:
    """What a weight file holds (family, scale, layout, classes, strides, anchors, input size), without building."""
    from ..models.upstream import describe_upstream, pick_model

    from .building import family_module

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
