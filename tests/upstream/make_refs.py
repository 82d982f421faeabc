"""Run INSIDE the upstream test venv (yolov5==7.0.14, ultralytics==8.4.190): build upstream models,
save checkpoints the way their trainers do, and record upstream's own eval outputs.

usage: python make_refs.py OUT_DIR
writes OUT_DIR/<case>.pt (+ best.pt variants) and OUT_DIR/refs.npz (input + outputs per case),
and OUT_DIR/cases.json describing each case. yolobuild is never imported here.
"""
from __future__ import annotations

import copy
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
H = W = 128
NAMES = {0: "circle", 1: "square", 2: "triangle"}
torch.manual_seed(0)
x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(7))
refs, cases = {"input": x.numpy()}, {}


def perturb_bn(model):
    """Non-trivial BatchNorm statistics and head biases, so a wrong layout cannot pass by accident."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def fp16_roundtrip(model):
    """The trainers save .half(): compute references from the same rounded weights."""
    return model.half().float()


# ------------------------------------------------------------------ ultralytics/yolov5 (train.py layout)
import yolov5.models.yolo as y5  # noqa: E402
from yolov5.utils.torch_utils import ModelEMA  # noqa: E402

Y5 = Path(y5.__file__).parent.parent


def yolov5_ckpt(model, imgsz):
    ema = ModelEMA(model)
    ema.updates = 123
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return {"epoch": 9, "best_fitness": np.array([0.4321]), "model": copy.deepcopy(model).half(),
            "ema": copy.deepcopy(ema.ema).half(), "updates": ema.updates, "optimizer": opt.state_dict(),
            "opt": {"imgsz": imgsz, "weights": "yolov5n.pt", "data": "shapes.yaml", "epochs": 10,
                    "save_dir": "runs/train/exp"}, "git": None, "date": datetime.now().isoformat()}


def yolov5_case(name, cfg, checkout: bool, old_name: bool = False):
    model = y5.Model(cfg, ch=3, nc=3)
    model.names, model.nc = dict(NAMES), 3
    model.hyp = {"lr0": 0.01, "box": 0.05}
    perturb_bn(model)
    model = fp16_roundtrip(model)
    model.eval()
    with torch.no_grad():
        out = model(x)[0]
    ckpt = yolov5_ckpt(model, H)
    path = OUT / f"{name}.pt"
    if checkout:   # what a yolov5 git checkout's train.py writes: classes under models.yolo / models.common
        import yolov5.models.common as y5c
        sys.modules["models"] = sys.modules["yolov5.models"]
        sys.modules["models.yolo"], sys.modules["models.common"] = y5, y5c
        saved = {}
        for mod, short in ((y5, "models.yolo"), (y5c, "models.common")):
            for k, v in vars(mod).items():
                if isinstance(v, type) and v.__module__ == mod.__name__:
                    saved[v] = v.__module__
                    v.__module__ = short
        if old_name:       # before v6.2 the class was models.yolo.Model
            y5.DetectionModel.__qualname__ = y5.DetectionModel.__name__ = "Model"
        try:
            torch.save(ckpt, path)
        finally:
            for v, m in saved.items():
                v.__module__ = m
            y5.DetectionModel.__qualname__ = y5.DetectionModel.__name__ = "DetectionModel"
    else:
        torch.save(ckpt, path)
    refs[name] = out.numpy()
    det = model.model[-1]
    cases[name] = {"file": path.name, "family": "yolov5", "nc": 3, "names": list(NAMES.values()),
                   "strides": [int(s) for s in det.stride.tolist()],
                   "anchors_px": (det.anchors * det.stride.view(-1, 1, 1)).view(det.nl, -1).tolist()}


yolov5_case("yolov5n_pip", Y5 / "models" / "yolov5n.yaml", checkout=False)
yolov5_case("yolov5n_checkout", Y5 / "models" / "yolov5n.yaml", checkout=True)
yolov5_case("yolov5s6_checkout_v60", Y5 / "models" / "hub" / "yolov5s6.yaml", checkout=True, old_name=True)

# ------------------------------------------------------------------ ultralytics (trainer layout)
from ultralytics import __version__ as ul_version  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import IterableSimpleNamespace  # noqa: E402
from ultralytics.utils.torch_utils import ModelEMA as ULEMA, strip_optimizer  # noqa: E402


def ultralytics_case(name, cfg):
    model = DetectionModel(cfg, nc=3, verbose=False)
    model.names = dict(NAMES)
    model.args = IterableSimpleNamespace(imgsz=H, model=cfg if isinstance(cfg, str) else "custom.yaml",
                                         data="shapes.yaml", epochs=10, task="detect")
    perturb_bn(model)
    model = fp16_roundtrip(model)
    model.eval()
    with torch.no_grad():
        out = model(x)[0]
    ema = ULEMA(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = {"epoch": 9, "best_fitness": 0.5, "stopper": {"best_fitness": 0.5, "best_epoch": 9}, "model": None,
            "ema": copy.deepcopy(ema.ema).half(), "updates": 100, "modelopt": None,
            "optimizer": opt.state_dict(), "scaler": {}, "train_args": dict(vars(model.args)),
            "train_metrics": {"metrics/mAP50(B)": 0.5, "fitness": 0.5}, "train_results": {},
            "date": datetime.now().isoformat(), "version": ul_version}
    last = OUT / f"{name}_last.pt"
    torch.save(ckpt, last)
    best = OUT / f"{name}_best.pt"
    strip_optimizer(last, best)
    refs[name] = out.numpy()
    det = model.model[-1]
    cases[name] = {"file": best.name, "last": last.name, "family": "yolov8", "nc": 3,
                   "names": list(NAMES.values()), "strides": [int(s) for s in det.stride.tolist()]}


ultralytics_case("yolov8n", "yolov8n.yaml")
ultralytics_case("yolo11n", "yolo11n.yaml")


def multiples_yaml(name, depth, width):
    """A hand-written yaml as many users' are: depth_multiple / width_multiple, no `scales` / `scale`."""
    import yaml as pyyaml
    from ultralytics.utils import ROOT

    d = pyyaml.safe_load((ROOT / "cfg" / "models" / name).read_text())
    d.pop("scales")
    d.update(depth_multiple=depth, width_multiple=width)
    return d


