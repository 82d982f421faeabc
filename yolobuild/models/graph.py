"""The sequential YOLO graph both YOLOv5 and YOLOv8 models run: layers with `from` indices."""
from __future__ import annotations

from torch import nn


class SequentialDetector(nn.Module):
    """`self.model` is an nn.Sequential whose layers carry `.f` (inputs: -1 = previous layer, or
    indices) and `.i`; outputs of the layers listed in `self.save` are kept for later layers."""

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    @property
    def detect(self) -> nn.Module:
        return self.model[-1]
