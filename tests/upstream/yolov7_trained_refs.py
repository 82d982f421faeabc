"""Run INSIDE the upstream test venv (PYTHONPATH as for train_yolov7.py): upstream's own outputs for the
checkpoints its train.py wrote, the way its detect.py gets them (models.experimental.attempt_load: the
'ema' model when the file has one, else 'model'; fused, fp32, eval), on the validation images read as
detect.py reads them (BGR file -> RGB, /255; they are already the input size). Never imports yolobuild.

usage: python yolov7_trained_refs.py OUT.npz IMAGE... -- CHECKPOINT...
  writes OUT.npz (input; for checkpoint i: out{i} (attempt_load), unfused{i} (the same model, not fused),
  other{i} (the file's 'model' when it also has an 'ema': the raw weights upstream does NOT run),
  sums_{ema,model}{i}: each floating state_dict entry's float64 sum, in the order of `keys`) and OUT.json
  (per checkpoint: key run, nc, names, epoch, anchors in pixels, strides, keys).
"""
import json
import sys
from pathlib import Path

import yolov7_repo

yolov7_repo.compat()
yolov7_repo.original_repo_modules()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from yolov7.models.experimental import attempt_load  # noqa: E402

out, args = Path(sys.argv[1]), sys.argv[2:]
images, weights = args[:args.index("--")], args[args.index("--") + 1:]
x = np.stack([cv2.imread(p)[:, :, ::-1].transpose(2, 0, 1) for p in images]).astype(np.float32) / 255.0
arrays, info = {"input": x}, []
for i, w in enumerate(weights):
    ckpt = torch.load(w, map_location="cpu", weights_only=False)
    key = "ema" if ckpt.get("ema") else "model"
    with torch.no_grad():
        arrays[f"out{i}"] = attempt_load(w, map_location="cpu")(torch.from_numpy(x))[0].numpy()
        arrays[f"unfused{i}"] = ckpt[key].float().eval()(torch.from_numpy(x))[0].numpy()
        if key == "ema":
            arrays[f"other{i}"] = ckpt["model"].float().eval()(torch.from_numpy(x))[0].numpy()
    model = ckpt[key]
    keys = sorted(k for k, v in model.state_dict().items() if v.is_floating_point())
    for name in ("ema", "model") if key == "ema" else ("model",):
        sd = ckpt[name].state_dict()
        arrays[f"sums_{name}{i}"] = np.array([sd[k].double().sum().item() for k in keys])
    det = model.model[-1]
    info.append({"file": Path(w).name, "key": key, "epoch": ckpt["epoch"], "nc": int(det.nc),
                 "names": list(model.names), "strides": [int(s) for s in det.stride.tolist()],
                 "anchors_px": (det.anchors.float() * det.stride.view(-1, 1, 1)).view(det.nl, -1).tolist(),
                 "optimizer": ckpt.get("optimizer") is not None, "keys": keys})
np.savez(out, **arrays)
out.with_suffix(".json").write_text(json.dumps(info, indent=1))
print(json.dumps(info))