ultralytics_case("yolov8s_multiples", multiples_yaml("v8/yolov8.yaml", 0.33, 0.50))   # is yolov8s
ultralytics_case("yolov8_custom", multiples_yaml("v8/yolov8.yaml", 0.33, 0.375))     # no named scale
ultralytics_case("yolo11_custom", multiples_yaml("11/yolo11.yaml", 0.50, 0.375))
torch.save({"model": {k: v.half() for k, v in torch.load(OUT / "yolo11n_best.pt", weights_only=False)["model"]
                      .state_dict().items()}}, OUT / "yolo11n_state_dict.pt")  # no yaml: the shapes tell
ultralytics_case("yolo26n", "yolo26n.yaml")


def one2one_refs(name):
    """YOLO26: the one-to-one branch's decoded rows (what inference runs) and the end-to-end top-k output,
    both from upstream's own Detect code on the checkpoint just written."""
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(OUT / cases[name]["file"], device="cpu")[0].float().eval()
    det = model.model[-1]
    feats = []
    hook = det.register_forward_pre_hook(lambda m, inp: feats.append(inp[0]))
    with torch.no_grad():
        model(x)
        hook.remove()
        rows = det._inference(det.forward_head(feats[0], det.one2one_cv2, det.one2one_cv3))
        det.end2end = True
        det.max_det = 50
        topk = model(x)[0]
    refs[f"{name}_one2one"] = rows.numpy()
    refs[f"{name}_topk"] = topk.numpy()
    cases[name]["one2one"] = f"{name}_one2one"


one2one_refs("yolo26n")


np.savez(OUT / "refs.npz", **refs)
(OUT / "cases.json").write_text(json.dumps(cases, indent=2))
print(json.dumps({k: list(v.shape) for k, v in refs.items()}))
