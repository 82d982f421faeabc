"""Validate a composed config: JSON Schema (Draft 2020-12) first, then cross-field rules.

Every problem becomes one line: the dotted key, the bad value, what is allowed, and the
file that set it (or "command line"). All problems are reported at once. Imports no torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from .compose import MISSING, Composed, flatten, provenance, source_of
from .errors import UserError, nearest
from .resources import ASSETS_DIR, SCHEMAS_DIR
BUILTIN_PREFIX = "builtin:"


def _validator():
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMAS_DIR.glob("*.schema.json")):
        resources.append((path.name, Resource.from_contents(json.loads(path.read_text()))))
    registry = Registry().with_resources(resources)
    root = json.loads((SCHEMAS_DIR / "config.schema.json").read_text())
    return Draft202012Validator(root, registry=registry)


def _schema_problems(config: dict) -> list[tuple[str, str]]:
    """(dotted key, message) for every schema violation, shallowest first."""
    problems, missing_by_key = [], {}
    errors = sorted(_validator().iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    for err in errors:
        key = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "oneOf" and err.context:
            # report the branch that got furthest instead of "is not valid under any given schema"
            err = max(err.context, key=lambda e: len(e.absolute_path))
            key = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            missing_by_key.setdefault(key, []).append(err.message.split(" is a required")[0])
            continue
        problems.append((key, _describe(err, key)))
    for key, names in missing_by_key.items():
        problems.insert(0, (key, f"missing required key(s): {', '.join(names)}"))
    return problems


def _describe(err, key: str) -> str:
    value = err.instance
    kind = err.validator
    if kind == "enum":
        allowed = err.validator_value
        return f"{value!r} is not allowed{nearest(value, allowed)}; allowed: {', '.join(map(str, allowed))}"
    if kind == "type":
        wanted = err.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"{value!r} has the wrong type; expected {wanted}"
    if kind in ("minimum", "exclusiveMinimum"):
        return f"{value!r} is too small; allowed: {'>' if kind.startswith('excl') else '>='} {err.validator_value}"
    if kind in ("maximum", "exclusiveMaximum"):
        return f"{value!r} is too large; allowed: {'<' if kind.startswith('excl') else '<='} {err.validator_value}"
    if kind == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        extra = sorted(set(value) - set(known))
        hints = "; ".join(f"unknown key {k!r}{nearest(k, known)}" for k in extra)
        return f"{hints}; allowed keys: {', '.join(known)}"
    if kind == "required":
        return f"missing required key(s): {err.message.split(' is a required')[0]}"
    if kind == "pattern":
        return f"{value!r} does not match the pattern {err.validator_value}"
    if kind in ("minItems", "minLength"):
        return f"{value!r} is too short"
    return f"{value!r}: {err.message}"


# ---- cross-field rules: each returns (dotted key, message) problems ------------------------------

Rule = Callable[[dict], list[tuple[str, str]]]


def _rule_precision_supported(c: dict) -> list[tuple[str, str]]:
    p, t = c["precision"]["name"], c["target"]
    if p in t["precisions"]:
        return []
    return [("precision.name", f"{p!r} is not supported by target {t['name']}; allowed: {', '.join(t['precisions'])}")]


def _rule_default_precision(c: dict) -> list[tuple[str, str]]:
    t = c["target"]
    default = t.get("default_precision")
    if default is None or default in t["precisions"]:
        return []
    return [("target.default_precision", f"{default!r} is not one of target {t['name']}'s precisions; "
             f"allowed: {', '.join(t['precisions'])}")]


def _rule_parity_threshold(c: dict) -> list[tuple[str, str]]:
    p, t = c["precision"]["name"], c["target"]
    if p not in t["precisions"] or p in t["parity"]:
        return []
    return [("target.parity", f"target {t['name']} has no parity threshold for {p}; add target.parity.{p}.cosine")]


def _rule_calibration_set(c: dict) -> list[tuple[str, str]]:
    if not c["precision"]["calibration"]:
        return []
    ds = c["dataset"]
    if ds["generator"] is None and not ds["calib"]["path"]:
        return [("dataset.calib.path", f"{c['precision']['name']} needs a calibration set; "
                 "set dataset=shapes, or dataset=folder dataset.calib.path=DIR (a folder of images or a list file)")]
    if ds["calib"]["count"] < 1:
        return [("dataset.calib.count", f"{ds['calib']['count']!r} is too small for {c['precision']['name']}; allowed: >= 1")]
    return []


def _rule_calibration_images(c: dict) -> list[tuple[str, str]]:
    path = c["dataset"]["calib"]["path"]
    if not path or path == MISSING or not c["precision"]["calibration"]:
        return []
    from .runtime.images import IMAGE_SUFFIXES, list_images

    p = Path(path).expanduser()
    if not p.exists():
        return [("dataset.calib.path", f"{path!r} does not exist; allowed: a folder of images or a list file")]
    try:
        images = list_images(p)
    except (UnicodeDecodeError, OSError):
        return [("dataset.calib.path", f"{path!r} is neither a folder nor a readable list file of image paths")]
    if not images:
        what = "folder holds no images" if p.is_dir() else "list file names no images"
        return [("dataset.calib.path", f"{path!r}: the {what}; allowed suffixes: {' '.join(IMAGE_SUFFIXES)}")]
    bad = [str(i) for i in images if i.suffix.lower() not in IMAGE_SUFFIXES or not i.is_file()]
    if bad:
        return [("dataset.calib.path", f"{path!r} lists {len(bad)} missing or non-image file(s), first {bad[0]!r}")]
    return []


def _rule_eval_pair(c: dict) -> list[tuple[str, str]]:
    ev = c["dataset"]["eval"]
    out = []
    if ev["annotations"] and not ev["images"]:   # images alone are scored by agreement with PyTorch fp32
        out.append(("dataset.eval.images", "missing; dataset.eval.annotations (COCO json) needs the images it "
                                           "describes (dataset.eval.images, a folder)"))
    for key in ("images", "annotations"):
        if ev[key] and not Path(ev[key]).expanduser().exists():
            out.append((f"dataset.eval.{key}", f"{ev[key]!r} does not exist"))
    return out


def _rule_input_stride(c: dict) -> list[tuple[str, str]]:
    s = c["model"]["max_stride"]
    out = []
    for side in ("width", "height"):
        v = c["input"][side]
        if isinstance(v, int) and v % s:
            lo, hi = v // s * s, (v // s + 1) * s
            out.append((f"input.{side}", f"{v} is not a multiple of the model's max stride {s}; "
                        f"allowed: multiples of {s}, e.g. {lo or hi} or {hi}"))
    return out


def _rule_model_layout(c: dict) -> list[tuple[str, str]]:
    """family / layout / scale / max_stride agree with the family's declaration (models.registry, torch-free)."""
    from .models import registry

    m = c["model"]
    spec = registry.find(m["family"])
    if spec is None:
        known = registry.families()
        return [("model.family", f"{m['family']!r} is not a model family{nearest(m['family'], known)}; "
                 f"allowed: {', '.join(known)}")]
    if m["layout"] not in spec.layouts:
        return [("model.layout", f"{m['layout']!r} is not a {m['family']} layout; allowed: "
                 f"{', '.join(spec.layouts)}")]
    out = []
    if m["scale"] not in spec.scales:
        out.append(("model.scale", f"{m['scale']!r} is not a {m['family']} scale; allowed: "
                    f"{', '.join(map(str, spec.scales))}"))
    want = spec.max_stride(m["layout"])
    if m["max_stride"] != want:
        out.append(("model.max_stride", f"{m['max_stride']} does not match {m['family']} layout {m['layout']} "
                    f"(max stride {want}); allowed: {want}"))
    head = c["graph"]["head"]
    if head not in spec.heads:
        givers = [f.name for f in registry.families().values() if head in f.heads]
        out.append(("graph.head", f"{head!r} is not a {m['family']} head layout"
                    + (f" (only {', '.join(givers)} give it)" if givers else "") + f"; allowed: {', '.join(spec.heads)}"))
    return out


