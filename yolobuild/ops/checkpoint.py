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
from ..models import registry

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


def _family_hooks(name: str, with_family: bool = False):
    """Each family's hook `name` (models.family), in the registry's order; a family that cannot load gives none.
    with_family: (Family, hook) pairs."""
    from .building import family_module

    for family in registry.families():
        try:
            hook = getattr(family_module(family), name, None)
        except ImportError:
            hook = None
        if hook is not None:
            yield (registry.get(family), hook) if with_family else hook


def _anchor_head_nc(sd: dict[str, torch.Tensor]) -> int | None:
    """The class count of an anchor-based head whose per-level convs are `m.{i}` (YOLOv5's Detect and the
    heads written like it: YOLOR / YOLOv7 IDetect, Darknet's detect), from the first level's outputs."""
    heads = sorted(k for k in sd if re.fullmatch(r"(model\.\d+|detect)\.m\.0\.weight", k) and sd[k].ndim == 4
                   and sd[k].shape[2:] == (1, 1))
    if not heads:
        return None
    anchors = sd.get(heads[-1].rsplit(".m.0.", 1)[0] + ".anchors")
    na = anchors.shape[1] if anchors is not None and anchors.ndim == 3 else 3
    c = sd[heads[-1]].shape[0]
    return c // na - 5 if c % na == 0 and c // na > 5 else None


def _file_nc(sd: dict[str, torch.Tensor]) -> int | None:
    """The class count a state_dict's head was trained for, when a family's hook or the anchor-based head tells."""
    for hook in _family_hooks("state_dict_nc"):
        nc = hook(sd)
        if nc is not None:
            return nc
    return _anchor_head_nc(sd)


def _guess_arch(sd: dict[str, torch.Tensor]) -> str:
    """A hint at what a mismatching state_dict is ('yolov5s (layout v6), nc=80'), or '': the first family hook
    that recognises the key layout, and the anchor-based head's class count where the hook gave none."""
    guess = next((g for g in (hook(sd) for hook in _family_hooks("guess_state_dict")) if g), "")
    nc = _anchor_head_nc(sd) if "nc=" not in guess else None
    return ", ".join(part for part in (guess, f"nc={nc}" if nc is not None else "") if part)


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
                        f"{registry.get(family).describe(None, layout)}; pick recipe=yolov3 or recipe=yolov3-tiny")
    obj = load_checkpoint_file(path, full_pickle={"trust": trust, "source_repo": source_repo})
    from ..models.safe_pickle import Stub
    from ..models.upstream import describe_upstream, pick_model

    if pick_model(obj) is not None:
        file_meta, sd = describe_upstream(obj, where, _family_hooks("describe_pickle", with_family=True))
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

    where = f"model.weights: {path}"
    for foreign in _family_hooks("inspect_foreign"):     # formats of a family's own (Darknet .weights)
        info = foreign(Path(path))
        if info is not None:
            return info
    obj = load_checkpoint_file(path, full_pickle={"trust": trust, "source_repo": source_repo})
    if pick_model(obj) is not None:
        meta, sd = describe_upstream(obj, where, _family_hooks("describe_pickle", with_family=True))
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
    fam = registry.find(info["family"]) if isinstance(info.get("family"), str) else None
    if fam is not None:
        info["head_kind"] = fam.head
    return info
