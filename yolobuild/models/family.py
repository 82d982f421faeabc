"""What a model family declares about itself, as data: torch-free, so that validate, plan, inspect and
init read it without building anything.

A family is one package `yolobuild/models/<package>/`: its `__init__.py` holds `FAMILIES` (one
`Family` per family it builds; yolo11 declares YOLO11 and YOLO26) and `PATCHES` (the named patches it
brings), and imports no torch. The torch side is the module `Family.module` names, which ops import
only when they run. That module has `build(scale, layout, nc, anchors, **options)` and, where the
family has them, these hooks (looked up by name, each optional):

  read_foreign(path, layout, where[, cfg])      a weight format of its own (Darknet .weights) -> (source, meta, sd)
  inspect_foreign(path)                         the same for `inspect`, without building
  convert_state_dict(obj, sd, where)            another key layout (mmengine) -> (sd, meta)
  guess_state_dict(sd)                          'yolov3-tiny, nc=2': what a state_dict that did not fit looks like
  state_dict_nc(sd)                             the class count its head in a state_dict was trained for
  cfg_meta(text, where)                         a user's model definition file (model.cfg)
  describe_pickle(container, model, where)      a full pickle's model this family recognises -> (meta, sd), else None

(Full pickles of the yolov5 and ultralytics classes, shared by several families, are read by
models.upstream from those families' layer tables once no family's describe_pickle claimed them.)

`yolobuild.models.registry` lists the families; nothing else names one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ANCHOR_BASED = "anchor_based"   # (bs, N, 5+nc): xywh, objectness, class scores
ANCHOR_FREE = "anchor_free"     # (bs, N, 4+nc): xywh, class scores; no objectness

# graph.head layouts every family's head gives; a family adds its own in `Family.heads`
COMMON_HEADS = ("raw", "split", "decoded")


@dataclass(frozen=True)
class Standalone:
    """A PyTorch 1.3-compatible source file that rebuilds the network from a weights-only state_dict, for
    vendor flows that run the vendor's old PyTorch (models.definition renders it)."""

    template: str          # path inside the family's package
    config: str            # "module:function" (torch-free): (meta, Shape) -> the template's CONFIG dict
    note: str              # what a reader of the vendor bundle should know about it


@dataclass(frozen=True)
class Family:
    """One model family: how it is built, what its head outputs and how they decode, its layouts."""

    name: str
    module: str                         # the torch module: build() and the hooks above
    head: str                           # ANCHOR_BASED | ANCHOR_FREE
    decode: str                         # host decode of the raw head: yolov5 | darknet | dfl (runtime.decode)
    scales: tuple                       # named scales, (None,) when the family has one size
    layouts: dict                       # layout -> {"strides", "anchors" (pixels or None), "what"[, "patches"]}
    recipe_prefix: str                  # shipped recipes are <prefix><scale>[-<variant>].yaml
    patches: tuple = ()                 # named patches every export needs (before the recipe's graph.patches)
    reg_max: int | None = None          # DFL bins per box side (decode "dfl")
    heads: tuple = COMMON_HEADS         # graph.head layouts this family's head gives
    standalone: Standalone | None = None
    cfg: str | None = None              # torch-free module reading a user's model.cfg: user_cfg(cfg, weights),
    #                                     check_cfg_against_weights(cfg, weights) (Darknet); None: no model.cfg
    cfg_what: str = ""                  # what such a file is, for messages ('a Darknet cfg')
    package: str = field(default="", compare=False)   # set by the registry: the package that declared it

    def layout(self, layout: str) -> dict:
        return self.layouts[layout]

    def max_stride(self, layout: str) -> int:
        return max(self.layouts[layout]["strides"])

    def required_patches(self, layout: str | None = None) -> list[str]:
        """Patches the family (or one of its layouts, where the layout row names its own) always needs for a
        correct export, applied before the recipe's graph.patches."""
        row = self.layouts.get(layout) or {}
        return list(row["patches"] if "patches" in row else self.patches)

    def decode_info(self) -> dict:
        """What the host decode and deploy.json need to know about this family's head."""
        return {"head_kind": self.head, "decode": self.decode,
                **({"reg_max": self.reg_max or 16} if self.decode == "dfl" else {})}

    def describe(self, scale, layout: str) -> str:
        """'yolov5s (layout v6)', 'yolov3 (layout yolov3-tiny)' ..."""
        return f"{self.name}{scale or ''} (layout {layout})"


def patch_row(function: str, what: str, verify_only: bool = False) -> dict:
    """One named patch: where its function lives ("module:function", imported only by ops that run torch),
    whether it only verifies the finished module (runs with an example input, changes nothing), what it is for.
    A patch function takes (model, example) and returns figures; when its target is not in the model it raises
    UserError: never a silent no-op."""
    return {"function": function, "verify_only": verify_only, "what": what}
