"""Train one of yolobuild's shipped detectors on its generated data set.

    python examples/train_detector.py --dataset shapes   # the demo: YOLOv5n on shapes (= train_demo.py)
    python examples/train_detector.py --dataset bench    # the int8 benchmark: YOLOv8n on bench
    nice -n 19 python examples/train_detector.py --dataset bench --threads 1   # on a shared machine
    python examples/train_detector.py --dataset bench --epochs 2 --images 200 --out /tmp/try.pt

Each data set has a preset (model, epochs, images, LR, output asset) that reproduces the shipped
weights; any flag overrides it. Steps: generate the `train` split (a yolobuild.data generator),
hold it in RAM, for an anchor-based head fit anchors to its boxes (k-means, 1-IoU distance),
train with the head's loss (YOLOv5: anchor matching + CIoU + objectness; YOLOv8: task-aligned
assignment + CIoU + DFL), AdamW with warmup and cosine decay and an EMA of the weights, and
evaluate the EMA model on the `eval` split (100 images, seed 0: the split yolobuild evaluates on
and never trains on) with yolobuild's own preprocess, NMS (conf 0.001, IoU 0.6) and COCO mAP.

The output is a plain dict with fp16 weights that loads with torch.load(path, weights_only=True);
it is rewritten after every epoch (the best EMA so far), so a stopped run still leaves a model.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.training.anchors import anchor_report, fit_anchors  # noqa: E402
from examples.training.data import ensure_split, load_split  # noqa: E402
from examples.training.loop import evaluate, train  # noqa: E402
from yolobuild.ops.model import build_from_meta  # noqa: E402

ASSETS = ROOT / "yolobuild" / "assets"
EVAL_SPLIT = dict(split="eval", count=100, seed=0)

# model name -> what yolobuild's checkpoint metadata calls it
MODELS = {
    "yolov5n": {"family": "yolov5", "scale": "n", "layout": "v6", "head_kind": "anchor_based"},
    "yolov8n": {"family": "yolov8", "scale": "n", "layout": "v8", "head_kind": "anchor_free"},
}

# data set -> the settings its shipped weights were trained with
PRESETS = {
    "shapes": {"model": "yolov5n", "epochs": 15, "images": 2000, "lr": 2e-3, "eval_every": 3, "warmup_epochs": 1.5,
               "out": ASSETS / "demo-yolov5n-shapes.pt"},
    "bench": {"model": "yolov8n", "epochs": 4, "images": 3000, "lr": 2e-3, "eval_every": 1, "warmup_epochs": 0.4,
              "crop": 256,
              "out": ASSETS / "bench-yolov8n.pt"},
}


def parse_args(argv=None, dataset_default: str = "shapes"):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(PRESETS), default=dataset_default)
    ap.add_argument("--model", choices=sorted(MODELS), help="default: the data set's preset")
    ap.add_argument("--out", type=Path, help="checkpoint to write (default: the shipped asset)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--images", type=int, help="training images (split 'train')")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--crop", type=int, help="train on random CROP x CROP windows of the SIZE images (cheaper steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, help="AdamW peak learning rate")
    ap.add_argument("--lrf", type=float, default=0.02, help="final LR as a fraction of --lr")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float)
    ap.add_argument("--ema-decay", type=float, default=0.998)
    ap.add_argument("--ema-tau", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--log-every", type=int, default=0, help="print the running loss every N batches")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on a busy shared machine 1 is several times faster (no OpenMP spin-waits)")
    ap.add_argument("--data-dir", type=Path, help="where generated splits are kept (default: a temp folder)")
    args = ap.parse_args(argv)
    for k, v in PRESETS[args.dataset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.data_dir is None:
        args.data_dir = Path(tempfile.gettempdir()) / f"yolobuild-{args.dataset}"
    return args


def build_model(spec: dict, names, labels, seed: int):
    """A fresh model; an anchor-based head gets anchors fitted to the training boxes."""
    anchors = None
    if spec["head_kind"] == "anchor_based":
        wh = np.concatenate([l[:, 3:5] - l[:, 1:3] for l in labels if len(l)], 0)
        fitted = fit_anchors(wh, seed=seed)
        anchors = [[round(float(v), 1) for v in fitted[3 * i:3 * i + 3].reshape(-1)] for i in range(3)]
        print(f"anchors (px): {anchors}  {anchor_report(wh, np.asarray(anchors).reshape(-1, 2))}", flush=True)
    model = build_from_meta({**spec, "nc": len(names), "anchors": anchors})
    model.names = list(names)
    return model, anchors


def make_loss(spec: dict, model, size: int):
    if spec["head_kind"] == "anchor_based":
        from examples.training.loss_v5 import YoloV5Loss
        return YoloV5Loss(model, size)
    from examples.training.loss_v8 import YoloV8Loss
    return YoloV8Loss(model)


def checkpoint(spec: dict, names, anchors, model, size: int, state: dict, info: dict) -> dict:
    return {
        "format": "yolobuild-checkpoint/1",
        "family": spec["family"], "scale": spec["scale"], "layout": spec["layout"],
        "nc": len(names), "names": list(names), "anchors": anchors,
        "strides": [int(s) for s in model.stride],
        "input_size": [size, size],
        "state_dict": {k: (v.detach().to(torch.float16) if v.dtype.is_floating_point else v.detach()).contiguous()
                       for k, v in state.items()},
        "train": dict(info),
    }


def save(ckpt: dict, out: Path) -> None:
    """Write beside and rename: a run stopped mid-write keeps the previous epoch's file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)


def main(argv=None, dataset_default: str = "shapes") -> int:
    args = parse_args(argv, dataset_default)
    generator = importlib.import_module(f"yolobuild.data.{args.dataset}")
    spec, names, size = MODELS[args.model], generator.CLASS_NAMES, args.size
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_dir = ensure_split(generator, args.data_dir, "train", args.images, size, args.seed)
    eval_dir = ensure_split(generator, args.data_dir, size=size, **EVAL_SPLIT)
    images, labels = load_split(train_dir)
    print(f"{args.dataset}: train {len(images)} images, {sum(len(v) for v in labels)} boxes; eval {eval_dir}; "
          f"model {args.model}", flush=True)

    model, anchors = build_model(spec, names, labels, args.seed)
    model.train()
    loss_fn = make_loss(spec, model, size)
    on_epoch = lambda state, info: save(checkpoint(spec, names, anchors, model, size, state, info), args.out)  # noqa: E731
    t0 = time.time()
    best_state, info = train(model, loss_fn, images, labels, eval_dir, args, rng, spec["head_kind"], on_epoch)
    save(checkpoint(spec, names, anchors, model, size, best_state, info), args.out)

    # check the file as a user would load it: fresh model, float32 weights, strict load
    loaded = torch.load(args.out, weights_only=True)
    fresh = build_from_meta(loaded)
    fresh.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in loaded["state_dict"].items()},
                          strict=True)
    m = evaluate(fresh, eval_dir, size, spec["head_kind"])
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), best epoch {info['best_epoch']}, "
          f"training {(time.time() - t0) / 60:.1f} min", flush=True)
    print(f"final (fp16 checkpoint reloaded) eval mAP50 {m['mAP50']:.4f} mAP50-95 {m['mAP50_95']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
