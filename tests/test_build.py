"""End-to-end builds through the CLI, as a user runs them: the demo (fp32 and int8), a random
YOLOv5s, rebuilds from the cache, and bad inputs that must leave cache and workspace intact."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from yolobuild.engine.cache import sha256_file
from yolobuild.validate import ASSETS_DIR

from .conftest import build_dir, built_folder, run_cli

DEMO_WEIGHTS = ASSETS_DIR / "demo-yolov5n-shapes.pt"
FIELDS = ("boxes", "objectness", "class_scores")


def manifest_of(ws: Path, name: str) -> dict:
    return json.loads((build_dir(ws, name) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo built once (fp32) into a module-wide cache and workspace."""
    root = tmp_path_factory.mktemp("demo")
    args = (f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}")
    r = run_cli(*args, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, args, r


def test_demo_builds_with_parity_and_accuracy(demo):
    root, _, r = demo
    m = manifest_of(root / "ws", "demo_onnxruntime_fp32_320x320")
    assert m["status"] == "compiled" and m["recipe"] == "demo" and m["target"] == "onnxruntime"
    for field in FIELDS:
        assert m["parity"][field]["cosine"] >= 0.99999, m["parity"]
    assert m["metrics"]["pytorch_fp32"]["mAP50"] >= 0.9
    assert abs(m["metrics"]["built"]["mAP50_95"] - m["metrics"]["pytorch_fp32"]["mAP50_95"]) < 0.002
    assert {"torch", "onnx", "onnxruntime", "yolobuild"} <= set(m["tools"])
    for op in m["ops"]:
        assert op["status"] == "ran" and op["reason"] == "no cache entry"
    build = build_dir(root / "ws", "demo_onnxruntime_fp32_320x320")
    for op in m["ops"]:
        for out in op["outputs"].values():
            assert not Path(out["path"]).is_absolute(), out          # no machine paths in the manifest
            p = (build if out["in"] == "build" else root / "cache") / out["path"]
            assert (p.is_dir() or sha256_file(p) == out["sha256"]), out
    assert "yolobuild summary" in r.stdout
    for name in ("model.onnx", "model.ort.onnx", "deploy", "plan.json", "report.md", "parity.json", "metrics.json"):
        assert (build / name).exists(), name


def test_rebuild_runs_nothing_and_imports_no_torch(demo):
    import subprocess

    root, args, _ = demo
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "yolobuild", *args],
                           capture_output=True, text=True, cwd=root)
    assert probe.returncode == 0, probe.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "onnxruntime" not in imported
    m = manifest_of(root / "ws", "demo_onnxruntime_fp32_320x320")
    assert {op["status"] for op in m["ops"]} == {"cached"}
    assert m["parity"] and m["metrics"]  # figures come back from the cache


def test_changed_param_reruns_from_the_changed_op_and_says_why(demo):
    root, args, _ = demo
    r = run_cli(*args, "graph.head=split", cwd=root)
    assert r.returncode == 0, r.stderr
    folder = built_folder(root / "ws", r.stdout)
    assert folder.name.startswith("demo_onnxruntime_fp32_320x320-")   # its own folder; the reason still says why
    m = json.loads((folder / "manifest.json").read_text())
    ops = {op["id"]: op for op in m["ops"]}
    assert ops["load_model"]["status"] == "cached" and ops["reference"]["status"] == "cached"
    assert ops["patch"]["status"] == "ran"
    assert ops["patch"]["reason"] == 'param head changed: "raw" -> "split"'
    for field in FIELDS:
        assert m["parity"][field]["cosine"] >= 0.99999


