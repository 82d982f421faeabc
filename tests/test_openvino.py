"""OpenVINO: the declaration, the steps on small ONNX graphs (bad input -> one line), and the demo built
fp32 / fp16 / int8 through the CLI with per-field parity against PyTorch and the int8 mAP delta."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolobuild.context import OpContext
from yolobuild.errors import ToolchainError, UserError
from yolobuild.runtime.arrays import load_npz, save_npz
from yolobuild.toolchains.openvino import steps

from .conftest import build_dir, REPO, cli_in_process

PACKAGE = REPO / "yolobuild" / "toolchains" / "openvino"
DECLARATION = yaml.safe_load((PACKAGE / "toolchain.yaml").read_text())
DEFAULTS = {k: v["default"] for k, v in DECLARATION["options"]["properties"].items()}
TARGET_YAML = next(p for p in (REPO / "recipes" / "target" / "openvino.yaml",
                               REPO / "yolobuild" / "recipes" / "target" / "openvino.yaml") if p.is_file())
PARITY = yaml.safe_load(TARGET_YAML.read_text())["parity"]
FIELDS = ("boxes", "objectness", "class_scores")
DEMO = ("recipe=demo", "target=openvino")


def _ctx(tmp_path: Path, inputs: dict, outputs: tuple[str, ...], precision: str = "fp32", **options) -> OpContext:
    params = {"platform": "CPU", "precision": precision, "input_layout": "nchw_float32", "head": "raw",
              "options": {**DEFAULTS, **options}, "height": 16, "width": 16, "scale": 1 / 255.0}
    return OpContext(op_id="compile", kind="compile", params=params, inputs=inputs,
                     outputs={n: tmp_path / "out" / n for n in outputs}, scratch=tmp_path / "scratch",
                     log=lambda *_: None)


def _two_conv_onnx(path: Path) -> Path:
    """images (1,3,16,16) -> Conv -> Relu -> Conv (the 'head') -> out: a body NNCF quantizes, a head it may keep."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (6, 8, 1, 1)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, (6,)).astype(np.float32), "b2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["c1"], name="body_conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="body_relu"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], name="head_conv")],
        "two_conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 16, 16])], [w1, w2, b2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture
def small(tmp_path):
    """A two-conv ONNX, four canvases as calib.npz and probe.npz, and the onnxruntime outputs to compare."""
    import onnxruntime as ort

    from yolobuild.runtime.arrays import canvas_to_input

    model = _two_conv_onnx(tmp_path / "model.onnx")
    canvases = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    save_npz(tmp_path / "calib.npz", images=canvases)
    save_npz(tmp_path / "probe.npz", images=canvases)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"images": canvas_to_input(c[None])})[0] for c in canvases], 0)
    return tmp_path, model, ref


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the declaration -------------------------------------------------------------------------------------

def test_declaration_says_how_the_plan_runs_it():
    """(The schema, the defaults and the code files of every declaration: tests/test_plugins.py.)"""
    assert DECLARATION["env"] == "host" and DECLARATION["compiled"] == ["model.xml", "model.bin"]
    assert DECLARATION["plan"]["quantize"] == "in_compile" and DECLARATION["plan"]["simulate"] == "in_compile"
    assert all((PACKAGE / f).is_file() for f in DECLARATION["code"])


def test_importing_the_package_imports_neither_openvino_nor_torch():
    code = ("import sys, yolobuild.toolchains.openvino.steps\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('openvino', 'nncf', 'torch')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- the steps on a small graph --------------------------------------------------------------------------

@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.999999), ("fp16", 0.9999)])
def test_compile_writes_an_ir_and_its_cpu_outputs(small, precision, min_cosine):
    tmp_path, model, ref = small
    ctx = _ctx(tmp_path, {"model": model, "probe": tmp_path / "probe.npz"},
               ("model.xml", "model.bin", "outputs.npz"), precision)
    steps.compile(ctx)
    out = load_npz(ctx.outputs["outputs.npz"])
    assert out["__names__"].tolist() == ["out"] and out["out"].shape == ref.shape
    assert _cosine(out["out"], ref) >= min_cosine
    assert ctx.outputs["model.bin"].stat().st_size > 0 and ctx.results["inference_precision"] == "f32"


def test_fp16_stores_half_the_weight_bytes(small):
    tmp_path, model, _ = small
    sizes = {}
    for precision in ("fp32", "fp16"):
        ctx = _ctx(tmp_path / precision, {"model": model}, ("model.xml", "model.bin"), precision)
        steps.compile(ctx)
        sizes[precision] = ctx.outputs["model.bin"].stat().st_size
    assert sizes["fp16"] * 2 == pytest.approx(sizes["fp32"], rel=0.05)


