"""Runs inside the tpu-mlir environment (Python 3.10, see envs.py): TPU-MLIR's own tools, step by step.

compile: model_transform (ONNX -> top MLIR) -> run_calibration (int8) -> model_deploy (-> .bmodel),
each in its own folder under request["work"] (every step leaves hundreds of MB of clutter in its
cwd, and finds the weight npz relative to it). Numbers at every step, as TPU-MLIR does them, but
kept per output: the top MLIR vs ONNX Runtime, and the bmodel on the cmodel emulator vs the top
MLIR, on the same test input.
simulate: the bmodel on the cmodel emulator, over the probe inputs.

Each cmodel step holds request["lock"] (a file in the environment's folder): a cmodel run re-points
shared library links inside site-packages to its chip's emulator, so runs for different chips must
not overlap. Only the standard library, numpy, onnx and onnxruntime (all in the venv) are used.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

WEIGHTS = "m_top_f32_all_weight.npz"
CALIBRATED = ("INT8", "W8F16")   # quantize modes with a quantize table (INT8 also calibrates)   # written by model_transform (lower-cased model name), read from the cwd


@contextmanager
def _locked(path: str):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _step(name: str, cmd: list[str], cwd: Path, seconds: dict) -> None:
    cwd.mkdir(parents=True, exist_ok=True)
    print(f"$ (cd {cwd} && {' '.join(cmd)})", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, stdout=sys.stdout, stderr=subprocess.STDOUT)
    seconds[name] = round(time.time() - start, 2)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); its work folder: {cwd}")


def _link_weights(src: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS
    if not target.exists():
        os.symlink(src / WEIGHTS, target)


def _cosine(a, b) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


def resolve(names: list[str], available) -> dict[str, str]:
    """ONNX output name -> the name TPU-MLIR gave it: suffixes are added per step (out8 -> out8_Conv ->
    out8_Conv_f32), so the exact name, else the shortest `name_...`."""
    available = list(available)
    out = {}
    for n in names:
        if n in available:
            out[n] = n
            continue
        cands = sorted((a for a in available if a.startswith(n + "_")), key=len)
        if not cands:
            raise RuntimeError(f"output {n!r} not found among {', '.join(available[:12])}")
        out[n] = cands[0]
    return out


def _compare(names: list[str], got: dict, ref: dict) -> dict:
    g, r = resolve(names, got), resolve(names, ref)
    return {"cosine": {n: _cosine(got[g[n]], ref[r[n]]) for n in names},
            "max_abs": {n: float(abs(got[g[n]].astype("float64") - ref[r[n]].astype("float64")).max()) for n in names}}


def _onnx_io(path: str) -> tuple[str, list[str]]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits), [o.name for o in graph.output]


def head_ops(onnx_path: str, mlir_text: str) -> list[str]:
    """Top-MLIR op names of the head: every op from the last convolutions to the outputs (the layers a
    quantize_table=head keeps in higher precision). TPU-MLIR names an op `<onnx output>_<OpType>`."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    keep, stack = {}, [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        if tensor in keep or tensor not in producer:
            continue
        node = producer[tensor]
        keep[tensor] = node.op_type
        if node.op_type != "Conv":
            stack.extend(node.input)
    ops = []
    for tensor, op_type in keep.items():
        name = f"{tensor}_{op_type}"
        if f'loc("{name}")' in mlir_text:
            ops.append(name)
    return sorted(ops)


def _run_bmodel(model: Path, inputs_npy: Path, input_name: str, names: list[str], out_dir: Path, lock: str,
                cwd: Path) -> dict[str, str]:
    """The bmodel on the cmodel emulator, in a child process: `import tpu_mlir` sets LD_LIBRARY_PATH for
    children only (the dynamic loader reads it at start-up). Returns ONNX name -> bmodel output name."""
    import tpu_mlir  # noqa: F401  (sets TPUC_ROOT, PATH, LD_LIBRARY_PATH in os.environ for the child)

    cwd.mkdir(parents=True, exist_ok=True)
    spec = cwd / "run.json"
    spec.write_text(json.dumps({"model": str(model), "inputs": str(inputs_npy), "input_name": input_name,
                                "names": names, "out_dir": str(out_dir)}))
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(lock):
        print(f"$ model_runner (in-process loop) {model} on {inputs_npy}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "yolobuild.toolchains.tpu_mlir.worker", str(spec)], cwd=cwd,
                              stdout=sys.stdout, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"model_runner on the cmodel failed (exit {proc.returncode})")
    return json.loads((out_dir / "names.json").read_text())


