"""The compare_detections op: PyTorch fp32's and the built model's detections drawn side by side on a few
evaluation images, so a report reader sees what the parity and mAP figures mean (a box lost, a class
changed, a score moved).

Both sides come from the outputs the checks were judged on (reference.npz and the built model's
outputs.npz on the probe images), decoded and filtered as the golden samples are (deploy.samples).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import OpContext
from .check import decode_built
from .inputs import load_npz, resolve_image_set


def compare_detections(ctx: OpContext) -> None:
    from ..deploy.drawing import side_by_side
    from ..deploy.samples import DEPLOY_CONF, image_detections

    p = ctx.params
    meta = json.loads(Path(ctx.inputs["meta"]).read_text())
    probe = load_npz(ctx.inputs["probe"])
    ref = load_npz(ctx.inputs["reference"])["decoded"]
    got = decode_built(ctx.inputs["outputs"], p["head"], meta)
    _, _, root = resolve_image_set(ctx.inputs["images"], "dataset.eval.images")
    out = Path(ctx.outputs["side_by_side"])
    out.mkdir(parents=True, exist_ok=True)
    n = min(int(p["count"]), len(ref), len(got), len(probe["file_names"]))
    entries = []
    for i in range(n):
        src = Path(str(probe["file_names"][i]))
        src = src if src.is_absolute() else root / src
        hw = tuple(int(v) for v in probe["image_hw"][i])
        fp32 = image_detections(ref[i], probe["letterbox"][i], hw, meta, DEPLOY_CONF, p["head"])
        built = image_detections(got[i], probe["letterbox"][i], hw, meta, DEPLOY_CONF, p["head"])
        name = f"{i:02d}_{src.stem}.png"
        side_by_side(src, fp32, built, "PyTorch fp32", p["title"]).save(out / name, format="PNG")
        entries.append({"file": name, "source": str(probe["file_names"][i]), "fp32": fp32, "built": built})
    doc = {"conf_threshold": DEPLOY_CONF, "built": p["title"], "images": entries}
    (out / "detections.json").write_text(json.dumps(doc, indent=1) + "\n")
    ctx.results["side_by_side"] = {"folder": "side_by_side", "built": p["title"], "conf_threshold": DEPLOY_CONF,
                                   "images": [{"file": e["file"], "source": e["source"], "fp32": len(e["fp32"]),
                                               "built": len(e["built"])} for e in entries]}
