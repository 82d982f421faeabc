"""Run INSIDE the upstream test venv with the yolov7 code of the `yolov7detect` sdist (WongKinYiu/yolov7's
models/ and utils/) on PYTHONPATH: build YOLOv7-tiny from the original cfg (nc=3), save it the way the
original repo's train.py does (classes under models.yolo / models.common), record upstream's eval output.

usage: python make_refs_yolov7.py YAML OUT_DIR   (writes OUT_DIR/<yaml stem>.{pt,npz,json}; never imports yolobuild)
"""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml as pyyaml

import yolov7_repo  # noqa: E402  (beside this script: the venv adaptations train.py needs too)

yolov7_repo.compat()
yolov7_repo.original_repo_modules()   # pickled as models.yolo.Model, models.common.Conv, as train.py's are

import yolov7.models.yolo as v7y  # noqa: E402

cfg, out = pyyaml.safe_load(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = v7y.Model(cfg, ch=3, nc=3)
g = torch.Generator().manual_seed(3)
with torch.no_grad():                  # non-trivial BatchNorm statistics and implicit layers
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith("implicit"):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
model.names = ["circle", "square", "triangle"]
model = model.half().float().eval()
x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(7))
with torch.no_grad():
    y = model(x)[0]
ckpt = {"epoch": 9, "best_fitness": np.array([0.4]), "training_results": None, "model": copy.deepcopy(model).half(),
        "ema": None, "updates": None, "optimizer": None, "wandb_id": None}
torch.save(ckpt, out / f"{Path(sys.argv[1]).stem}.pt")
det = model.model[-1]
stem = Path(sys.argv[1]).stem
np.savez(out / f"{stem}.npz", input=x.numpy(), output=y.numpy())
(out / f"{stem}.json").write_text(json.dumps({"nc": 3, "strides": [int(s) for s in det.stride.tolist()],
                                           "anchors_px": (det.anchors * det.stride.view(-1, 1, 1)).view(3, -1).tolist()}))
print(tuple(y.shape))