def _runner_main(spec_path: str) -> int:
    """Child process: run the bmodel over every input with TPU-MLIR's model_runner, one image at a time."""
    import numpy as np
    import tpu_mlir

    from ...progress import report

    sys.path.insert(0, os.path.join(tpu_mlir.package_path, "python"))
    from tools.model_runner import model_inference

    spec = json.loads(Path(spec_path).read_text())
    images = np.load(spec["inputs"], mmap_mode="r")
    names, out_dir = spec["names"], Path(spec["out_dir"])
    stacked: dict[str, list] = {n: [] for n in names}
    mapping = None
    report(0, len(images), "simulator images")
    for i in range(len(images)):
        t = time.time()
        outs = model_inference({spec["input_name"]: np.ascontiguousarray(images[i:i + 1])}, spec["model"],
                               dump_all=False)
        mapping = mapping or resolve(names, outs)
        for n in names:
            o = np.asarray(outs[mapping[n]], dtype=np.float32)
            stacked[n].append(o.reshape(o.shape[1:]) if o.shape[:1] == (1,) else o)
        print(f"cmodel image {i + 1}/{len(images)}: {time.time() - t:.1f} s", flush=True)
        report(i + 1, len(images), "simulator images")
    for i, n in enumerate(names):
        np.save(out_dir / f"{i}.npy", np.stack(stacked[n]))
    (out_dir / "names.json").write_text(json.dumps(mapping))
    return 0


def _transform(r: dict, work: Path, seconds: dict) -> Path:
    """ONNX -> top MLIR (and the top MLIR interpreter on the test input): the folder holding M.mlir."""
    _, names = _onnx_io(r["onnx"])
    h, w = r["height"], r["width"]
    fmt = lambda v: ",".join(f"{x:.7f}".rstrip("0").rstrip(".") if x else "0.0" for x in v)  # noqa: E731
    tdir = work / "transform"
    _step("model_transform", ["model_transform", "--model_name", "M", "--model_def", r["onnx"],
                              "--input_shapes", f"[[1,3,{h},{w}]]", "--mean", fmt(r["mean"]), "--scale", fmt(r["scale"]),
                              *r["preprocess_flags"], "--output_names", ",".join(names),
                              "--test_input", r["test_input"], "--test_result", "M_top_outputs.npz",
                              "--mlir", "M.mlir"], tdir, seconds)
    return tdir


class CalibrationFailed(RuntimeError):
    """run_calibration exited non-zero: the host names the algorithm and the option to change."""


def _quantize_args(r: dict, tdir: Path, work: Path, seconds: dict) -> tuple[list[str], list[str]]:
    """model_deploy's quantization arguments (calibration table, quantize table, asymmetric) and the ops the
    quantize table keeps in higher precision: quantize_table (head | none | ops) merged with keep_float."""
    deploy_args: list[str] = []
    if r["quantize"] not in CALIBRATED:
        return deploy_args, []
    if r["quantize"] == "INT8":
        cdir = work / "calibration"
        _link_weights(tdir, cdir)
        listing = cdir / "inputs.txt"
        listing.write_text("\n".join(r["calib"]) + "\n")
        try:
            _step("run_calibration", ["run_calibration", str(tdir / "M.mlir"), "--data_list", str(listing),
                                      "--input_num", str(len(r["calib"])), "--cali_method", r["calibration_method"],
                                      "-o", "M_cali_table"], cdir, seconds)
        except RuntimeError as exc:
            raise CalibrationFailed(str(exc)) from None
        deploy_args += ["--calibration_table", str(cdir / "M_cali_table")]
        if r["asymmetric"]:
            deploy_args.append("--asymmetric")
    text = (tdir / "M.mlir").read_text()
    qt = r["quantize_table"]
    ops: list[str] = []
    if qt == "head" and r["quantize"] == "INT8":
        ops = head_ops(r["onnx"], text)
        if not ops:
            raise RuntimeError("quantize_table=head: no head op found in the top MLIR")
    elif isinstance(qt, list):
        ops = list(qt)
    ops = list(dict.fromkeys(ops + list(r.get("keep_float") or ())))
    missing = [op for op in ops if f'loc("{op}")' not in text]
    if missing:
        raise RuntimeError(f"quantize_table/keep_float: op(s) {', '.join(missing)} not in the top MLIR {tdir / 'M.mlir'}")
    if ops:
        qtable = work / "qtable.txt"
        qtable.write_text("".join(f"{op} {r['keep_dtype']}\n" for op in ops))
        deploy_args += ["--quantize_table", str(qtable)]
    return deploy_args, ops


