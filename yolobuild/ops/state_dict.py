"""The `export_state_dict` op: a weights-only state_dict plus the family's standalone model definition.

For vendor flows that rebuild the network on the vendor's own (old) PyTorch: they get files, a
legacy-serialized fp32 state_dict (unfused, as the definition expects) and the definition's
source, never yolobuild's model classes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..models.definition import Shape, definition_for, render
from . import OpContext


def _legacy_save_bytes(obj) -> bytes:
    """torch.save(obj, _use_new_zipfile_serialization=False), reproducibly.

    The legacy writer names each storage by its memory address (str(storage._cdata)) and writes
    them in that name's order; for the same bytes every run, the names become the order in which
    the pickler meets the storages (dict order), for this call only.
    """
    import torch

    cls = torch.UntypedStorage
    real = next(vars(k)["_cdata"] for k in cls.__mro__ if "_cdata" in vars(k))
    own = "_cdata" in vars(cls)
    names: dict[int, int] = {}

    def stable(self):
        return names.setdefault(real.__get__(self, type(self)), 10 ** 9 + len(names))

    cls._cdata = property(stable)
    try:
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
    finally:
        if own:
            cls._cdata = real
        else:
            del cls._cdata
    return buf.getvalue()


def weights_only_pth(patched: Path) -> bytes:
    """patched.pt -> the unfused fp32 state_dict, legacy (non-zip) serialization PyTorch 1.3 reads."""
    from .checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(patched, key="model")
    sd = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().clone()
          for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")}
    return _legacy_save_bytes(sd)


def export_state_dict(ctx: OpContext) -> None:
    p = ctx.params
    meta = json.loads(Path(ctx.inputs["meta"]).read_text())
    family = meta.get("family", "yolov5")
    shape = Shape(head=p["head"], batch=int(p["batch"]), height=int(p["height"]), width=int(p["width"]),
                  scale=float(p["scale"]))
    source = render(meta, shape)
    Path(ctx.outputs["model.pth"]).write_bytes(weights_only_pth(Path(ctx.inputs["model"])))
    Path(ctx.outputs["model_def.py"]).write_text(source)
    Path(ctx.outputs["model_def.json"]).write_text(json.dumps(
        {"family": family, "note": definition_for(family).note}, indent=2) + "\n")
    ctx.results["state_dict"] = {"family": family, "definition_lines": source.count("\n")}
