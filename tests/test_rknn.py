"""Rockchip rknn-toolkit2 for real: compile the demo, run the PC simulator, compare with PyTorch.

Marked `toolchain`: the first run installs the rknn-toolkit2 environment (about a minute,
1.5 GB, from PyPI) under YOLOBUILD_TOOLCHAINS; later runs reuse it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import build_dir, built_folder, run_cli

pytestmark = pytest.mark.toolchain
FIELDS = ("boxes", "objectness", "class_scores")


# a fully int8 head, so the per-layer figures have somewhere to rise when a layer is kept in float
ALL_INT8 = ("precision=int8", "backend.options.fp16_head=false")


@pytest.fixture(scope="module")
def rk_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("rk")
    common = (f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}", "target=rk3588")
    runs = {p: run_cli(*common, f"precision={p}", cwd=root) for p in ("fp16", "int8", "int16")}
    runs["int8_all"] = run_cli(*common, *ALL_INT8, cwd=root)
    return root, common, runs


def manifest(root: Path, precision: str, stdout: str | None = None) -> dict:
    folder = built_folder(root / "ws", stdout) if stdout else build_dir(root / "ws", f"demo_rk3588_{precision}_320x320")
    return json.loads((folder / "manifest.json").read_text())


def _output(root: Path, folder: Path, kind: str, name: str) -> Path:
    """Where the build in `folder` keeps op `kind`'s output `name` (its folder or the cache)."""
    m = json.loads((folder / "manifest.json").read_text())
    out = next(op for op in m["ops"] if op["kind"] == kind)["outputs"][name]
    return (root / "cache" if out["in"] == "cache" else folder) / out["path"]


def _layers(root: Path, run) -> dict:
    return json.loads(_output(root, built_folder(root / "ws", run.stdout), "layer_error", "layers.json").read_text())


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