def _calibration_failed(r: dict, exc: Exception) -> dict:
    return {"calibration_failed": {"algorithm": r["calibration_method"], "said": str(exc)}}


def compile(request: dict) -> dict:
    import numpy as np

    r = request
    work = Path(r["work"])
    if work.exists():
        shutil.rmtree(work)
    seconds: dict[str, float] = {}
    input_name, names = _onnx_io(r["onnx"])

    # 1. ONNX -> top MLIR, and the top MLIR interpreter on the test input
    tdir = _transform(r, work, seconds)
    test = dict(np.load(r["test_input"]))
    top = dict(np.load(tdir / "M_top_outputs.npz"))
    import onnxruntime as ort

    sess = ort.InferenceSession(r["onnx"], providers=["CPUExecutionProvider"])
    onnx_out = dict(zip(names, sess.run(names, {input_name: test[input_name]})))
    steps = {"test_input": "one calibration image" if r["quantize"] == "INT8" else "a mid-grey canvas",
             "top_vs_onnx": _compare(names, top, onnx_out)}

    # 2. calibration (int8): the float inputs the host prepared, as a list of npz files; the quantize table
    try:
        deploy_args, qtable_ops = _quantize_args(r, tdir, work, seconds)
    except CalibrationFailed as exc:
        return _calibration_failed(r, exc)
    if int(r["num_core"]) != 1:
        deploy_args += ["--num_core", str(r["num_core"])]

    # 3. top MLIR -> bmodel (no --test_input: the emulator check is step 4, kept per output)
    ddir = work / "deploy"
    _link_weights(tdir, ddir)
    with _locked(r["lock"]):
        _step("model_deploy", ["model_deploy", "--mlir", str(tdir / "M.mlir"), "--quantize", r["quantize"],
                               "--processor", r["platform"], *deploy_args, "--model", "M.bmodel"], ddir, seconds)
    bmodel = ddir / "M.bmodel"

    # 4. the bmodel on the cmodel emulator, on the same test input, vs the top MLIR
    start = time.time()
    np.save(work / "test_input.npy", test[input_name])
    mapping = _run_bmodel(bmodel, work / "test_input.npy", input_name, names, work / "check" / "out",
                          r["lock"], work / "check")
    seconds["model_runner"] = round(time.time() - start, 2)
    got = {n: np.load(work / "check" / "out" / f"{i}.npy")[0] for i, n in enumerate(names)}
    top_named = {n: top[k] for n, k in resolve(names, top).items()}
    steps["bmodel_vs_top"] = _compare(names, {n: got[n][None] if got[n].ndim < top_named[n].ndim else got[n]
                                              for n in names}, top_named)
    shutil.copyfile(bmodel, r["out"])
    return {"outputs": mapping, "steps": steps, "step_seconds": seconds, "bytes": Path(r["out"]).stat().st_size,
            "quantize_table": qtable_ops}


