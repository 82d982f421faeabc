"""Rockchip rknn-toolkit2 for real: compile the demo, run the PC simulator, compare with PyTorch.

Marked `toolchain`: the first run installs the rknn-toolkit2 environment (about a minute,
1.5 GB, from PyPI) under YOLOBUILD_TOOLCHAINS; later runs reuse it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import build_dir, run_cli

pytestmark = pytest.mark.toolchain
FIELDS = ("boxes", "objectness", "class_scores")


@pytest.fixture(scope="module")
def rk_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("rk")
    common = (f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}", "target=rk3588")
    runs = {p: run_cli(*common, f"precision={p}", cwd=root) for p in ("fp16", "int8")}
    return root, common, runs


def manifest(root: Path, precision: str) -> dict:
    return json.loads((build_dir(root / "ws", f"demo_rk3588_{precision}_320x320") / "manifest.json").read_text())


def test_rk3588_fp16_matches_pytorch_per_field(rk_builds):
    root, _, runs = rk_builds
    assert runs["fp16"].returncode == 0, runs["fp16"].stdout[-3000:] + runs["fp16"].stderr[-3000:]
    m = manifest(root, "fp16")
    assert m["status"] == "compiled"
    for field in FIELDS:
        assert m["parity"][field]["cosine"] >= 0.9999, m["parity"]
    assert m["tools"]["rknn-toolkit2:rknn-toolkit2"] == "2.5.0"
    build = build_dir(root / "ws", "demo_rk3588_fp16_320x320")
    assert (build / "model.rknn").stat().st_size > 100_000
    assert (build / "logs" / "compile.log").exists()
    # one toolkit session built, exported and simulated: the simulated model is the shipped file
    compile_results = {op["id"]: op for op in m["ops"]}["compile"]["results"]["compile"]
    assert compile_results["simulated_images"] >= 4 and "simulate" not in {op["id"] for op in m["ops"]}
    assert abs(m["metrics"]["built"]["mAP50_95"] - m["metrics"]["pytorch_fp32"]["mAP50_95"]) < 0.005


def test_rk3588_int8_keeps_accuracy(rk_builds):
    root, _, runs = rk_builds
    assert runs["int8"].returncode == 0, runs["int8"].stdout[-3000:] + runs["int8"].stderr[-3000:]
    m = manifest(root, "int8")
    fp32, int8 = m["metrics"]["pytorch_fp32"]["mAP50_95"], m["metrics"]["built"]["mAP50_95"]
    assert fp32 - int8 <= 0.015, (fp32, int8)
    ops = {op["id"]: op for op in m["ops"]}
    assert ops["reference"]["status"] == "cached"  # shared with the fp16 build


def test_rebuild_is_a_cache_hit(rk_builds):
    root, common, _ = rk_builds
    r = run_cli(*common, "precision=int8", cwd=root)
    assert r.returncode == 0
    assert {op["status"] for op in manifest(root, "int8")["ops"]} == {"cached"}


def test_an_rknn_option_is_validated_by_the_toolchain(rk_builds):
    root, common, _ = rk_builds
    r = run_cli(*common, "precision=int8", "backend.options.quantized_algorithm=fast", cwd=root)
    assert r.returncode == 2 and "quantized_algorithm: 'fast' is not allowed" in r.stderr
    assert "Traceback" not in r.stderr


def test_rv1106_refuses_fp16_at_validate(tmp_path):
    r = run_cli("validate", "target=rv1106", "precision=fp16", cwd=tmp_path)
    assert r.returncode == 2
    assert "precision.name: 'fp16' is not supported by target rv1106; allowed: int8" in r.stderr