def _rule_family_suits_target(c: dict) -> list[tuple[str, str]]:
    families, family = c["target"].get("families"), c["model"]["family"]
    if not families or family in families:
        return []
    return [("model.family", f"{family} models cannot go to target {c['target']['name']}: its flow takes "
             f"{', '.join(families)} only (target YAML 'families')")]


def _rule_patch_names(c: dict) -> list[tuple[str, str]]:
    """graph.patches names rows of the patch table (models.registry, torch-free)."""
    from .models import registry

    PATCHES = registry.patches()
    return [("graph.patches", f"{name!r} is not a known patch{nearest(name, PATCHES)}; allowed: {', '.join(PATCHES)}")
            for name in c["graph"]["patches"] if name not in PATCHES]


def _rule_head_suits_target(c: dict) -> list[tuple[str, str]]:
    head, heads = c["graph"]["head"], c["target"]["heads"]
    if head in heads["allowed"]:
        return []
    why = (heads.get("refused") or {}).get(head)
    if why:
        return [("graph.head", f"{head!r} does not suit target {c['target']['name']}: {why}; allowed: "
                 f"{', '.join(heads['allowed'])}")]
    return [("graph.head", f"{head!r} does not suit target {c['target']['name']}; allowed: {', '.join(heads['allowed'])}")]


