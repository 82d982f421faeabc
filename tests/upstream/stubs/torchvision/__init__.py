"""Test-only stand-in for torchvision (PyPI's wheel here is a CUDA build): just what the
upstream yolov5 / ultralytics packages import. Never used by yolobuild itself."""
import types

import torch

__version__ = "0.28.0"


def _box_iou(a, b):
    area = lambda t: (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)  # noqa: E731
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def _nms(boxes, scores, iou_threshold):
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    iou = _box_iou(boxes, boxes).triu(1)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):            # vectorised per kept box
        if keep[i]:
            keep &= ~(iou[i] > iou_threshold)
    return order[keep]


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    off = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + off[:, None], scores, iou_threshold)


ops = types.ModuleType("torchvision.ops")
ops.nms, ops.batched_nms, ops.box_iou = _nms, _batched_nms, _box_iou


class _T:
    def __init__(self, *a, **k):
        self.a, self.k = a, k

    def __call__(self, x):
        return x


transforms = types.ModuleType("torchvision.transforms")
for _n in ("Compose", "ToTensor", "Normalize", "Resize", "CenterCrop", "RandomResizedCrop", "RandomHorizontalFlip",
           "ColorJitter", "RandomErasing", "InterpolationMode", "Lambda", "ConvertImageDtype", "AutoAugment",
           "RandAugment", "AugMix", "TrivialAugmentWide", "RandomCrop", "Pad"):
    setattr(transforms, _n, type(_n, (_T,), {}))
transforms.functional = types.ModuleType("torchvision.transforms.functional")
datasets = types.ModuleType("torchvision.datasets")
datasets.ImageFolder = type("ImageFolder", (_T,), {})
models = types.ModuleType("torchvision.models")
utils = types.ModuleType("torchvision.utils")

import sys  # noqa: E402

for _m in (ops, transforms, transforms.functional, datasets, models, utils):
    sys.modules[_m.__name__] = _m
