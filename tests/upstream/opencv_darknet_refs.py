"""Run INSIDE a venv with opencv-python-headless < 4.11 (OpenCV's own Darknet reader, an implementation
independent of yolobuild): the [yolo] layers' outputs of a cfg + .weights on a fixed input.

usage: python opencv_darknet_refs.py CFG WEIGHTS OUT.npz
"""
import sys, numpy as np, cv2
cfg, weights, out = sys.argv[1:4]
net = cv2.dnn.readNetFromDarknet(cfg, weights)
rng = np.random.default_rng(7)
x = rng.random((1, 3, 416, 416), dtype=np.float32)
net.setInput(x)
outs = net.forward(net.getUnconnectedOutLayersNames())
np.savez(out, input=x, **{f"o{i}": o for i, o in enumerate(outs)})
