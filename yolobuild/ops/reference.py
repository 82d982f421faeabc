"""The PyTorch reference: the unpatched fp32 model, decoded head, on every probe image."""
from __future__ import annotations

import numpy as np
import torch

from . import OpContext
from .inputs import canvas_to_input, load_npz, save_npz
from .building import load_checkpoint

BATCH = 8


def run_reference(model, canvases: np.ndarray, scale: float, batch: int = BATCH, progress=None) -> np.ndarray:
    """(N, H, W, 3) uint8 canvases -> (N, A, 5+nc) float32 decoded predictions."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(canvases), batch):
            x = torch.from_numpy(canvas_to_input(canvases[i:i + batch], scale))
            outs.append(model(x).float().numpy())
            if progress is not None:
                progress(min(i + batch, len(canvases)), len(canvases), "probe images")
    return np.concatenate(outs, 0).astype(np.float32)


def reference(ctx: OpContext) -> None:
    ckpt, model = load_checkpoint(ctx.inputs["model"])
    probe = load_npz(ctx.inputs["probe"])
    scale = float(probe.get("input_scale", 1 / 255.0))
    decoded = run_reference(model, probe["images"], scale, progress=ctx.progress)
    save_npz(ctx.outputs["reference.npz"], decoded=decoded)
    ctx.results.update({"images": int(decoded.shape[0]), "anchors_per_image": int(decoded.shape[1]),
                        "channels": int(decoded.shape[2])})
