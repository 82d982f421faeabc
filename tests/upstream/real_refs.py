"""Run INSIDE the upstream test venv: upstream's own eval output of real trained checkpoints on a fixed input.

usage: python real_refs.py OUT.npz CKPT...   (yolobuild is never imported here)
"""
import sys

import numpy as np
import torch
from ultralytics.nn.tasks import load_checkpoint

x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(7))
out = {"input": x.numpy()}
for i, path in enumerate(sys.argv[2:]):
    model = load_checkpoint(path, device="cpu")[0].float().eval()
    with torch.no_grad():
        out[f"ckpt{i}"] = model(x)[0].numpy()
np.savez(sys.argv[1], **out)
