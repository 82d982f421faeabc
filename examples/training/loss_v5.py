"""YOLOv5 anchor-based loss (and the CIoU both heads' losses use), written from the published method."""
from __future__ import annotations

import math

import torch
from torch import nn


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
