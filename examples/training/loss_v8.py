"""YOLOv8 anchor-free loss, written from the published method (TOOD task-aligned assignment).

Each ground-truth box takes the top-k anchor points inside it by s^alpha * IoU^beta (s: the
predicted score of its class); a point claimed by several boxes goes to the one it overlaps
most. Classes: BCE towards the normalised alignment; boxes: CIoU plus distribution focal loss
on the left/top/right/bottom distances, both weighted by that alignment.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .loss_v5 import bbox_ciou


def _xyxy_to_xywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat(((b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]), -1)


def _pairwise_iou(gt: torch.Tensor, pred: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of (bs, m, 4) gt and (bs, n, 4) predicted xyxy boxes -> (bs, m, n)."""
    lt = torch.max(gt[:, :, None, :2], pred[:, None, :, :2])
    rb = torch.min(gt[:, :, None, 2:], pred[:, None, :, 2:])
    inter = (rb - lt).clamp(0).prod(-1)
    area_g = (gt[..., 2:] - gt[..., :2]).clamp(0).prod(-1)[:, :, None]
    area_p = (pred[..., 2:] - pred[..., :2]).clamp(0).prod(-1)[:, None, :]
    return inter / (area_g + area_p - inter + eps)


class TaskAlignedAssigner:
    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def __call__(self, scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask):
        """scores (bs, n, nc) sigmoid, pred_boxes (bs, n, 4) and gt_boxes (bs, m, 4) xyxy pixels,
        points (n, 2) pixels, gt_labels (bs, m) long, gt_mask (bs, m) bool
        -> target boxes (bs, n, 4), target scores (bs, n, nc), foreground mask (bs, n)."""
        bs, n, nc = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return torch.zeros_like(pred_boxes), torch.zeros_like(scores), torch.zeros((bs, n), dtype=torch.bool)
        lt = points[None, None] - gt_boxes[:, :, None, :2]
        rb = gt_boxes[:, :, None, 2:] - points[None, None]
        inside = (torch.cat((lt, rb), -1).amin(-1) > self.eps) & gt_mask[:, :, None]       # (bs, m, n)
        iou = _pairwise_iou(gt_boxes, pred_boxes) * inside
        cls_score = scores.gather(2, gt_labels[:, None, :].expand(bs, n, m)).transpose(1, 2)  # (bs, m, n)
        align = cls_score.pow(self.alpha) * iou.pow(self.beta) * inside
        top = align.topk(min(self.topk, n), dim=-1).indices
        is_top = torch.zeros_like(align, dtype=torch.bool).scatter_(-1, top, True)
        pos = is_top & inside                                                                # (bs, m, n)
        many = pos.sum(1) > 1                                                                # (bs, n)
        if many.any():
            best = F.one_hot(iou.argmax(1), m).transpose(1, 2).bool()                        # (bs, m, n)
            pos = torch.where(many[:, None], best, pos)
        fg = pos.any(1)
        gt_idx = pos.float().argmax(1)                                                       # (bs, n)
        batch = torch.arange(bs)[:, None]
        target_boxes = gt_boxes[batch, gt_idx]
        target_labels = gt_labels[batch, gt_idx]
        align = align * pos
        norm = (align * (iou * pos).amax(-1, keepdim=True) / (align.amax(-1, keepdim=True) + self.eps)).amax(1)
        target_scores = F.one_hot(target_labels, nc).float() * (norm * fg)[..., None]
        return target_boxes, target_scores, fg


class YoloV8Loss:
    """Box (CIoU) 7.5, classes (BCE) 0.5, DFL 1.5: the published gains."""

    def __init__(self, model, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5, topk: int = 10):
        det = model.model[-1]
        self.nc, self.reg_max = det.nc, det.reg_max
        self.strides = [float(s) for s in det.stride]
        self.box_gain, self.cls_gain, self.dfl_gain = box, cls, dfl
        self.assigner = TaskAlignedAssigner(topk=topk)
        self.bins = torch.arange(self.reg_max, dtype=torch.float32)

    def _points(self, preds):
        pts, strides = [], []
        for p, s in zip(preds, self.strides):
            ny, nx = p.shape[2:]
            yy, xx = torch.meshgrid(torch.arange(ny) + 0.5, torch.arange(nx) + 0.5, indexing="ij")
            pts.append(torch.stack((xx, yy), -1).view(-1, 2))
            strides.append(torch.full((ny * nx, 1), s))
        return torch.cat(pts), torch.cat(strides)

    def __call__(self, preds, targets, strides=None):
        bs = preds[0].shape[0]
        flat = torch.cat([p.view(bs, p.shape[1], -1) for p in preds], 2).transpose(1, 2)    # (bs, n, no)
        dist_logits, cls_logits = flat[..., :4 * self.reg_max], flat[..., 4 * self.reg_max:]
        points, stride = self._points(preds)                                                # grid units
        dist = dist_logits.view(bs, -1, 4, self.reg_max).softmax(-1) @ self.bins             # (bs, n, 4)
        pred_boxes = torch.cat((points - dist[..., :2], points + dist[..., 2:]), -1)       # grid units

        counts = torch.bincount(targets[:, 0].long(), minlength=bs) if len(targets) else torch.zeros(bs, dtype=torch.long)
        m = int(counts.max()) if bs else 0
        gt = torch.zeros((bs, m, 5))
        gt_mask = torch.zeros((bs, m), dtype=torch.bool)
        for b in range(bs):
            t = targets[targets[:, 0] == b]
            if len(t):
                xy, wh = t[:, 2:4], t[:, 4:6]
                gt[b, :len(t)] = torch.cat((t[:, 1:2], xy - wh / 2, xy + wh / 2), 1)
                gt_mask[b, :len(t)] = True
        target_boxes, target_scores, fg = self.assigner(
            cls_logits.detach().sigmoid(), (pred_boxes.detach() * stride).to(gt.dtype), points * stride,
            gt[..., 0].long(), gt[..., 1:], gt_mask)
        norm = max(float(target_scores.sum()), 1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum") / norm
        loss_box = loss_dfl = torch.zeros(())
        if fg.any():
            weight = target_scores.sum(-1)[fg]
            tb = target_boxes / stride                                                       # grid units
            iou = bbox_ciou(_xyxy_to_xywh(pred_boxes[fg]), _xyxy_to_xywh(tb[fg]))
            loss_box = ((1.0 - iou) * weight).sum() / norm
            pts = points.expand(bs, -1, -1)[fg]
            ltrb = torch.cat((pts - tb[fg][:, :2], tb[fg][:, 2:] - pts), -1).clamp(0, self.reg_max - 1 - 0.01)
            loss_dfl = (self._dfl(dist_logits[fg].view(-1, 4, self.reg_max), ltrb) * weight).sum() / norm
        lbox, lcls, ldfl = loss_box * self.box_gain, loss_cls * self.cls_gain, loss_dfl * self.dfl_gain
        return (lbox + lcls + ldfl) * bs, torch.stack((lbox, lcls, ldfl)).detach()

    def _dfl(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Distribution focal loss: cross-entropy to the two bins around each distance, mean of the 4 sides."""
        left = target.long()
        wl = left + 1 - target
        ce = lambda idx: F.cross_entropy(logits.reshape(-1, self.reg_max), idx.reshape(-1),  # noqa: E731
                                         reduction="none").view(idx.shape)
        return (ce(left) * wl + ce(left + 1) * (1 - wl)).mean(-1)