def _rule_option_choices(c: dict) -> list[tuple[str, str]]:
    """Chip facts that narrow a toolchain option (target YAML `option_choices`), e.g. bm1688's two cores."""
    t, opts = c["target"], c["backend"]["options"] or {}
    out = []
    for key, allowed in (t.get("option_choices") or {}).items():
        if key in opts and opts[key] not in allowed:
            out.append((f"backend.options.{key}", f"{opts[key]!r} is not allowed on {t['name']}; "
                        f"allowed: {', '.join(map(str, allowed))}"))
    return out


def _rule_toolchain_allowed(c: dict) -> list[tuple[str, str]]:
    t = c["target"]
    allowed = list(t.get("toolchains") or [t["toolchain"]])
    chosen = c["backend"]["toolchain"]
    if chosen in allowed:
        return []
    return [("backend.toolchain", f"{chosen!r} is not a toolchain of target {t['name']}{nearest(chosen, allowed)}; "
             f"allowed: {', '.join(allowed)}")]


def _rule_toolchain_known(c: dict) -> list[tuple[str, str]]:
    """target.toolchain(s) name toolchain packages (shipped, or registered through the entry-point group)."""
    from .toolchains import registry

    t = c["target"]
    out = []
    for key, name in [("target.toolchain", t["toolchain"])] + [("target.toolchains", n) for n in t.get("toolchains") or []]:
        if registry.find(name) is None:
            known = registry.names()
            out.append((key, f"{name!r} is not a toolchain{nearest(name, known)}; allowed: {', '.join(known)}"))
    return out


def _rule_int8_shared_scale(c: dict) -> list[tuple[str, str]]:
    """The concat trap: a decoded head in int8 gets one scale for boxes and scores."""
    head, t = c["graph"]["head"], c["target"]
    if c["precision"]["name"] != "int8" or head not in t["heads"].get("int8_shared_scale", []) \
            or c["graph"]["allow_shared_scale_head"]:
        return []
    safe = [h for h in t["heads"]["allowed"] if h not in t["heads"].get("int8_shared_scale", [])]
    return [("graph.head", f"{head!r} in int8 on {t['name']} shares one output scale between boxes and scores: "
             f"the scores collapse while an overall cosine still looks fine; use graph.head={safe[0] if safe else 'raw'} "
             "(decode on the host), or set graph.allow_shared_scale_head=true to build it anyway")]


def _rule_weights(c: dict) -> list[tuple[str, str]]:
    w = c["model"]["weights"]
    if w in (MISSING, "random"):  # an unset path is fine for validate/plan; build asks for it
        return []
    if w.startswith(BUILTIN_PREFIX):
        name = w[len(BUILTIN_PREFIX):]
        known = sorted(p.stem for p in ASSETS_DIR.glob("*.pt"))
        if name not in known:
            return [("model.weights", f"{w!r} is not a shipped checkpoint{nearest(name, known)}; "
                     f"allowed: {', '.join(BUILTIN_PREFIX + k for k in known) or 'none shipped'}, random, or a path")]
        return []
    p = Path(w).expanduser()
    if not p.is_file():
        return [("model.weights", f"{w!r}: no such file; allowed: a checkpoint path, or random")]
    from .runtime.sniff import not_a_checkpoint

    try:
        what = not_a_checkpoint(p)
    except OSError as exc:
        return [("model.weights", f"{w!r}: cannot read it ({exc.strerror})")]
    if what:
        return [("model.weights", f"{w!r} is {what}, not a checkpoint; allowed: a .pt/.pth checkpoint, "
                 "Darknet .weights, or random")]
    return []


