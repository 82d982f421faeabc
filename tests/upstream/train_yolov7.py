"""Run INSIDE the upstream test venv, with the `yolov7detect` sdist's root and tests/upstream/stubs on
PYTHONPATH: the sdist's own train.py, unchanged, as `python train.py ARGS` runs it in a checkout of
WongKinYiu/yolov7 (see yolov7_repo.py for what is adapted around it). Never imports yolobuild.

usage: python train_yolov7.py SDIST_ROOT TRAIN_ARGS...   (e.g. --cfg yolov7-tiny.yaml --data data.yaml ...)
"""
import runpy
import sys
from pathlib import Path

import yolov7_repo

yolov7_repo.compat()
yolov7_repo.original_repo_modules()
train_py = Path(sys.argv[1]) / "yolov7" / "train.py"
sys.argv = [str(train_py), *sys.argv[2:]]
runpy.run_path(str(train_py), run_name="__main__")