def test_demo_int8_keeps_accuracy(demo):
    root, args, _ = demo
    r = run_cli(*args, "precision=int8", cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    m = manifest_of(root / "ws", "demo_onnxruntime_int8_320x320")
    ops = {op["id"]: op for op in m["ops"]}
    assert ops["reference"]["status"] == "cached"  # shared with the fp32 build
    assert ops["quantize"]["status"] == "ran"
    fp32, int8 = m["metrics"]["pytorch_fp32"]["mAP50_95"], m["metrics"]["built"]["mAP50_95"]
    assert fp32 - int8 <= 0.015, (fp32, int8)


def test_bad_weights_exit_2_and_leave_cache_and_workspace_intact(demo, tmp_path):
    root, args, _ = demo
    build = build_dir(root / "ws", "demo_onnxruntime_fp32_320x320")
    before = {p.name: p.stat().st_mtime_ns for p in build.iterdir()}
    entries_before = sorted((root / "cache" / "entries").rglob("*.json"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(DEMO_WEIGHTS.read_bytes()[: DEMO_WEIGHTS.stat().st_size // 3])
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("this is not a checkpoint")
    for bad in (truncated, not_ckpt):
        r = run_cli(*args, f"model.weights={bad}", cwd=root)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith(f"error: model.weights: {bad}") or f"{bad}" in r.stderr.splitlines()[0]
    assert {p.name: p.stat().st_mtime_ns for p in build.iterdir()} == before
    assert sorted((root / "cache" / "entries").rglob("*.json")) == entries_before
    assert list((root / "cache" / "tmp").iterdir()) == []


def test_weights_of_another_architecture_name_the_bad_keys(demo, tmp_path):
    root, args, _ = demo
    import torch

    from yolobuild.models.yolov5.model import build_yolov5

    other = tmp_path / "yolov5s-state.pt"
    torch.save(build_yolov5("s", nc=3).state_dict(), other)
    r = run_cli(*args, f"model.weights={other}", cwd=root)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model.0.conv.weight" in r.stderr


def test_random_yolov5s_builds_and_is_labelled(tmp_path):
    r = run_cli("recipe=yolov5s", "model.weights=random", "target=onnxruntime", "precision=fp32",
                f"workspace.path={tmp_path / 'ws'}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "random weights" in r.stdout
    m = manifest_of(tmp_path / "ws", "yolov5s_onnxruntime_fp32_640x640")
    assert m["random_weights"] is True and m["status"] == "compiled"
    for field in FIELDS:
        assert m["parity"][field]["cosine"] >= 0.99999
    assert "Random weights" in (build_dir(tmp_path / "ws", "yolov5s_onnxruntime_fp32_640x640") / "report.md").read_text()


def test_int8_with_user_calibration_folder_rejects_non_images(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(Path(__file__), calib / "fake.jpg")  # a .jpg that is not an image
    r = run_cli("recipe=yolov5n", "model.weights=random", "precision=int8", "dataset=folder",
                f"dataset.calib.path={calib}", "input.width=160", "input.height=160",
                f"workspace.path={tmp_path / 'ws'}", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "fake.jpg" in r.stderr and "Traceback" not in r.stderr
    assert not (build_dir(tmp_path / "ws", "yolov5n_onnxruntime_int8_160x160") / "manifest.json").exists()


def test_relative_cache_and_workspace_paths(tmp_path):
    """cache.dir=cache (relative to where yolobuild runs): inputs are linked to cache objects, and a
    relative link target would dangle inside the op's temp folder."""
    r = run_cli("cache.dir=cache", "workspace.path=ws", "input.width=96", "input.height=96",
                "evaluate.enabled=false", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "cache" / "objects").is_dir() and (build_dir(tmp_path / "ws", "demo_onnxruntime_fp32_96x96")).is_dir()


def test_ctrl_c_mid_build_exits_130_and_the_next_build_reuses_what_finished(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, while ops run in this
    interpreter and in the helper process: one line, exit 130, no half-written cache entry."""
    import os
    import signal
    import subprocess
    import time

    args = [sys.executable, "-m", "yolobuild", "precision=int8", f"workspace.path={tmp_path / 'ws'}",
            f"cache.dir={tmp_path / 'cache'}"]
    p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    time.sleep(1.5)          # the int8 demo build takes well over that: the signal lands mid-build
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    assert err.strip().splitlines() == ["interrupted: finished ops stay cached"], err
    tmp = tmp_path / "cache" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
