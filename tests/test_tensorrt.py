"""TensorRT: what every machine can check (declaration, GPU detection, Q/DQ rules, the one-line failure
without a GPU, plans) and, skipped with the reason where no NVIDIA GPU is found, real engine builds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolobuild.context import OpContext
from yolobuild.errors import ToolchainError
from yolobuild.toolchains.tensorrt import gpu, qdq, steps, vendor

from .conftest import REPO, cli_in_process

PACKAGE = REPO / "yolobuild" / "toolchains" / "tensorrt"
DECLARATION = yaml.safe_load((PACKAGE / "toolchain.yaml").read_text())
DEFAULTS = {k: v["default"] for k, v in DECLARATION["options"]["properties"].items()}
DEMO = ("recipe=demo", "target=tensorrt")


def _gpu_here() -> str | None:
    try:
        gpu.find_gpus()
    except gpu.NoGpu as why:
        return str(why)
    return None


NO_GPU = _gpu_here()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU: {NO_GPU}")


def _ctx(tmp_path: Path, kind: str, inputs: dict, outputs: dict, **params) -> OpContext:
    base = {"platform": "cuda", "precision": "fp16", "input_layout": "nchw_float32", "head": "raw",
            "options": dict(DEFAULTS), "height": 32, "width": 32, "scale": 1 / 255.0}
    return OpContext(op_id=kind, kind=kind, params={**base, **params}, inputs=inputs,
                     outputs={k: tmp_path / v for k, v in outputs.items()}, scratch=tmp_path / "scratch",
                     log=lambda *_: None)


# -- the declaration -------------------------------------------------------------------------------------

def test_declaration_says_how_the_plan_runs_it():
    """(The schema, the defaults and the code files of every declaration: tests/test_plugins.py.)"""
    assert DECLARATION["plan"]["quantize"] == "separate" and DECLARATION["compiled"] == ["model.engine"]
    assert all((PACKAGE / f).is_file() for f in DECLARATION["code"])


def test_importing_the_package_imports_no_vendor_code_and_no_torch():
    code = ("import sys, yolobuild.toolchains.tensorrt.steps\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- GPU detection ---------------------------------------------------------------------------------------

def test_a_missing_driver_library_means_no_gpu():
    with pytest.raises(gpu.NoGpu, match="libcuda-missing.so.1 not found"):
        gpu.find_gpus("libcuda-missing.so.1")


FAKE_DRIVER = textwrap.dedent("""
    #include <string.h>
    int cuInit(unsigned int flags) { return DEVICES ? 0 : 100; }
    int cuGetErrorName(int code, const char **name) { *name = "CUDA_ERROR_NO_DEVICE"; return 0; }
    int cuDeviceGetCount(int *n) { *n = DEVICES; return 0; }
    int cuDeviceGet(int *device, int index) { *device = index; return 0; }
    int cuDeviceGetName(char *name, int len, int device) { strncpy(name, "Fake GPU", len); return 0; }
    int cuDeviceGetAttribute(int *value, int attribute, int device) { *value = attribute == 75 ? 8 : 9; return 0; }
""")


def _fake_driver(tmp_path: Path, devices: int) -> str:
    """A stand-in libcuda answering the few driver calls gpu.py makes."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or sys.platform != "linux":
        pytest.skip("needs a C compiler on Linux to make a stand-in CUDA driver")
    src, lib = tmp_path / "fake_cuda.c", tmp_path / f"libcuda-fake{devices}.so"
    src.write_text(FAKE_DRIVER)
    subprocess.run([compiler, "-shared", "-fPIC", f"-DDEVICES={devices}", "-o", str(lib), str(src)], check=True)
    return str(lib)


def test_a_driver_that_sees_no_device_means_no_gpu(tmp_path):
    with pytest.raises(gpu.NoGpu, match="CUDA_ERROR_NO_DEVICE"):
        gpu.find_gpus(_fake_driver(tmp_path, 0))


def test_a_driver_that_sees_a_device_describes_it(tmp_path):
    assert gpu.find_gpus(_fake_driver(tmp_path, 1)) == [gpu.Gpu(0, "Fake GPU", "8.9")]


def test_no_gpu_is_one_line_saying_validate_and_plan_work(monkeypatch):
    monkeypatch.setattr(gpu, "DRIVER_LIBRARY", "libcuda-missing.so.1")
    with pytest.raises(ToolchainError) as info:
        vendor.require_gpus()
    message = str(info.value)
    assert "\n" not in message and "no NVIDIA GPU" in message and "validate and plan work anywhere" in message


