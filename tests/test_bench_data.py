"""The bench data set (yolobuild.data.bench): deterministic, hard in the ways it promises (12 classes,
objects down to ~8 px, overlap), valid COCO; and a small build of recipe=bench end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from yolobuild.data import bench, generator
from yolobuild.validate import ASSETS_DIR

from .conftest import build_dir, cli_in_process


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "eval"
    bench.generate(out, split="eval", count=40, size=320, seed=0)
    return out, json.loads((out / "annotations.json").read_text())


def test_same_seed_same_bytes_other_seed_or_split_differs(tmp_path):
    a = files_of(bench.generate(tmp_path / "a", split="calib", count=5, size=320, seed=3))
    b = files_of(bench.generate(tmp_path / "b", split="calib", count=5, size=320, seed=3))
    assert a == b and len(a) == 6                    # 5 images + annotations.json, byte for byte
    c = files_of(bench.generate(tmp_path / "c", split="calib", count=5, size=320, seed=4))
    d = files_of(bench.generate(tmp_path / "d", split="eval", count=5, size=320, seed=3))
    assert a["images/calib_00000.jpg"] != c["images/calib_00000.jpg"]
    assert a["images/calib_00000.jpg"] != d["images/eval_00000.jpg"]


def test_generator_table_dispatches_bench():
    assert generator("bench") is bench and generator("shapes").__name__ == "yolobuild.data.shapes"
    assert generator("nope") is None


def test_twelve_classes_all_present(split):
    _, coco = split
    assert len(bench.CLASS_NAMES) >= 10 and len(set(bench.CLASS_NAMES)) == len(bench.CLASS_NAMES)
    assert [c["name"] for c in coco["categories"]] == list(bench.CLASS_NAMES)
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in coco["categories"]}


def test_small_objects_overlap_and_crowding(split):
    _, coco = split
    boxes = np.array([a["bbox"] for a in coco["annotations"]])
    side = np.sqrt(boxes[:, 2] * boxes[:, 3])
    assert side.min() <= 9 and (side < 16).mean() > 0.1 and side.max() > 100
    assert len(coco["annotations"]) / len(coco["images"]) > 5
    overlapping = 0
    for im in coco["images"]:
        b = np.array([a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]])
        x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
        iw = (np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None])).clip(0)
        ih = (np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None])).clip(0)
        overlapping += int(((iw * ih) > 0).sum() > len(b))       # some pair other than a box with itself
    assert overlapping >= 10


def test_annotations_are_valid_coco(split):
    out, coco = split
    image_ids = {im["id"] for im in coco["images"]}
    assert len(image_ids) == len(coco["images"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    cats = {c["id"] for c in coco["categories"]}
    for im in coco["images"]:
        assert (out / "images" / im["file_name"]).is_file() and im["width"] == im["height"] == 320
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["image_id"] in image_ids and a["category_id"] in cats and a["iscrowd"] == 0
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 320.01 and y + h <= 320.01
        assert a["area"] == pytest.approx(w * h, abs=0.02)
    from yolobuild.runtime.metrics import coco_map        # the ground truth as detections scores 1.0
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco["annotations"]]
    assert coco_map(dets, out / "annotations.json")["mAP50_95"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(not (ASSETS_DIR / "bench-yolov8n.pt").exists(), reason="bench weights not shipped")
def test_bench_recipe_builds_with_parity(tmp_path):
    code, out, err = cli_in_process("recipe=bench", "target=onnxruntime", "precision=fp32",
                                    "dataset.generator.eval_count=6", f"workspace.path={tmp_path / 'ws'}")
    assert code == 0, out + err
    m = json.loads((build_dir(tmp_path / "ws", "bench_onnxruntime_fp32_320x320") / "manifest.json").read_text())
    assert m["status"] == "compiled" and m["recipe"] == "bench"
    for field in ("boxes", "class_scores"):
        assert m["parity"][field]["cosine"] >= 0.9999, m["parity"]
    assert m["metrics"]["pytorch_fp32"]["mAP50_95"] > 0.2
    assert abs(m["metrics"]["built"]["mAP50_95"] - m["metrics"]["pytorch_fp32"]["mAP50_95"]) < 0.005
