"""Accuracy without labels: an evaluation folder of images and no annotations is scored by agreement with
the fp32 PyTorch model's own detections, labelled as agreement everywhere it is shown; the report draws
PyTorch fp32 and built detections side by side.

The images are the demo's generated shapes written as PNG without their annotations. The references are
independent of the code under test: the fp32 ONNX Runtime build must agree with PyTorch (~1.0, two
runtimes computing one network), the int8 build must agree less, and PyTorch fp32 and ONNX Runtime fp32
detections drawn side by side must be the same boxes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import built_folder, cli_in_process as cli

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _pngs(folder: Path, split: str, n: int) -> Path:
    from yolobuild.data.shapes import _rng, render

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(render(_rng(7, split, i), 320)[0]).save(folder / f"{split}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("agreement")
    _pngs(root / "eval", "eval", 24)
    _pngs(root / "calib", "calib", 20)
    return root


def _build(root: Path, *args: str) -> tuple[Path, dict, str]:
    code, out, err = cli("recipe=demo", "target=onnxruntime", *args, f"workspace.path={root / 'ws'}",
                         f"cache.dir={root / 'cache'}", "benchmark.enabled=false")
    assert code == 0, out + err
    d = built_folder(root / "ws", out)
    return d, json.loads((d / "manifest.json").read_text()), out


@pytest.fixture(scope="module")
def unlabelled(root):
    folder = ("dataset=folder", f"dataset.calib.path={root / 'calib'}", f"dataset.eval.images={root / 'eval'}")
    return {p: _build(root, f"precision={p}", *folder) for p in ("fp32", "int8")}


def test_fp32_agrees_with_pytorch_and_int8_less(unlabelled):
    (d32, m32, out32), (d8, m8, out8) = unlabelled["fp32"], unlabelled["int8"]
    for d, m in ((d32, m32), (d8, m8)):
        metrics = m["metrics"]
        assert metrics["kind"] == "agreement" and metrics["images"] == 24 and metrics["agreement_conf"] == 0.25
        assert "built" not in metrics and "delta_mAP50_95" not in metrics   # never read as a mAP against labels
        assert metrics["reference_boxes"] > 24
        assert metrics["fp32_self_agreement"]["mAP50_95"] > 0.99
        assert json.loads((d / "metrics.json").read_text()) == metrics
    a32, a8 = m32["metrics"]["agreement_mAP50_95"], m8["metrics"]["agreement_mAP50_95"]
    assert a32 > 0.99 and abs(m32["metrics"]["delta_agreement"]) < 1.0
    assert 0.5 < a8 < a32 and m8["metrics"]["delta_agreement"] < 0
    assert m8["metrics"]["delta_agreement"] == pytest.approx(
        (a8 - m8["metrics"]["fp32_self_agreement"]["mAP50_95"]) * 100, abs=1e-3)
    # the summary line says what the figure is
    assert re.search(rf"{m8['metrics']['fp32_self_agreement']['mAP50_95']:.4f} → {a8:.4f} \(agreement\)", out8), out8


def test_reports_label_agreement(unlabelled):
    d, m, _ = unlabelled["int8"]
    md, html = (d / "report.md").read_text(), (d / "report.html").read_text()
    assert "## Agreement with PyTorch fp32 on 24 evaluation images (no labels)" in md
    assert f"| built (int8) | {m['metrics']['agreement_mAP50_95']:.4f} |" in md
    assert "## Accuracy on" not in md
    assert "Agreement with PyTorch fp32 on 24 evaluation images (no labels)" in html and "agreement mAP50-95" in html


def test_the_sweep_summary_labels_agreement(unlabelled):
    from yolobuild.sweep.rows import row_from_manifest
    from yolobuild.sweep.terminal import _accuracy

    d, m, _ = unlabelled["int8"]
    row = row_from_manifest(["precision=int8"], 0, m, d, None)
    assert row["accuracy_kind"] == "agreement" and row["map_built"] == m["metrics"]["agreement_mAP50_95"]
    assert _accuracy(row).endswith("(agreement)")


def test_side_by_side_fp32_onnxruntime_draws_pytorchs_boxes(unlabelled):
    """ONNX Runtime fp32 computes what PyTorch does: both sides of each pair hold the same detections."""
    d, m, _ = unlabelled["fp32"]
    doc = json.loads((d / "side_by_side" / "detections.json").read_text())
    assert len(doc["images"]) == 4 and sum(len(e["fp32"]) for e in doc["images"]) > 4
    for e in doc["images"]:
        assert [x["class"] for x in e["fp32"]] == [x["class"] for x in e["built"]]
        assert np.allclose([x["box"] for x in e["fp32"]], [x["box"] for x in e["built"]], atol=0.5)
        with Image.open(d / "side_by_side" / e["file"]) as im:
            assert im.format == "PNG" and im.width > 2 * 300 and im.height > 320
    html = (d / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "side by side" in html
    md = (d / "report.md").read_text()
    assert all(f"(side_by_side/{e['file']})" in md for e in doc["images"])


def test_int8_side_by_side_differs_somewhere(unlabelled):
    d, _, _ = unlabelled["int8"]
    doc = json.loads((d / "side_by_side" / "detections.json").read_text())
    assert doc["built"] == "built int8 (onnxruntime)"
    scores = [(a["score"], b["score"]) for e in doc["images"] for a, b in zip(e["fp32"], e["built"])]
    assert scores and any(abs(a - b) > 1e-4 for a, b in scores)


def test_labels_say_kind_labels(root):
    _, m, out = _build(root, "precision=fp32", "dataset.generator.eval_count=16")
    assert m["metrics"]["kind"] == "labels" and "delta_mAP50_95" in m["metrics"]
    assert "(agreement)" not in out


def test_random_weights_skip_agreement_and_the_pairs(root, tmp_path):
    code, out, err = cli("plan", "recipe=demo", "target=onnxruntime", "model.weights=random", "dataset=folder",
                         f"dataset.calib.path={root / 'calib'}", f"dataset.eval.images={root / 'eval'}",
                         f"workspace.path={tmp_path / 'ws'}")
    assert code == 0, out + err
    assert "note: evaluate skipped: random weights detect nothing worth a mAP or an agreement figure" in out
    ops = [line.split()[1] for line in out.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert "prepare_inputs" in ops and "evaluate" not in ops and "compare_detections" not in ops


def test_annotations_without_images_is_one_line(root, tmp_path):
    (tmp_path / "a.json").write_text('{"images": []}')
    code, out, err = cli("validate", "recipe=demo", "dataset=folder", f"dataset.calib.path={root / 'calib'}",
                         f"dataset.eval.annotations={tmp_path / 'a.json'}")
    assert code == 2 and "dataset.eval.images: missing" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