def layer_error(request: dict) -> dict:
    """TPU-MLIR's own tensor compare: the top (float) MLIR and the quantized tpu MLIR (model_deploy
    --not_gen_bmodel, the same calibration and quantize table as compile) both run by TPU-MLIR's MLIR
    interpreter with every tensor dumped, on each probe input; cosine and SQNR per top-MLIR op in graph
    order (the names --quantize_table takes)."""
    r = request
    work = Path(r["work"])
    if work.exists():
        shutil.rmtree(work)
    seconds: dict[str, float] = {}
    tdir = _transform(r, work, seconds)
    try:
        deploy_args, qtable_ops = _quantize_args(r, tdir, work, seconds)
    except CalibrationFailed as exc:
        return _calibration_failed(r, exc)
    ddir = work / "deploy"
    _link_weights(tdir, ddir)
    with _locked(r["lock"]):   # lowering and the interpreter load the chip's backend library
        _step("model_deploy", ["model_deploy", "--mlir", str(tdir / "M.mlir"), "--quantize", r["quantize"],
                               "--processor", r["platform"], *deploy_args, "--not_gen_bmodel", "--model", "M.bmodel"],
              ddir, seconds)
    tpu = sorted(ddir.glob("*_tpu.mlir"))
    if not tpu:
        raise RuntimeError(f"model_deploy --not_gen_bmodel wrote no *_tpu.mlir in {ddir}")
    import tpu_mlir  # noqa: F401  (sets LD_LIBRARY_PATH in os.environ for the child)

    spec = work / "compare.json"
    out = work / "layers.json"
    spec.write_text(json.dumps({"compare": True, "top": str(tdir / "M.mlir"), "tpu": str(tpu[0]),
                                "inputs": r["images"], "input_name": r["input_name"], "out": str(out), "onnx": r["onnx"],
                                "kept": qtable_ops}))
    start = time.time()
    with _locked(r["lock"]):
        proc = subprocess.run([sys.executable, "-m", "yolobuild.toolchains.tpu_mlir.worker", str(spec)], cwd=ddir,
                              stdout=sys.stdout, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"the MLIR interpreter compare failed (exit {proc.returncode})")
    seconds["compare"] = round(time.time() - start, 2)
    return {"doc": json.loads(out.read_text()), "step_seconds": seconds}


def _compare_main(spec: dict) -> int:
    """Child process: both MLIRs through TPU-MLIR's interpreter with every tensor dumped, per probe input;
    the figures in yolobuild.runtime.layer_error (numpy only), and each op's float ONNX subgraph re-run on
    the quantized MLIR's own input tensors for what quantizing that op alone costs (runtime.float_layers)."""
    import numpy as np
    import onnx
    import tpu_mlir

    sys.path.insert(0, os.path.join(tpu_mlir.package_path, "python"))
    from tools.model_runner import mlir_inference
    from utils.mlir_parser import MlirParser

    from yolobuild.runtime.float_layers import FloatLayers
    from yolobuild.runtime.layer_error import LayerStats, write

    top = MlirParser(spec["top"])
    ops = [op for op in top.ops if op.type not in ("top.Input", "top.Weight", "top.None")]
    names = {op.name for op in ops}
    kept = set(spec["kept"])
    float_layers = FloatLayers(spec["onnx"])
    tensor_of = {f"{out}_{node.op_type}": out      # TPU-MLIR names an op `<onnx output>_<OpType>`
                 for node in onnx.load(spec["onnx"], load_external_data=False).graph.node for out in node.output}
    stats = LayerStats()
    images = np.load(spec["inputs"], mmap_mode="r")
    for i in range(len(images)):
        t = time.time()
        x = {spec["input_name"]: np.ascontiguousarray(images[i:i + 1])}
        ref = mlir_inference(x, spec["top"], dump_all=True)
        got = mlir_inference(x, spec["tpu"], dump_all=True)
        for op in ops:
            if op.name in ref and op.name in got and np.size(ref[op.name]) == np.size(got[op.name]):
                inputs = [o for o in top.get_pre_op_by_op_name(op.name) if o in names]
                alone = None
                if op.name in tensor_of and inputs and all(o in tensor_of and o in got for o in inputs):
                    alone = float_layers.run(tensor_of[op.name], {tensor_of[o]: got[o] for o in inputs})
                stats.add(op.name, op.type.split(".")[-1], ref[op.name], got[op.name], inputs=inputs,
                          quantized=op.name not in kept,
                          local=None if alone is None else (alone, np.reshape(got[op.name], alone.shape)))
        print(f"MLIR compare image {i + 1}/{len(images)}: {time.time() - t:.1f} s", flush=True)
    write(spec["out"], stats.document("TPU-MLIR tensor compare (top MLIR vs quantized tpu MLIR, interpreter)",
                                      images=len(images)))
    return 0


def simulate(request: dict) -> dict:
    import numpy as np

    r = request
    work = Path(r["work"])
    images = np.load(r["images"], mmap_mode="r")
    input_name = r.get("input_name", "images")
    names = r["names"]
    mapping = _run_bmodel(Path(r["model"]), Path(r["images"]), input_name, names, Path(r["out_dir"]), r["lock"], work)
    return {"outputs": names, "images": int(len(images)), "bmodel_outputs": mapping}


def _child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    return _compare_main(spec) if spec.get("compare") else _runner_main(spec_path)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