def _rule_darknet_cfg(c: dict) -> list[tuple[str, str]]:
    """model.cfg (or the .cfg beside the .weights) parses and fits the weights' size; torch-free."""
    from .models import registry

    m = c["model"]
    reader = registry.cfg_reader(m["family"])
    if m.get("cfg") and reader is None:
        takes = [f for f in registry.families().values() if f.cfg]
        return [("model.cfg", f"{' / '.join(f.cfg_what for f in takes) or 'a model cfg'} builds "
                 f"{', '.join(f.name for f in takes)} models only, the recipe is {m['family']}; remove model.cfg")]
    if reader is None:
        return []
    cfg, _ = reader.user_cfg(m.get("cfg"), m["weights"])
    if cfg is None:
        return []
    if not cfg.is_file():
        return [("model.cfg", f"{m['cfg']!r}: no such file")]
    w = m["weights"]
    weights = Path(w).expanduser() if w not in (MISSING, "random") and not w.startswith(BUILTIN_PREFIX) else None
    why = reader.check_cfg_against_weights(cfg, weights)
    return [("model.cfg", why)] if why else []


def _rule_accuracy(c: dict) -> list[tuple[str, str]]:
    """accuracy.* settings that cannot act: a non-positive bound, a precision without calibration, a toolchain
    with nothing to search."""
    acc, prec = c["accuracy"], c["precision"]
    found = []
    if acc["max_drop"] is not None and not acc["max_drop"] > 0:
        found.append(("accuracy.max_drop", f"{acc['max_drop']!r} must be a positive number of AP points "
                      "(mAP50-95 x 100) the build may lose, e.g. accuracy.max_drop=0.5"))
    asked = [k for k in ("max_drop", "kept_float", "calibration") if acc[k] is not None]
    if asked and not prec["calibration"]:
        return found + [(f"accuracy.{k}", f"precision {prec['name']} is not calibrated (nothing is quantized); "
                         f"accuracy.{k} applies to int8 builds: remove it or build precision=int8") for k in asked]
    from .toolchains import registry

    decl = registry.find(c["backend"]["toolchain"])
    if decl is None:
        return found
    facts = decl.accuracy
    if acc["calibration"] == "auto" and not facts.calibration_choices:
        found.append(("accuracy.calibration", f"toolchain {decl.name} declares no calibration algorithms to try; "
                      "allowed here: null"))
    if acc["max_drop"] is not None and not facts.layer_error:
        found.append(("accuracy.max_drop", f"toolchain {decl.name} reports no per-layer error to choose the layers "
                      "kept in float from; set accuracy.kept_float=FILE or remove accuracy.max_drop"))
    if acc["max_drop"] is not None and not c["evaluate"]["enabled"]:
        found.append(("accuracy.max_drop", "needs the measured accuracy; set evaluate.enabled=true"))
    if decl.plan.handoff and (c["backend"]["options"].get("keep_float") or acc["kept_float"]):
        found.append(("accuracy.kept_float" if acc["kept_float"] else "backend.options.keep_float",
                      f"toolchain {decl.name} writes a hand-off bundle: its vendor compiler chooses the precision of "
                      "each layer, yolobuild cannot keep one in float"))
    return found


def _rule_kept_float_file(c: dict) -> list[tuple[str, str]]:
    path = c["accuracy"]["kept_float"]
    if not path or path == MISSING or not c["precision"]["calibration"]:
        return []
    from .accuracy.kept_float import problem

    why = problem(path, c["backend"]["toolchain"])
    return [("accuracy.kept_float", why)] if why else []