def test_int8_quantizes_the_body_and_keeps_the_head_convs_float(small):
    tmp_path, model, ref = small
    inputs = {"model": model, "calib": tmp_path / "calib.npz", "probe": tmp_path / "probe.npz"}
    fake_quantize = {}
    for fp32_head in (True, False):
        ctx = _ctx(tmp_path / str(fp32_head), inputs, ("model.xml", "model.bin", "outputs.npz"), "int8",
                   subset_size=4, fp32_head=fp32_head)
        steps.compile(ctx)
        assert ctx.results["calib_images"] == 4
        assert 'type="FakeQuantize"' in ctx.outputs["model.xml"].read_text()
        assert _cosine(load_npz(ctx.outputs["outputs.npz"])["out"], ref) >= 0.99
        fake_quantize[fp32_head] = ctx.results["FakeQuantize"]
        assert (ctx.results["fp32_head_ops"] >= 1) is fp32_head
    assert fake_quantize[False] > fake_quantize[True] >= 1   # the head conv's input stays float


def test_an_ignored_op_that_is_not_in_the_model_names_the_option(small):
    tmp_path, model, _ = small
    ctx = _ctx(tmp_path, {"model": model, "calib": tmp_path / "calib.npz"}, ("model.xml", "model.bin"), "int8",
               ignored_scope={"names": ["no_such_conv"], "patterns": [], "types": []})
    with pytest.raises(UserError, match=r"^backend\.options\.ignored_scope\.names: 'no_such_conv' is not an op"):
        steps.compile(ctx)


def test_an_onnx_that_is_not_one_fails_in_one_line(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model\n")
    with pytest.raises(ToolchainError, match=r"^openvino: convert_model cannot read model\.onnx: ") as exc:
        steps.compile(_ctx(tmp_path, {"model": bad}, ("model.xml", "model.bin")))
    assert "\n" not in str(exc.value)


def test_a_broken_or_half_ir_fails_in_one_line(small):
    tmp_path, model, _ = small
    ctx = _ctx(tmp_path, {"model": model}, ("model.xml", "model.bin"))
    steps.compile(ctx)
    xml, weights = ctx.outputs["model.xml"], ctx.outputs["model.bin"]
    sim = _ctx(tmp_path / "sim", {"model": xml, "probe": tmp_path / "probe.npz"}, ("outputs.npz",))
    weights.rename(tmp_path / "elsewhere.bin")
    with pytest.raises(ToolchainError, match=r"^openvino: model\.bin is missing"):
        steps.simulate(sim)
    (tmp_path / "elsewhere.bin").rename(weights)
    xml.write_text(xml.read_text()[:200])   # cut mid-element
    with pytest.raises(ToolchainError, match=r"^openvino: cannot read the IR model\.xml \+ model\.bin: ") as exc:
        steps.simulate(sim)
    assert "\n" not in str(exc.value)


# -- the demo through the CLI ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One cache and workspace for the module's demo builds (they share the export and the PyTorch reference)."""
    root = tmp_path_factory.mktemp("openvino-demo")
    return root, (f"workspace.path={root / 'ws'}", f"cache.dir={root / 'cache'}")


def _build(demo, precision: str) -> dict:
    root, args = demo
    code, out, err = cli_in_process(*DEMO, f"precision={precision}", *args)
    assert code == 0, out + err
    folder = build_dir(root / "ws", f"demo_openvino_{precision}_320x320")
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "compiled" and m["target"] == "openvino"
    for field in FIELDS:
        assert m["parity"][field]["cosine"] >= PARITY[precision]["cosine"], (field, m["parity"])
    return m


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_demo_float_builds_match_pytorch(demo, precision):
    m = _build(demo, precision)
    assert m["metrics"]["delta_mAP50_95"] >= -0.05, m["metrics"]


def test_demo_int8_keeps_map_within_half_a_point(demo):
    m = _build(demo, "int8")
    ops = {op["kind"]: op for op in m["ops"]}
    assert "quantize" not in ops   # NNCF runs inside compile
    assert m["metrics"]["delta_mAP50_95"] >= -0.5, m["metrics"]


def test_the_deploy_folder_holds_the_whole_ir(demo):
    import json

    from yolobuild.engine.cache import sha256_file

    _build(demo, "fp32")   # cached when the fp32 test ran
    build = build_dir(demo[0] / "ws", "demo_openvino_fp32_320x320")
    folder = build / "deploy"
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    for name in ("model.xml", "model.bin"):   # the very files the build checked
        assert sha256_file(folder / name) == sha256_file(build / name)
    assert set(json.loads((folder / "deploy.json").read_text())["model"]["files"]) == {"model.xml", "model.bin"}


def test_an_unknown_option_exits_2_at_validate_naming_the_key(demo):
    code, out, err = cli_in_process("validate", *DEMO, "precision=int8", "+backend.options.bogus_knob=1")
    assert code == 2
    assert "backend.options.bogus_knob" in err and "Traceback" not in err + out


def test_a_bad_option_value_exits_2_at_validate_naming_the_key(demo):
    code, out, err = cli_in_process("validate", *DEMO, "precision=int8", "backend.options.preset=bogus")
    assert code == 2
    assert "backend.options.preset" in err and "Traceback" not in err + out
