"""The one list of model families and named patches that validate, plan, inspect, init, ops and deploy ask.

Shipped families are the packages named in SHIPPED (yolobuild/models/<package>/, each `__init__`
torch-free: `FAMILIES` and `PATCHES`, see models.family). A third-party distribution adds a package
through the entry-point group `yolobuild.families` (the value names a package with the same two
attributes). Entry points are read only for a name that is not shipped, or to list every family, so
validate and plan never pay for them otherwise.

Adding a family touches its package, one line in SHIPPED (or an entry point) and its recipes.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from functools import lru_cache

from ..errors import UserError, nearest
from .family import Family, patch_row

ENTRY_POINT_GROUP = "yolobuild.families"
# family packages under yolobuild.models, in the order `--help`, `inspect` and messages list them
SHIPPED = ("yolov5", "yolov8", "darknet", "yolor", "mmyolo", "yolo11", "yolov7")

# patches any family's model can take (functions in ops.patches); a family's own come from its package
GENERIC_PATCHES = {
    "silu_as_sigmoid_mul": patch_row("yolobuild.ops.patches:silu_as_sigmoid_mul",
                                     "SiLU written as x*sigmoid(x) (RKNN 1.x, old runtimes without Swish)"),
    "focus_as_conv": patch_row("yolobuild.ops.patches:focus_as_conv",
                               "YOLOv5 v5.0 Focus (space-to-depth + conv) as one equivalent 6x6 stride-2 conv"),
    "syncbn_to_bn": patch_row("yolobuild.ops.patches:syncbn_to_bn",
                              "SyncBatchNorm (multi-GPU training) as BatchNorm2d, which exporters know"),
    "no_inplace_slice": patch_row("yolobuild.ops.patches:verify_no_inplace_slice",
                                  "verify: no in-place write into a tensor slice (no ScatterND on export)",
                                  verify_only=True),
    "anchors_as_constants": patch_row("yolobuild.ops.patches:verify_anchors_as_constants",
                                      "verify: anchor grids are graph constants, never read from a buffer at "
                                      "run time", verify_only=True),
}


def _declared(package: str) -> tuple[dict[str, Family], dict[str, dict]]:
    """A family package's declarations, tagged with the package that made them."""
    mod = importlib.import_module(package)
    fams = {f.name: replace(f, package=package) for f in getattr(mod, "FAMILIES", ())}
    return fams, dict(getattr(mod, "PATCHES", {}))


@lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Family], dict[str, dict]]:
    fams, patches = {}, dict(GENERIC_PATCHES)
    for pkg in SHIPPED:
        f, p = _declared(f"{__package__}.{pkg}")
        fams.update(f)
        patches.update(p)
    return fams, patches


def _entry_point_packages() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]


@lru_cache(maxsize=1)
def _third_party() -> tuple[dict[str, Family], dict[str, dict]]:
    fams, patches = {}, {}
    shipped_fams, shipped_patches = _shipped()
    for package in _entry_point_packages():
        try:
            f, p = _declared(package)
        except ImportError as exc:
            raise UserError(f"entry point {ENTRY_POINT_GROUP}: {package}: cannot import it ({exc})") from None
        fams.update({k: v for k, v in f.items() if k not in shipped_fams})
        patches.update({k: v for k, v in p.items() if k not in shipped_patches})
    return fams, patches


def clear() -> None:
    """Forget what was read (a test that registers a family calls it)."""
    _shipped.cache_clear()
    _third_party.cache_clear()


def families() -> dict[str, Family]:
    """name -> declaration of every family, shipped first."""
    return {**_shipped()[0], **_third_party()[0]}


def patches() -> dict[str, dict]:
    """name -> row of every named patch (models.family.patch_row)."""
    return {**_shipped()[1], **_third_party()[1]}


def find(name: str) -> Family | None:
    """The family named `name` (shipped first; entry points only when it is not shipped)."""
    return _shipped()[0].get(name) or _third_party()[0].get(name)


def get(name: str) -> Family:
    fam = find(name)
    if fam is None:
        known = families()
        raise UserError(f"model.family: {name!r} is not a model family{nearest(str(name), known)}; "
                        f"allowed: {', '.join(known)}")
    return fam


def cfg_reader(family: str):
    """The torch-free module that reads the family's model.cfg (Family.cfg), or None when it takes none."""
    fam = find(family)
    return importlib.import_module(fam.cfg) if fam is not None and fam.cfg else None


def patch(name: str) -> dict | None:
    return _shipped()[1].get(name) or _third_party()[1].get(name)