def _rule_workspace_writable(c: dict) -> list[tuple[str, str]]:
    p = Path(c["workspace"]["path"]).expanduser().absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return [("workspace.path", f"{c['workspace']['path']!r} is not writable ({probe} is not a writable folder)")]
    return []


# The rules that read the file system: they run again even when composition is memoised.
FILESYSTEM_RULES: tuple[Rule, ...] = (
    _rule_weights,
    _rule_darknet_cfg,
    _rule_darknet_cfg,
    _rule_calibration_images,
    _rule_eval_pair,
    _rule_kept_float_file,
    _rule_workspace_writable,
)

RULES: tuple[Rule, ...] = (
    _rule_weights,
    _rule_darknet_cfg,
    _rule_precision_supported,
    _rule_default_precision,
    _rule_parity_threshold,
    _rule_calibration_set,
    _rule_calibration_images,
    _rule_eval_pair,
    _rule_model_layout,
    _rule_input_stride,
    _rule_family_suits_target,
    _rule_patch_names,
    _rule_head_suits_target,
    _rule_int8_shared_scale,
    _rule_toolchain_known,
    _rule_toolchain_allowed,
    _rule_option_choices,
    _rule_accuracy,
    _rule_kept_float_file,
    _rule_workspace_writable,
)


def filesystem_problems(config: dict) -> bool:
    """True when a file-system rule objects (the full validate then explains it)."""
    return any(rule(config) for rule in FILESYSTEM_RULES)


def freeze(value: Any) -> Any:
    """Deep read-only view: dicts become mappingproxies, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, MappingProxyType) or isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


WEIGHTS_UNSET = "model.weights: not set; set model.weights=PATH (a checkpoint) or model.weights=random"


def validate(composed: Composed) -> MappingProxyType:
    """Return the frozen config, or raise UserError carrying every problem, one line each."""
    config = composed.config
    missing = [k for k, v in flatten(config).items() if v == MISSING and k != "model.weights"]
    problems = [(k, "missing; it must be set (recipe or command line)") for k in missing]
    derived = {key for key, _ in composed.unresolved}
    problems += [(k, m) for k, m in _schema_problems(config) if k not in derived]
    reported = {key for key, _ in problems}
    for rule in RULES:
        try:
            found = rule(config)
        except (KeyError, TypeError, AttributeError, ValueError):
            continue  # the schema already reported the malformed part this rule reads
        problems += [(k, m) for k, m in found if k not in reported]
    if not problems:  # otherwise the broken file those interpolations point at is already named
        problems += list(composed.unresolved)
    if not problems:
        config, found = _with_backend_options(config)
        problems += found
    if problems:
        sources, aliases = provenance(composed.overrides, composed.config_dirs)
        keys = {k for k, _ in problems}
        problems = [(k, m) for k, m in problems if aliases.get(k) not in keys]  # same fault, reported once
        lines = [f"{key or 'config'}: {msg} ({_source(key, sources)})" for key, msg in problems]
        raise UserError(lines[0], lines)
    from .variant import identity

    return freeze({**config, "overrides": identity(composed.overrides)})


OPTIONS_PREFIX = "backend.options."


def _source(key: str, sources: dict[str, str]) -> str:
    """backend.options.X is the target's `backend_options` (or a command-line override of it)."""
    if key.startswith(OPTIONS_PREFIX):
        return source_of("target.backend_options." + key[len(OPTIONS_PREFIX):], sources)
    return source_of(key, sources)


def _with_backend_options(config: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The config with backend.options complete (the toolchain's schema defaults, then the recipe's
    choices), and the problems of the toolchain's declaration and of those options."""
    from . import backend_options
    from .toolchains import registry

    decl = registry.get(config["backend"]["toolchain"])
    found = [("backend.toolchain", line) for line in registry.declaration_problems(decl)]
    options = backend_options.merged(decl, config["backend"]["options"])
    found += backend_options.problems(decl, options)
    return {**config, "backend": {**config["backend"], "options": options}}, found


class _CallableModule(type(os)):
    """`yolobuild.validate(recipe=..., ...)` is the Python API's validate (yolobuild.api): the package
    attribute of that name is this module, so the module itself answers the call."""

    def __call__(self, *args, **kwargs):
        from .api import validate as api_validate

        return api_validate(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