def test_a_gpu_without_tensorrt_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "DRIVER_LIBRARY", _fake_driver(tmp_path, 1))
    real_find_spec = vendor.importlib.util.find_spec
    hidden = ("tensorrt", "cuda")
    monkeypatch.setattr(vendor.importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in hidden else real_find_spec(name, *a))
    model = _conv_model(tmp_path / "model.onnx")
    ctx = _ctx(tmp_path, "compile", {"model": model}, {"model.engine": "model.engine"})
    with pytest.raises(ToolchainError) as info:
        steps.compile(ctx)
    assert "\n" not in str(info.value) and 'pip install "yolobuild[tensorrt]"' in str(info.value)
    assert not (tmp_path / "model.engine").exists()


def test_int8_compile_refuses_a_model_without_qdq_before_importing_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "DRIVER_LIBRARY", _fake_driver(tmp_path, 1))
    model = _conv_model(tmp_path / "model.onnx")
    ctx = _ctx(tmp_path, "compile", {"model": model}, {"model.engine": "model.engine"}, precision="int8")
    with pytest.raises(ToolchainError, match="no QuantizeLinear node"):
        steps.compile(ctx)


# -- TensorRT's Q/DQ rules, on the host --------------------------------------------------------------------

def _conv_model(path: Path, *, qdq_type: str | None = None, zero_point: int = 0, int32_bias: bool = False) -> Path:
    """1x3x32x32 -> Conv(3->4) -> Relu, optionally with a Q/DQ pair on the input and a DQ'd int32 bias."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    nodes, x = [], "images"
    if qdq_type:
        dtype = np.int8 if qdq_type == "int8" else np.uint8
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(zero_point, dtype), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["images", "s", "zp"], ["xq"], name="q_in"),
                  helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq_in")]
        x = "xdq"
    if int32_bias:
        inits += [numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q"),
                  numpy_helper.from_array(np.array(0.001, np.float32), "b_s")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq_bias"))
    else:
        inits.append(numpy_helper.from_array(np.zeros(4, np.float32), "b"))
    nodes += [helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
              helper.make_node("Relu", ["c"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_symmetric_int8_qdq_passes(tmp_path):
    counts, problems = qdq.check(_conv_model(tmp_path / "m.onnx", qdq_type="int8"))
    assert counts == {"QuantizeLinear": 1, "DequantizeLinear": 1} and problems == []


@pytest.mark.parametrize("kwargs,why", [
    ({"qdq_type": "uint8", "zero_point": 128}, "zero point is uint8"),
    ({"qdq_type": "int8", "zero_point": 3}, "is not 0"),
    ({"qdq_type": "int8", "int32_bias": True}, "int32 constant"),
])
def test_qdq_that_tensorrt_refuses_is_named(tmp_path, kwargs, why):
    _, problems = qdq.check(_conv_model(tmp_path / "m.onnx", **kwargs))
    assert problems and why in problems[0]


def _onnxruntime_takes_tensorrt_rules() -> bool:
    try:
        steps._onnxruntime_quantize()
    except ToolchainError:
        return False
    return True


@pytest.mark.skipif(not _onnxruntime_takes_tensorrt_rules(),
                    reason="the onnxruntime toolchain's quantize has no symmetric_activations / quantize_bias yet")
def test_quantize_writes_symmetric_int8_qdq_on_the_host(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(gpu, "DRIVER_LIBRARY", _fake_driver(tmp_path, 1))

    from yolobuild.runtime.arrays import save_npz

    model = _conv_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    save_npz(tmp_path / "calib.npz", images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    ctx = _ctx(tmp_path, "quantize", {"model": model, "calib": tmp_path / "calib.npz"},
               {"model.onnx": "quantized/model.onnx"}, precision="int8",
               options={**DEFAULTS, "float_head": False})   # its one conv is the "head"
    steps.quantize(ctx)
    out = tmp_path / "quantized" / "model.onnx"
    counts, problems = qdq.check(out)
    assert problems == [] and counts["QuantizeLinear"] >= 1 and ctx.results["qdq"].startswith("symmetric int8")
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    cosine = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cosine > 0.95   # int8 of a random conv on random pixels: a sanity bound, not a bar


# -- the step functions' own logic, against stand-ins ---------------------------------------------------------
# A stand-in `tensorrt` and `cuda.bindings.runtime` that run the ONNX through onnxruntime on the CPU: they
# check how the steps drive the builder, the runtime and the device buffers, not TensorRT itself.

class _Severity:
    def __init__(self, name):
        self.name = name


class _StandInTensorRT:
    __version__ = "10.16.1.11"

    class ILogger:
        class Severity:
            ERROR, INTERNAL_ERROR, WARNING = _Severity("ERROR"), _Severity("INTERNAL_ERROR"), _Severity("WARNING")

        def __init__(self):
            pass

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = 0

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16, INT8 = "FP16", "INT8"

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    @staticmethod
    def nptype(dtype):
        return np.float32

    class _Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class _Network:
        def __init__(self):
            self.inputs, self.outputs, self.onnx = [], [], None
            self.num_layers = 0

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            import onnx

            graph = onnx.load(path).graph
            dims = lambda v: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)  # noqa: E731
            self.network.inputs = [_StandInTensorRT._Tensor(v.name, dims(v)) for v in graph.input]
            self.network.outputs = [_StandInTensorRT._Tensor(v.name, dims(v)) for v in graph.output]
            self.network.onnx, self.network.num_layers = path, len(graph.node)
            return True

    class _Config:
        def __init__(self):
            self.flags, self.pools = [], {}

        def set_flag(self, flag):
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

    class Builder:
        asked: list = []

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return _StandInTensorRT._Network()

        def create_builder_config(self):
            return _StandInTensorRT._Config()

        def create_optimization_profile(self):
            return None

        def build_serialized_network(self, network, config):
            _StandInTensorRT.Builder.asked.append({"flags": config.flags, "level": config.builder_optimization_level})
            return json.dumps({"onnx": network.onnx}).encode()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return _StandInEngine(json.loads(blob)["onnx"])


class _StandInEngine:
    """The ONNX model behind TensorRT's engine interface; outputs listed in reverse to test the reordering."""

    def __init__(self, onnx_path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.io = [(i.name, "input", tuple(i.shape)) for i in self.session.get_inputs()]
        self.io += [(o.name, "output", tuple(o.shape)) for o in reversed(self.session.get_outputs())]

    num_io_tensors = property(lambda self: len(self.io))

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return dict((n, m) for n, m, _ in self.io)[name]

    def get_tensor_shape(self, name):
        return dict((n, s) for n, _, s in self.io)[name]

    def get_tensor_dtype(self, name):
        return "float"

    def create_execution_context(self):
        engine, addresses = self, {}

        class Context:
            def set_input_shape(self, name, shape):
                pass

            def get_tensor_shape(self, name):
                return engine.get_tensor_shape(name)

            def set_tensor_address(self, name, address):
                addresses[name] = address

            def execute_async_v3(self, stream):
                import ctypes

                def view(name):
                    shape = engine.get_tensor_shape(name)
                    size = int(np.prod(shape)) * 4
                    raw = (ctypes.c_char * size).from_address(addresses[name])
                    return np.frombuffer(raw, np.float32).reshape(shape)

                inputs = {n: view(n).copy() for n, m, _ in engine.io if m == "input"}
                names = [n for n, m, _ in engine.io if m == "output"]
                for name, value in zip(names, engine.session.run(names, inputs)):
                    view(name)[...] = value
                return True

        return Context()


class _StandInCudart:
    class cudaError_t:  # noqa: N801 - the bindings' names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.buffers, self.freed = {}, []

    def cudaGetErrorName(self, err):  # noqa: N802
        return 0, b"cudaErrorStandIn"

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)

    def cudaMalloc(self, size):  # noqa: N802
        import ctypes

        buf = ctypes.create_string_buffer(size)
        self.buffers[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMemcpyAsync(self, dst, src, size, kind, stream):  # noqa: N802
        import ctypes

        ctypes.memmove(dst, src, size)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 7

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.freed.append(ptr)
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (0,)


def _two_output_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["images", "w"], ["a"], name="conv"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sigmoid")]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [info(n, TensorProto.FLOAT, [1, 4, 32, 32]) for n in ("a", "b")],
                              [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_compile_and_simulate_drive_builder_runtime_and_buffers(tmp_path, monkeypatch):
    import onnxruntime as ort

    from yolobuild.runtime.arrays import canvas_to_input, load_npz, save_npz

    cudart = _StandInCudart()
    monkeypatch.setattr(gpu, "DRIVER_LIBRARY", _fake_driver(tmp_path, 1))
    monkeypatch.setattr(vendor, "load_tensorrt", lambda: _StandInTensorRT)
    monkeypatch.setattr(vendor, "load_cudart", lambda: cudart)
    model = _two_output_model(tmp_path / "model.onnx")
    compile_ctx = _ctx(tmp_path, "compile", {"model": model}, {"model.engine": "model.engine"}, precision="fp16")
    steps.compile(compile_ctx)
    assert _StandInTensorRT.Builder.asked[-1] == {"flags": ["FP16"], "level": 3}
    assert compile_ctx.results["gpu"] == "Fake GPU" and compile_ctx.results["outputs"] == ["a", "b"]

    canvases = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    save_npz(tmp_path / "probe.npz", images=canvases)
    sim_ctx = _ctx(tmp_path, "simulate", {"model": tmp_path / "model.engine", "probe": tmp_path / "probe.npz",
                                          "source": model}, {"outputs.npz": "outputs.npz"})
    steps.simulate(sim_ctx)
    got = load_npz(tmp_path / "outputs.npz")
    assert got["__names__"].tolist() == ["a", "b"]   # the model's order, not the engine's
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        ["a", "b"], {"images": canvas_to_input(canvases[1:2])})
    np.testing.assert_allclose(got["a"][1:2], ref[0], rtol=1e-6)
    np.testing.assert_allclose(got["b"][1:2], ref[1], rtol=1e-6)
    assert got["a"].shape == (3, 4, 32, 32) and len(cudart.freed) == 3


# -- the CLI: validate and plan anywhere, a build without a GPU is one line -----------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_validate_and_plan_work_without_a_gpu(precision):
    for verb in ("validate", "plan"):
        code, out, err = cli_in_process(verb, *DEMO, f"precision={precision}")
        assert code == 0, err
    plan = json.loads(next(Path.cwd().rglob("plan.json")).read_text())
    kinds = {op["kind"]: op for op in plan["ops"]}
    assert kinds["compile"]["toolchain"] == "tensorrt" and "simulate" in kinds
    assert kinds["compile"]["params"]["options"] == DEFAULTS   # the steps get every option, defaulted once
    if precision == "int8":   # the Q/DQ model is a step of its own, on the host, before the engine
        assert kinds["quantize"]["toolchain"] == "tensorrt"
        assert kinds["compile"]["inputs"]["model"]["op"] == "quantize"
    else:
        assert "quantize" not in kinds


@pytest.mark.parametrize("option", ["optimization_level=7", "workspace_mib=lots", "int8_float_layers=fp8",
                                    "calibration=entropy"])
def test_a_bad_tensorrt_option_is_one_line_naming_it(option):
    code, _, err = cli_in_process("validate", *DEMO, "precision=int8", f"backend.options.{option}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"backend.options.{option.split('=')[0]}" in lines[0], err


@pytest.mark.skipif(NO_GPU is None, reason="this machine has an NVIDIA GPU")
def test_a_build_without_a_gpu_exits_3_with_one_line(monkeypatch):
    code, out, err = cli_in_process(*DEMO, "precision=fp16")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert "no NVIDIA GPU" in lines[0] and "validate and plan work anywhere" in lines[0]
    assert "Traceback" not in err + out
    manifest = json.loads(next(Path.cwd().rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed"
    assert not list(Path.cwd().rglob("model.engine"))


@pytest.mark.skipif(NO_GPU is None, reason="this machine has an NVIDIA GPU")
def test_the_yolobuild_command_without_a_gpu_prints_one_line(tmp_path):
    command = Path(sys.executable).with_name("yolobuild")
    if not command.exists():
        pytest.skip("the yolobuild console script is not installed beside this interpreter")
    r = subprocess.run([str(command), *DEMO, "precision=fp16"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, env=os.environ.copy())
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no NVIDIA GPU" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


# -- on a GPU machine: real engines -------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_demo_engine_builds_and_meets_parity(precision):
    code, out, err = cli_in_process(*DEMO, f"precision={precision}")
    assert code == 0, err
    manifest = json.loads(next(Path.cwd().rglob("manifest.json")).read_text())
    assert manifest["status"] == "compiled"
    assert next(Path.cwd().rglob("model.engine")).stat().st_size > 0
    assert set(manifest["parity"]) >= {"boxes", "objectness"}
