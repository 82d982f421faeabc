"""Model ops: load weights into a yolobuild model (`load_model`), then patch it for a target (`patch`,
`check_patch`). Reading files, building models and the patches themselves live in checkpoint.py,
building.py and patches.py.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import torch

from ..errors import CheckFailed, UserError
from ..models.family import ANCHOR_FREE
from . import OpContext
from .building import (_model_anchors_px, _set_anchors_px, _what, build_from_meta, checkpoint_dict, example_input,
                       family_module, family_of, host_meta, load_checkpoint, meta_json, normalize_anchors)
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file, load_into, read_weights
from .patches import apply_graph_settings, check_patch_names, known_heads

# --------------------------------------------------------------------------- load_model

def _names(names, nc: int) -> list[str]:
    if names and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def _check_family(file_meta: dict, meta: dict, where: str) -> None:
    if "family" in file_meta and file_meta["family"] != meta["family"]:
        raise UserError(f"{where}: the checkpoint is a {_what(file_meta)} model but the recipe says "
                        f"{_what(meta)}; pick a {file_meta['family']} recipe (model.family={file_meta['family']})")
    for key in ("scale", "layout"):
        if file_meta.get(key) is not None and file_meta[key] != meta[key]:
            raise UserError(f"{where}: the checkpoint is {_what(file_meta)} but the recipe says {_what(meta)}; "
                            f"set model.{key}={file_meta[key]}")


def _apply_cfg(ctx: OpContext, p: dict, meta: dict, overrides: dict) -> None:
    """model.cfg (Darknet): the cfg states the classes, anchors and input size; model.anchors still wins."""
    path = ctx.inputs["cfg"]
    reader = getattr(family_module(meta["family"]), "cfg_meta", None)
    if reader is None:
        raise UserError(f"model.cfg: {meta['family']} models are not built from a Darknet cfg")
    try:
        got = reader(path.read_text(), path.name)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"model.cfg: {path}: cannot read it ({exc.__class__.__name__})") from None
    meta["cfg"] = got["cfg"]
    if got["nc"] != meta["nc"]:
        overrides["nc"] = [meta["nc"], got["nc"]]
        meta["nc"] = got["nc"]
    if p.get("anchors") is None:
        meta["anchors"] = normalize_anchors(got["anchors"])
    meta["input_size"] = got["input_size"]


def load_model(ctx: OpContext) -> None:
    p = ctx.params
    family = p["family"]
    family_module(family)
    layouts = family_of(family).layouts
    if p["layout"] not in layouts:
        raise UserError(f"model.layout: {p['layout']!r} is not a {family} layout; allowed: {', '.join(layouts)}")
    free = family_of(family).head == ANCHOR_FREE
    meta = {"family": family, "scale": p["scale"], "layout": p["layout"], "nc": int(p["nc"]),
            "names": p.get("names"), "input_size": None,
            "anchors": None if free else normalize_anchors(p.get("anchors"), layouts[p["layout"]]["anchors"])}
    weights = ctx.inputs.get("weights")
    overrides: dict[str, Any] = {}
    torch.manual_seed(int(p.get("seed", 0)))
    if ctx.inputs.get("cfg") is not None:      # a user's Darknet cfg: its classes, anchors and input size
        _apply_cfg(ctx, p, meta, overrides)

    if p.get("random") or weights is None:
        source, file_meta, sd = "random", {}, None
    else:
        where = f"model.weights: {weights}"
        source, file_meta, sd = read_weights(weights, family, p["layout"], bool(p.get("trust_checkpoint")),
                                             p.get("source_repo"), cfg=meta.get("cfg"))
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
        if file_meta.get("arch_options"):
            meta["arch_options"] = dict(file_meta["arch_options"])
        if file_meta.get("multiples"):    # a yaml whose depth / width match no named scale: built from them
            meta["multiples"], meta["scale"] = list(file_meta["multiples"]), None
            ctx.log(f"load_model: the checkpoint's yaml gives depth, width, max_channels {file_meta['multiples']}, "
                    "no named scale; built from those")
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


def _outputs_numpy(out) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    return [t.detach().numpy() for t in out]


def compare_fields(a: np.ndarray, b: np.ndarray, meta: dict | None = None,
                   layout: str = "decoded") -> dict[str, dict[str, float]]:
    """Per field (boxes, objectness, class_scores; the top-k layout's boxes and scores) cosine and max_abs of
    two decoded arrays."""
    from .check import field_stats

    return field_stats(a, b, meta, layout)


def patch(ctx: OpContext) -> None:
    """patched.pt: the model with the graph settings (head, patches, fuse) that export applies."""
    p = ctx.params
    head = p["head"]
    patches = list(p.get("patches") or [])
    check_patch_names(patches)
    if head not in known_heads():
        raise UserError(f"graph.head: {head!r} is not allowed; allowed: {', '.join(known_heads())}")
    src = load_checkpoint_file(ctx.inputs["model"], key="model")
    if not (isinstance(src, dict) and src.get("format") == CHECKPOINT_FORMAT):
        raise UserError(f"model: {ctx.inputs['model']}: not a {CHECKPOINT_FORMAT} file")
    fam = family_of(src.get("family", "yolov5"))
    if head not in fam.heads:
        raise UserError(f"graph.head: {head!r} is not a {fam.name} head layout; allowed: {', '.join(fam.heads)}")
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
    from ..runtime.decode import comparable

    head, patches, fused = patched["head"], list(patched.get("patches") or []), bool(patched.get("fuse"))
    x = example_input(patched)
    _, reference = load_checkpoint(ctx.inputs["model"])
    model = copy.deepcopy(reference)          # same as load_patched(out), without building twice
    model.patch_figures = apply_graph_settings(model, head, patches, fused, x, verify=True)
    with torch.no_grad():
        got, ref = comparable(_outputs_numpy(model(x)), head, reference(x).numpy(), host_meta(patched))
    if got.shape != ref.shape:
        raise CheckFailed(f"patch: patched model decodes to {got.shape}, the original to {ref.shape}")
    figures = compare_fields(got, ref, host_meta(patched), head)
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
