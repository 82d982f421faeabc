"""Run INSIDE the upstream test venv: upstream's own eval output of real trained checkpoints on a fixed input.

usage: python real_refs.py OUT.npz CKPT...   (yolobuild is never imported here)

ckpt{i}: what the model returns in eval, (bs, 4+nc, N) decoded rows. YOLO26 (a one-to-one head) also:
ckpt{i}_one2one / _one2many, each branch's decoded rows, and ckpt{i}_topk, the end-to-end top-k rows
(bs, max_det, 6) with end2end set (checkpoints written by ultralytics 8.4.33 / 8.4.121 carry no end2end
flag, and this version then runs the one-to-many branch by default).
"""
import sys

import numpy as np
import torch
from ultralytics.nn.tasks import load_checkpoint

x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(7))
out = {"input": x.numpy()}
for i, path in enumerate(sys.argv[2:]):
    model = load_checkpoint(path, device="cpu")[0].float().eval()
    det = model.model[-1]
    feats = []
    hook = det.register_forward_pre_hook(lambda m, inp: feats.append(inp[0]))
    with torch.no_grad():
        out[f"ckpt{i}"] = model(x)[0].numpy()
        hook.remove()
        if getattr(det, "one2one_cv2", None) is not None:      # YOLO26: both branches, as upstream runs them
            out[f"ckpt{i}_one2one"] = det._inference(det.forward_head(feats[0], det.one2one_cv2,
                                                                      det.one2one_cv3)).numpy()
            out[f"ckpt{i}_one2many"] = det._inference(det.forward_head(feats[0], det.cv2, det.cv3)).numpy()
            det.end2end = True
            out[f"ckpt{i}_topk"] = model(x)[0].numpy()
np.savez(sys.argv[1], **out)
