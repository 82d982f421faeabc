"""Train yolobuild's shipped demo detector: YOLOv5n (v6 layout) on synthetic shapes at 320x320.

    python examples/train_demo.py                      # the settings the shipped weights used
    python examples/train_demo.py --epochs 5 --images 200 --out /tmp/try.pt

The same as `examples/train_detector.py --dataset shapes` (which documents the steps); the
output is a plain dict that loads with torch.load(path, weights_only=True).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_detector import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(dataset_default="shapes"))