def test_layer_error_lists_layers_in_graph_order_and_its_output_layer_agrees_with_the_simulator(rk_builds):
    """The toolkit's accuracy_analysis (float vs simulator per layer), checked against an independent figure:
    the compile op's simulator outputs against ONNX Runtime running the float ONNX on the same probe images."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    root, _, runs = rk_builds
    run = runs["int8_all"]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    m = built_folder(root / "ws", run.stdout)
    doc = json.loads(_output(root, m, "layer_error", "layers.json").read_text())
    assert doc["method"].startswith("rknn-toolkit2 accuracy_analysis") and doc["images"] >= 1
    model = _output(root, m, "simplify", "model.onnx")
    graph = onnx.load(str(model)).graph
    position = {out: i for i, node in enumerate(graph.node) for out in node.output}
    names = [layer["name"] for layer in doc["layers"]]
    assert len(names) > 50 and all(n in position for n in names)
    assert [position[n] for n in names] == sorted(position[n] for n in names)   # graph order
    assert doc["worst"] and set(doc["worst"]) <= set(names)
    # the output layers: the same cosine as the simulator's outputs against ONNX Runtime fp32
    probe = np.load(_output(root, m, "prepare_inputs", "probe.npz"))["images"][:doc["images"]]
    sim = np.load(_output(root, m, "compile", "outputs.npz"))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in graph.output]
    ref = [sess.run(outputs, {sess.get_inputs()[0].name: (img.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)})
           for img in probe]
    by_name = {layer["name"]: layer for layer in doc["layers"]}
    for k, name in enumerate(outputs):
        a = np.concatenate([r[k].ravel() for r in ref]).astype(np.float64)
        b = sim[name][:len(probe)].ravel().astype(np.float64)
        independent = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(by_name[name]["cosine"] - independent) < 2e-3, (name, by_name[name]["cosine"], independent)


def test_keep_float_keeps_the_worst_layer_in_float16_and_its_local_error_vanishes(rk_builds):
    """The ranking's key is each layer alone (its float ONNX subgraph on the simulator's own inputs): with the
    head in int8 the worst is an output, and hybrid quantization's float16 takes its local SQNR from int8's
    ~13-24 dB to fp16's ~70 (measured 13.3 -> 71.1 dB for out32)."""
    root, common, runs = rk_builds
    before = _layers(root, runs["int8_all"])
    worst = before["worst"][0]
    assert worst in {"out8", "out16", "out32"}, before["worst"][:5]
    run = run_cli(*common, *ALL_INT8, f"backend.options.keep_float=[{worst}]", cwd=root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    after = _layers(root, run)
    was = {layer["name"]: layer for layer in before["layers"]}[worst]
    now = {layer["name"]: layer for layer in after["layers"]}[worst]
    assert now["quantized"] is False and worst not in after["worst"]
    assert was["local_sqnr_db"] < 30 and now["local_sqnr_db"] > was["local_sqnr_db"] + 30, (was, now)
    compile_results = next(op for op in manifest(root, "", run.stdout)["ops"] if op["kind"] == "compile")
    assert compile_results["results"]["compile"]["float_layers"] == 1


def test_max_drop_recovers_an_int8_head_by_keeping_the_outputs_in_float16(rk_builds):
    """The demo with its head in int8 loses ~6.9 AP on rk3588; accuracy.max_drop=0.5 keeps the quantized
    outputs in float16 first (measured: -6.87 -> -0.23 AP in two builds)."""
    root, common, runs = rk_builds
    first = manifest(root, "", runs["int8_all"].stdout)["metrics"]
    assert first["pytorch_fp32"]["mAP50_95"] - first["built"]["mAP50_95"] > 0.02, first   # there is a loss to fix
    run = run_cli(*common, *ALL_INT8, "accuracy.max_drop=0.5", cwd=root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    m = manifest(root, "", run.stdout)
    assert m["metrics"]["delta_mAP50_95"] >= -0.5, m["metrics"]
    assert set(m["accuracy"]["kept_float"]) & {"out8", "out16", "out32"}, m["accuracy"]["kept_float"]


def test_keep_float_of_an_unknown_layer_is_one_line(rk_builds):
    root, common, _ = rk_builds
    r = run_cli(*common, *ALL_INT8, "backend.options.keep_float=[no_such_tensor]", cwd=root)
    assert r.returncode == 2 and "backend.options.keep_float: no_such_tensor is not a layer" in r.stderr
    assert "Traceback" not in r.stderr


def test_int16_compiles_with_better_parity_than_int8(rk_builds):
    root, _, runs = rk_builds
    assert runs["int16"].returncode == 0, runs["int16"].stdout[-3000:] + runs["int16"].stderr[-3000:]
    int16, int8 = manifest(root, "int16"), manifest(root, "", runs["int8_all"].stdout)
    assert int16["status"] == "compiled"
    compile_results = next(op for op in int16["ops"] if op["kind"] == "compile")["results"]["compile"]
    assert compile_results["quantized_dtype"] == "w16a16i_dfp"
    for field in FIELDS:
        assert int16["parity"][field]["cosine"] > int8["parity"][field]["cosine"], (int16["parity"], int8["parity"])


def test_a_precision_the_chip_lacks_is_refused_at_validate(tmp_path):
    r = run_cli("validate", "target=rk3588", "precision=w8a16", cwd=tmp_path)
    assert r.returncode == 2
    assert "precision.name: 'w8a16' is not supported by target rk3588; allowed: fp16, int8, int16" in r.stderr
    assert run_cli("validate", "target=rk3562", "precision=w8a16", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("recipe", ["yolo11n", "yolo26n", "yolov7-tiny"])
def test_newer_families_compile_for_rk3588_int8_with_parity(tmp_path, recipe):
    """YOLO11 (C2PSA attention), YOLO26 (one-to-one head) and YOLOv7-tiny through rknn-toolkit2 int8: the
    simulator's outputs against PyTorch per field, and the toolkit's per-layer analysis read (YOLO11's and
    YOLO26's reports hold `q_zero` rows for all-zero tensors; measured at 640: every field >= 0.999999)."""
    r = run_cli(f"recipe={recipe}", "model.weights=random", "target=rk3588", "precision=int8",
                "input.width=320", "input.height=320", f"workspace.path={tmp_path / 'ws'}",
                f"cache.dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((built_folder(tmp_path / "ws", r.stdout) / "manifest.json").read_text())
    assert m["status"] == "compiled"
    cosines = {k: v["cosine"] for k, v in m["parity"].items() if isinstance(v, dict) and "cosine" in v}
    assert len(cosines) >= 2 and min(cosines.values()) >= 0.999, cosines
    assert len(m["accuracy"]["layers"]) > 50
