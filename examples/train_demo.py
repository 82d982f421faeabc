"""Train yolobuild's shipped demo detector: YOLOv5n (v6 layout) on synthetic shapes at 320x320.

    python examples/train_demo.py                      # the settings the shipped weights used
    python examples/train_demo.py --epochs 5 --images 200 --out /tmp/try.pt

Steps: generate the `train` split with yolobuild.data.shapes, fit anchors to its boxes
(k-means on w, h with 1-IoU distance, sorted by area, three per level), train with a
YOLOv5-style loss (anchor matching at ratio < 4, two neighbouring cells per target,
CIoU box loss, objectness BCE towards the IoU, level balance 4/1/0.4, class BCE), AdamW
with warmup and cosine decay and an EMA of the weights, then evaluate the EMA model on
the `eval` split (100 images, seed 0, the split yolobuild evaluates on and never trains
on) with yolobuild's own preprocess, NMS (conf 0.001, IoU 0.6) and COCO mAP.

The output is a plain dict that loads with torch.load(path, weights_only=True).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from yolobuild.data import shapes  # noqa: E402
from yolobuild.models.yolov5 import build_yolov5  # noqa: E402
from yolobuild.runtime.metrics import coco_map, detections_from_nms  # noqa: E402
from yolobuild.runtime.nms import non_max_suppression  # noqa: E402
from yolobuild.runtime.preprocess import load_rgb, preprocess  # noqa: E402

DEFAULT_OUT = ROOT / "yolobuild" / "assets" / "demo-yolov5n-shapes.pt"
EVAL_SPLIT = dict(split="eval", count=100, size=320, seed=0)


# --------------------------------------------------------------------------- data

def ensure_split(root: Path, split: str, count: int, size: int, seed: int) -> Path:
    out = root / f"{split}-{count}-{size}-{seed}"
    if not (out / "annotations.json").exists():
        t = time.time()
        shapes.generate(out, split=split, count=count, size=size, seed=seed)
        print(f"generated {split} split: {count} images in {time.time() - t:.1f}s -> {out}", flush=True)
    return out


def load_split(path: Path):
    """All images (N, H, W, 3) uint8 and per-image labels (k, 5): class, x1, y1, x2, y2 in pixels."""
    import json

    coco = json.loads((path / "annotations.json").read_text())
    cat_to_cls = {c["id"]: k for k, c in enumerate(coco["categories"])}
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append([cat_to_cls[a["category_id"]], x, y, x + w, y + h])
    images = np.stack([load_rgb(path / "images" / im["file_name"]) for im in coco["images"]])
    labels = [np.asarray(by_image[im["id"]], dtype=np.float32).reshape(-1, 5) for im in coco["images"]]
    return images, labels


def augment(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, size: int):
    """Random zoom/translate (gray fill), horizontal flip, colour jitter. Returns new arrays."""
    from PIL import Image

    lab = lab.copy()
    if rng.random() < 0.5:
        s = rng.uniform(0.75, 1.25)
        tx, ty = rng.uniform(-0.12, 0.12, 2) * size
        # output pixel p maps to input (p - c - t) / s + c with c the centre
        c = size / 2
        a = 1 / s
        coeffs = (a, 0, c - (c + tx) * a, 0, a, c - (c + ty) * a)
        img = np.asarray(Image.fromarray(img).transform((size, size), Image.AFFINE, coeffs,
                                                         resample=Image.BILINEAR, fillcolor=(114, 114, 114)))
        if len(lab):
            b = lab[:, 1:5]
            b = (b - c) * s + c + np.array([tx, ty, tx, ty])
            area0 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            bc = np.clip(b, 0, size)
            area1 = (bc[:, 2] - bc[:, 0]) * (bc[:, 3] - bc[:, 1])
            keep = (area1 > 0.6 * area0) & (bc[:, 2] - bc[:, 0] > 4) & (bc[:, 3] - bc[:, 1] > 4)
            lab = np.concatenate((lab[:, :1], bc), 1)[keep].astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        if len(lab):
            x1 = size - lab[:, 3]
            x2 = size - lab[:, 1]
            lab[:, 1], lab[:, 3] = x1, x2
    # colour jitter: per-channel gain, brightness, contrast, sometimes grayscale
    f = img.astype(np.float32)
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32) * rng.uniform(0.7, 1.3)
    mean = f.mean()
    f = (f - mean) * rng.uniform(0.75, 1.25) + mean
    f = f * gain + rng.uniform(-20, 20)
    if rng.random() < 0.05:
        f = f.mean(2, keepdims=True).repeat(3, 2)
    return np.clip(f, 0, 255).astype(np.uint8), lab


def make_batch(images, labels, idx, rng, size, train=True):
    imgs, targets = [], []
    for j, i in enumerate(idx):
        img, lab = images[i], labels[i]
        if train:
            img, lab = augment(img, lab, rng, size)
        imgs.append(img)
        if len(lab):
            xyxy = lab[:, 1:5]
            xywh = np.concatenate(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            targets.append(np.concatenate((np.full((len(lab), 1), j, np.float32), lab[:, :1], xywh), 1))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs).transpose(0, 3, 1, 2))).float().div_(255)
    t = torch.from_numpy(np.concatenate(targets, 0)) if targets else torch.zeros((0, 6))
    return x, t


# --------------------------------------------------------------------------- anchors

def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    inter = np.minimum(wh[:, None], anchors[None]).prod(2)
    return inter / (wh.prod(1)[:, None] + anchors.prod(1)[None] - inter)


def fit_anchors(wh: np.ndarray, n: int = 9, seed: int = 0, iters: int = 300, restarts: int = 8) -> np.ndarray:
    """k-means on box (w, h) with 1 - IoU distance; best of several restarts by mean best IoU."""
    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centers = wh[rng.choice(len(wh), n, replace=False)].copy()
        for _ in range(iters):
            assign = wh_iou(wh, centers).argmax(1)
            new = np.array([np.median(wh[assign == k], 0) if np.any(assign == k) else centers[k] for k in range(n)])
            if np.allclose(new, centers):
                break
            centers = new
        fit = wh_iou(wh, centers).max(1).mean()
        if fit > best_fit:
            best, best_fit = centers, fit
    return best[np.argsort(best.prod(1))]


def anchor_report(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> str:
    r = wh[:, None] / anchors[None]
    worst = np.maximum(r, 1 / r).max(2)  # (n, 9)
    bpr = (worst.min(1) < thr).mean()
    per_target = (worst < thr).sum(1).mean()
    return f"best possible recall {bpr:.4f}, anchors above threshold per target {per_target:.2f}, " \
           f"mean best IoU {wh_iou(wh, anchors).max(1).mean():.3f}"


# --------------------------------------------------------------------------- loss

def bbox_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matched (n, 4) xywh boxes."""
    b1x1, b1x2 = b1[:, 0] - b1[:, 2] / 2, b1[:, 0] + b1[:, 2] / 2
    b1y1, b1y2 = b1[:, 1] - b1[:, 3] / 2, b1[:, 1] + b1[:, 3] / 2
    b2x1, b2x2 = b2[:, 0] - b2[:, 2] / 2, b2[:, 0] + b2[:, 2] / 2
    b2y1, b2y2 = b2[:, 1] - b2[:, 3] / 2, b2[:, 1] + b2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * \
            (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    w1, h1, w2, h2 = b1[:, 2], b1[:, 3] + eps, b2[:, 2], b2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (b2[:, 0] - b1[:, 0]) ** 2 + (b2[:, 1] - b1[:, 1]) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class YoloV5Loss:
    """Anchor-based YOLOv5 loss, written from the published method."""

    def __init__(self, model, img_size: int, box: float = 0.05, obj: float = 1.0, cls: float = 0.5,
                 anchor_t: float = 4.0, balance=(4.0, 1.0, 0.4)):
        det = model.detect
        self.na, self.nl, self.nc = det.na, det.nl, det.nc
        self.anchors = det.anchors.clone()  # (nl, na, 2) in grid units
        self.anchor_t = anchor_t
        self.balance = list(balance)
        # upstream's scaling of the gains with the number of levels, classes and image size
        self.box_gain = box * 3 / self.nl
        self.obj_gain = obj * (img_size / 640) ** 2 * 3 / self.nl
        self.cls_gain = cls * self.nc / 80 * 3 / self.nl
        self.bce = nn.BCEWithLogitsLoss()
        self.offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5

    def build_targets(self, preds, targets):
        """targets (nt, 6): image, class, x, y, w, h in pixels -> per level matched indices."""
        out = []
        nt = targets.shape[0]
        ai = torch.arange(self.na, dtype=torch.float32).view(self.na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(self.na, 1, 1), ai[..., None]), 2)  # (na, nt, 7)
        for i, p in enumerate(preds):
            ny, nx = p.shape[2:4]
            stride = self.strides[i]
            anchors = self.anchors[i]
            t = t_all.clone()
            t[..., 2:6] /= stride
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.anchor_t
                t = t[keep]
                gxy = t[:, 2:4]
                gxi = torch.tensor([nx, ny], dtype=torch.float32) - gxy
                j, k = ((gxy % 1 < 0.5) & (gxy > 1)).T
                l, m = ((gxi % 1 < 0.5) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[sel]
                offs = (torch.zeros_like(gxy)[None] + self.offsets[:, None])[sel]
            else:
                t = t_all[0]
                offs = 0
            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh = t[:, 2:4], t[:, 4:6]
            gij = (gxy - offs).long()
            gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
            a = t[:, 6].long()
            tbox = torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1)
            out.append((b, a, gj, gi, tbox, anchors[a], c))
        return out

    def __call__(self, preds, targets, strides):
        self.strides = [float(s) for s in strides]
        lbox, lobj, lcls = torch.zeros(()), torch.zeros(()), torch.zeros(())
        for i, (p, (b, a, gj, gi, tbox, anch, tcls)) in enumerate(zip(preds, self.build_targets(preds, targets))):
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype)
            n = b.shape[0]
            if n:
                ps = p[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anch
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
                lbox = lbox + (1.0 - iou).mean()
                score = iou.detach().clamp(0).to(tobj.dtype)
                order = score.argsort()  # when several targets share a cell, the best IoU wins
                tobj[b[order], a[order], gj[order], gi[order]] = score[order]
                tc = torch.zeros_like(ps[:, 5:])
                tc[torch.arange(n), tcls] = 1.0
                lcls = lcls + self.bce(ps[:, 5:], tc)
            lobj = lobj + self.bce(p[..., 4], tobj) * self.balance[i]
        bs = preds[0].shape[0]
        lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * self.cls_gain
        return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()


# --------------------------------------------------------------------------- EMA / eval

class ModelEMA:
    def __init__(self, model, decay: float, tau: float):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


@torch.no_grad()
def evaluate(model, split_dir: Path, size: int, batch: int = 16) -> dict:
    import json

    coco = json.loads((split_dir / "annotations.json").read_text())
    cat_ids = [c["id"] for c in coco["categories"]]
    model.eval()
    dets = []
    ims = coco["images"]
    for s in range(0, len(ims), batch):
        chunk = ims[s:s + batch]
        pre = [preprocess(split_dir / "images" / im["file_name"], size, size) for im in chunk]
        x = torch.from_numpy(np.concatenate([p[0] for p in pre], 0))
        y = model(x).float().numpy()
        for k, im in enumerate(chunk):
            rows = non_max_suppression(y[k], conf_thres=0.001, iou_thres=0.6)
            if len(rows):
                rows = rows.copy()
                rows[:, :4] = pre[k][1].to_image(rows[:, :4])
            dets += detections_from_nms(im["id"], rows, cat_ids)
    return coco_map(dets, split_dir / "annotations.json")


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--images", type=int, default=2000, help="training images (split 'train')")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    ap.add_argument("--lrf", type=float, default=0.02, help="final LR as a fraction of --lr")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.5)
    ap.add_argument("--ema-decay", type=float, default=0.998)
    ap.add_argument("--ema-tau", type=float, default=300)
    ap.add_argument("--box", type=float, default=0.05)
    ap.add_argument("--obj", type=float, default=1.0)
    ap.add_argument("--cls", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "yolobuild-shapes")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = args.size

    train_dir = ensure_split(args.data_dir, "train", args.images, size, args.seed)
    eval_dir = ensure_split(args.data_dir, **EVAL_SPLIT) if size == EVAL_SPLIT["size"] else \
        ensure_split(args.data_dir, "eval", EVAL_SPLIT["count"], size, EVAL_SPLIT["seed"])
    images, labels = load_split(train_dir)
    print(f"train: {len(images)} images, {sum(len(v) for v in labels)} boxes; eval: {eval_dir}", flush=True)

    wh = np.concatenate([l[:, 3:5] - l[:, 1:3] for l in labels if len(l)], 0)
    anchors = fit_anchors(wh, seed=args.seed)
    anchors_px = [[round(float(v), 1) for v in anchors[3 * i:3 * i + 3].reshape(-1)] for i in range(3)]
    print(f"anchors (px): {anchors_px}  {anchor_report(wh, np.asarray(anchors_px).reshape(-1, 2))}", flush=True)

    model = build_yolov5("n", nc=len(shapes.CLASS_NAMES), anchors=anchors_px, layout="v6")
    model.names = list(shapes.CLASS_NAMES)
    model.train()
    strides = [float(s) for s in model.stride]
    loss_fn = YoloV5Loss(model, size, box=args.box, obj=args.obj, cls=args.cls)

    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            (decay if name == "weight" and not isinstance(mod, nn.BatchNorm2d) else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.937, 0.999))
    ema = ModelEMA(model, args.ema_decay, args.ema_tau)

    nb = math.ceil(len(images) / args.batch)
    total = args.epochs * nb
    warm = max(int(args.warmup_epochs * nb), 50)

    def lr_at(it):
        if it < warm:
            return args.lr * (0.01 + 0.99 * it / warm)
        prog = (it - warm) / max(total - warm, 1)
        return args.lr * (args.lrf + (1 - args.lrf) * 0.5 * (1 + math.cos(math.pi * prog)))

    t_start = time.time()
    it = 0
    best = {"mAP50": -1.0, "mAP50_95": -1.0}
    best_state, best_epoch = None, -1
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = rng.permutation(len(images))
        mloss = torch.zeros(3)
        for bi in range(nb):
            idx = perm[bi * args.batch:(bi + 1) * args.batch]
            x, targets = make_batch(images, labels, idx, rng, size)
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
            preds = model(x)
            loss, items = loss_fn(preds, targets, strides)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update(model)
            mloss = (mloss * bi + items) / (bi + 1)
            it += 1
        dt = time.time() - t0
        msg = (f"epoch {epoch + 1:3d}/{args.epochs} lr {lr_at(it - 1):.2e} box {mloss[0]:.4f} obj {mloss[1]:.4f} "
               f"cls {mloss[2]:.4f}  {dt:.0f}s ({len(images) / dt:.0f} img/s), elapsed {(time.time() - t_start) / 60:.1f} min")
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            te = time.time()
            m = evaluate(ema.ema, eval_dir, size)
            msg += f"  | EMA eval mAP50 {m['mAP50']:.4f} mAP50-95 {m['mAP50_95']:.4f} ({time.time() - te:.0f}s)"
            if m["mAP50_95"] > best["mAP50_95"]:
                best, best_epoch = m, epoch + 1
                best_state = {k: v.detach().clone() for k, v in ema.ema.state_dict().items()}
        print(msg, flush=True)
    train_min = (time.time() - t_start) / 60

    state = {k: (v.detach().to(torch.float16) if v.dtype.is_floating_point else v.detach()).contiguous()
             for k, v in best_state.items()}
    ckpt = {
        "format": "yolobuild-checkpoint/1",
        "family": "yolov5",
        "scale": "n",
        "layout": "v6",
        "nc": len(shapes.CLASS_NAMES),
        "names": list(shapes.CLASS_NAMES),
        "anchors": anchors_px,
        "strides": [int(s) for s in strides],
        "input_size": [size, size],
        "state_dict": state,
        "train": {"epochs": args.epochs, "images": len(images), "seed": args.seed,
                  "best_epoch": best_epoch, "minutes": round(train_min, 1),
                  "mAP50": round(best["mAP50"], 4), "mAP50_95": round(best["mAP50_95"], 4)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, args.out)

    # check the file as a user would load it: fresh model, float32 weights, strict load
    loaded = torch.load(args.out, weights_only=True)
    fresh = build_yolov5("n", nc=loaded["nc"], anchors=loaded["anchors"], layout=loaded["layout"])
    fresh.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in loaded["state_dict"].items()},
                          strict=True)
    m = evaluate(fresh, eval_dir, size)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), best epoch {best_epoch}, "
          f"training {train_min:.1f} min", flush=True)
    print(f"final (fp16 checkpoint reloaded) eval mAP50 {m['mAP50']:.4f} mAP50-95 {m['mAP50_95']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
