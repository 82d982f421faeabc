"""Training machinery shared by yolobuild's shipped detectors (examples/train_detector.py)."""
