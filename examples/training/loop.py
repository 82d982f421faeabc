"""The training loop both shipped detectors use: AdamW, warmup + cosine LR, EMA, eval, checkpoints."""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolobuild.runtime.decode import nms_input
from yolobuild.runtime.metrics import coco_map, detections_from_nms
from yolobuild.runtime.nms import non_max_suppression
from yolobuild.runtime.preprocess import preprocess

from .data import make_batch


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
def evaluate(model, split_dir: Path, size: int, head_kind: str, batch: int = 16) -> dict:
    """COCO mAP with yolobuild's own preprocess and NMS (conf 0.001, IoU 0.6)."""
    coco = json.loads((split_dir / "annotations.json").read_text())
    cat_ids = [c["id"] for c in coco["categories"]]
    model.eval()
    dets = []
    ims = coco["images"]
    for s in range(0, len(ims), batch):
        chunk = ims[s:s + batch]
        pre = [preprocess(split_dir / "images" / im["file_name"], size, size) for im in chunk]
        x = torch.from_numpy(np.concatenate([p[0] for p in pre], 0))
        y = nms_input(model(x).float().numpy(), {"head_kind": head_kind})
        for k, im in enumerate(chunk):
            rows = non_max_suppression(y[k], conf_thres=0.001, iou_thres=0.6)
            if len(rows):
                rows = rows.copy()
                rows[:, :4] = pre[k][1].to_image(rows[:, :4])
            dets += detections_from_nms(im["id"], rows, cat_ids)
    return coco_map(dets, split_dir / "annotations.json")


def _optimizer(model, lr: float, weight_decay: float):
    decay, no_decay = [], []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            (decay if name == "weight" and not isinstance(mod, nn.BatchNorm2d) else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.937, 0.999))


def fp16_state(model) -> dict:
    """A state_dict with float tensors stored as fp16: half the file, loaders cast back to fp32."""
    return {k: (v.detach().to(torch.float16) if v.dtype.is_floating_point else v.detach()).clone().contiguous()
            for k, v in model.state_dict().items()}


def train(model, loss_fn, images, labels, eval_dir: Path, args, rng, head_kind: str, on_epoch=None):
    """Train in place; evaluate the EMA every args.eval_every epochs; on_epoch(state, info) after each epoch
    with the best EMA weights so far (or the latest before the first eval). Returns (best state, info)."""
    size = args.size
    opt = _optimizer(model, args.lr, args.weight_decay)
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
    info = {}
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = rng.permutation(len(images))
        mloss = torch.zeros(3)
        for bi in range(nb):
            idx = perm[bi * args.batch:(bi + 1) * args.batch]
            x, targets = make_batch(images, labels, idx, rng, size, crop_side=getattr(args, "crop", None))
            for g in opt.param_groups:
                g["lr"] = lr_at(it)
            preds = model(x)
            loss, items = loss_fn(preds, targets, model.stride)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update(model)
            mloss = (mloss * bi + items) / (bi + 1)
            it += 1
            if args.log_every and (bi + 1) % args.log_every == 0:
                print(f"  epoch {epoch + 1} batch {bi + 1}/{nb} loss {' '.join(f'{v:.4f}' for v in mloss)} "
                      f"{(bi + 1) * args.batch / (time.time() - t0):.1f} img/s", flush=True)
        dt = time.time() - t0
        msg = (f"epoch {epoch + 1:3d}/{args.epochs} lr {lr_at(it - 1):.2e} loss "
               f"{' '.join(f'{v:.4f}' for v in mloss)}  {dt:.0f}s ({len(images) / dt:.0f} img/s), "
               f"elapsed {(time.time() - t_start) / 60:.1f} min")
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            te = time.time()
            m = evaluate(ema.ema, eval_dir, size, head_kind)
            msg += f"  | EMA eval mAP50 {m['mAP50']:.4f} mAP50-95 {m['mAP50_95']:.4f} ({time.time() - te:.0f}s)"
            if m["mAP50_95"] > best["mAP50_95"]:
                best, best_epoch = m, epoch + 1
                best_state = {k: v.detach().clone() for k, v in ema.ema.state_dict().items()}
        print(msg, flush=True)
        info = {"epochs": args.epochs, "epochs_done": epoch + 1, "images": len(images), "seed": args.seed,
                "best_epoch": best_epoch, "minutes": round((time.time() - t_start) / 60, 1),
                "mAP50": round(best["mAP50"], 4), "mAP50_95": round(best["mAP50_95"], 4)}
        if on_epoch is not None:
            on_epoch(best_state if best_state is not None else ema.ema.state_dict(), info)
    return best_state, info
