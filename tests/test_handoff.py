"""Hand-off bundles (va1 / vamc, mlu220 / mlu270 / Cambricon, rk1808 / RKNN-Toolkit 1.7, bm1684 / tpu-nntc).

Every generated vendor file is checked: YAML / JSON parse and match the vendor-format schema,
Python scripts compile and run against small fakes of the vendor modules (tests/fakes) that
record their calls with strict signatures, run.sh runs end to end with those fakes. Builds use
the demo at 160x160 with 8 calibration / evaluation images, sharing one cache.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yolobuild.toolchains.handoff.bundle import PREVIEW_LABEL
from yolobuild.toolchains.vamc.steps import VENDOR as VAMC

from .conftest import REPO, build_dir, cli_in_process as cli

FAKES = Path(__file__).parent / "fakes"
SMALL = ("recipe=demo", "input.width=160", "input.height=160", "dataset.generator.calib_count=8",
         "dataset.calib.count=8", "dataset.generator.eval_count=8")



@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("handoff")


def build(root: Path, *args: str, ws: str = "ws") -> tuple[int, str, str]:
    return cli(*SMALL, *args, f"workspace.path={root / ws}", f"cache.dir={root / 'cache'}")


def manifest(build_dir: Path) -> dict:
    return json.loads((build_dir / "manifest.json").read_text())


def schema_errors(doc, schema_file: str) -> list[str]:
    from jsonschema import Draft202012Validator

    schema = json.loads((VAMC.schemas_dir / schema_file).read_text())
    return [e.message for e in Draft202012Validator(schema).iter_errors(doc)]


def run_bundle(bundle: Path, tmp: Path, path_bins: bool = False) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """bash run.sh in a copy of the bundle, the vendor fakes importable (and on PATH); -> (process, calls)."""
    work = tmp / "docker"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(bundle, work)
    log = tmp / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{FAKES}{os.pathsep}{work}", "FAKE_VENDOR_LOG": str(log),
           "PYTHON": sys.executable}
    if path_bins:
        env["PATH"] = f"{fake_bin(tmp)}{os.pathsep}{env['PATH']}"
    r = subprocess.run(["bash", "run.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return r, calls


def fake_bin(tmp: Path) -> Path:
    """tests/fakes/bin scripts as executables running this interpreter."""
    d = tmp / "bin"
    d.mkdir(exist_ok=True)
    for src in (FAKES / "bin").iterdir():
        dest = d / src.name
        dest.write_text(f"#!{sys.executable}\n" + src.read_text())
        dest.chmod(0o755)
    return d


# --------------------------------------------------------------------------- va1 / vamc

@pytest.fixture(scope="module")
def va1(root):
    code, out, err = build(root, "target=va1", "precision=int8")
    assert code == 0, out + err
    return build_dir(root / "ws", "demo_va1_int8_160x160"), out


def test_va1_int8_bundle_is_complete_and_honest(va1):
    d, out = va1
    m = manifest(d)
    assert m["status"] == "handoff"
    assert not m["parity"] and not m["metrics"]  # nothing claims a built model's figures
    ops = {o["id"]: o for o in m["ops"]}
    assert ops["handoff"]["status"] == "handoff" and "compile" not in ops and "package" not in ops
    b = d / "handoff"
    for name in ("README.md", "run.sh", "build.yaml", "vdsp_params.json", "benchmark.sh", "model.onnx",
                 "dataset.txt", "labels.txt", "bundle.json", "calib/preprocess.json"):
        assert (b / name).is_file(), name
    cfg = yaml.safe_load((b / "build.yaml").read_text())
    assert schema_errors(cfg, "vamc3_build.schema.json") == []
    assert cfg["backend"] == {"type": "tvm_vacc", "dtype": "int8", "compile": {"data_transport_mode": 3, "cluster_mode": 0},
                              "quantize": {"calibrate_mode": "max", "quantize_per_channel": True}}
    assert cfg["frontend"]["shape"] == {"images": [1, 3, 160, 160]} and "graph" not in cfg
    assert cfg["dataset"]["sampler"]["get_data_num"] == 8 and len(list((b / "calib" / "images").glob("*.png"))) == 8
    assert schema_errors(json.loads((b / "vdsp_params.json").read_text()), "vamp_vdsp_params.schema.json") == []
    import onnx

    assert [o.name for o in onnx.load(str(b / "model.onnx")).graph.output] == ["out8", "out16", "out32"]  # head cut
    assert "vamc compile build.yaml" in (b / "run.sh").read_text()
    bench = (b / "benchmark.sh").read_text()
    assert "vamp -m deploy_weights/demo_va1_int8/mod --vdsp_params vdsp_params.json -i 1 p 1 -b 1 -d 0" in bench
    assert "--datalist" in bench and "--path_output npz_output" in bench
    readme = (b / "README.md").read_text()
    assert "bash run.sh" in readme and "vamc v3.0+" in readme and "Nothing in this folder was compiled" in readme
    listed = json.loads((b / "bundle.json").read_text())["files"]
    assert "build.yaml" in listed and "calib/images/0007.png" in listed
    # the CLI's last line says what to run next, and where; report.md lists the bundle's files
    last = out.strip().splitlines()[-1]
    assert last.startswith("next: copy ") and str(b) in last and last.endswith("bash run.sh")
    report = (d / "report.md").read_text()
    assert "## Hand-off bundle" in report and "`build.yaml`" in report and "(8 calibration images)" in report


def test_va1_int8_preview_is_labelled_and_measured(va1):
    d, _ = va1
    m = manifest(d)
    pv = {o["id"]: o for o in m["ops"]}["preview"]["results"]["preview"]
    assert pv["label"] == PREVIEW_LABEL == "preview, not the vendor compiler"
    assert pv["calibration_images"] == 8 and pv["qdq_nodes"] > 100
    for field in ("boxes", "objectness", "class_scores"):
        assert 0.9 < pv["parity"][field]["cosine"] <= 1.0
    assert pv["metrics"]["pytorch_fp32"]["mAP50_95"] > 0.3 and "preview_int8" in pv["metrics"]
    assert json.loads((d / "preview.json").read_text()) == pv
    assert "preview, not the vendor compiler" in (d / "report.md").read_text()


def test_va1_int8_preview_shows_in_the_summaries_labelled(va1):
    """A hand-off build has no compiled model to score: the tables show its host preview, saying so."""
    from yolobuild.sweep.rows import row_from_manifest
    from yolobuild.sweep.terminal import _accuracy

    d, out = va1
    m = manifest(d)
    pm = {o["id"]: o for o in m["ops"]}["preview"]["results"]["preview"]["metrics"]
    cell = f"{pm['pytorch_fp32']['mAP50_95']:.4f} → {pm['preview_int8']['mAP50_95']:.4f} (preview)"
    assert cell in out
    row = row_from_manifest(["target=va1"], 0, m, d, None)
    assert row["accuracy_kind"] == "preview (labels)" and _accuracy(row) == cell
    assert "host int8 preview, not the vendor compiler" in (d / "report.html").read_text()


def test_va1_run_sh_with_a_fake_vamc(va1, tmp_path):
    d, _ = va1
    r, calls = run_bundle(d / "handoff", tmp_path, path_bins=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls == [{"call": "vamc", "args": ["compile", "build.yaml"], "kwargs": {"name": "demo_va1_int8"}}]
    assert (tmp_path / "docker" / "deploy_weights" / "demo_va1_int8" / "mod.json").is_file()


def test_va1_vamc2_layout_and_extra_ops_follow_recipe_keys(root):
    code, out, err = build(root, "target=va1", "precision=fp16", "backend.options.vamc_version=2",
                           "backend.options.extra_ops=true", ws="ws2")
    assert code == 0, out + err
    b = build_dir(root / "ws2", "demo_va1_fp16_160x160") / "handoff"
    cfg = yaml.safe_load((b / "build.yaml").read_text())
    assert schema_errors(cfg, "vamc2_build.schema.json") == []
    assert cfg["engine"]["dtype"] == "fp16" and cfg["engine"]["common"] == {"do_quantization": False}
    nms = cfg["engine"]["add_extra_ops_to_graph"]
    assert nms["type"] == "yolov5_nms" and nms["params"]["num_classes"] == 3
    meta = json.loads((b.parent / "model.json").read_text())
    assert nms["params"]["anchor"] == pytest.approx([v for level in meta["anchors_px"] for a in level for v in a])
    assert len(nms["params"]["anchor"]) == 18 and nms["params"]["strides"] == [8, 16, 32]
    assert "dataset" not in cfg and not (b / "calib").exists()
    assert "vamc build build.yaml" in (b / "run.sh").read_text()
    ops = {o["id"] for o in manifest(b.parent)["ops"]}
    assert "preview" not in ops and "calibrate" not in ops  # fp16: no calibration, no int8 preview


# --------------------------------------------------------------------------- mlu220 / mlu270 (Cambricon)

@pytest.fixture(scope="module")
def mlu220(root):
    code, out, err = build(root, "target=mlu220", "precision=int8")
    assert code == 0, out + err
    return build_dir(root / "ws", "demo_mlu220_int8_160x160")


def _import_path(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mlu220_pth_loads_into_the_bundled_model_definition_and_matches(root, mlu220):
    import torch

    from yolobuild.ops.building import load_patched

    b = mlu220 / "handoff"
    sd = torch.load(b / "model.pth", weights_only=True)
    assert isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())  # weights only
    assert "model.0.bn.running_mean" in sd  # conv+BN not fused
    with open(b / "model.pth", "rb") as f:
        assert f.read(2) != b"PK"  # legacy serialization that PyTorch 1.3 reads
    mlu = _import_path(b / "yolov5_mlu.py", "yolov5_mlu_test").build_model(str(b / "model.pth"))
    m = manifest(mlu220)
    patched = root / "cache" / {o["id"]: o for o in m["ops"]}["patch"]["outputs"]["patched.pt"]["path"]
    ref = load_patched(patched)
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = mlu(x), ref(x)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())


def test_mlu220_scripts_run_against_fake_torch_mlu(mlu220, tmp_path):
    b = mlu220 / "handoff"
    run_sh = (b / "run.sh").read_text()
    assert '"$PYTHON" quantize.py --weights model.pth --data dataset.txt --output model_int8.pth' in run_sh
    assert ("genoff.py -model model_int8.pth -mname demo_mlu220_int8_mlu220 -mcore MLU220 -core_number 1 -batch_size 1 "
            "-in_height 160 -in_width 160 -half_input 1 -input_format 0 -fake_device 1 -quantized_mode 1") in run_sh
    r, calls = run_bundle(b, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    names = [c["call"] for c in calls if c["call"] != "import torch_mlu"]
    q = next(c for c in calls if c["call"] == "quantize_dynamic_mlu" and c["kwargs"]["gen_quant"])
    assert q["kwargs"]["dtype"] == "int8"
    assert q["kwargs"]["qconfig_spec"] == {"iteration": 8, "use_avg": False, "data_scale": 1.0, "mean": [0.0, 0.0, 0.0],
                                           "std": [1.0, 1.0, 1.0], "per_channel": False, "firstconv": True}
    genoff = names[names.index("set_core_number"):]
    assert genoff[:5] == ["set_core_number", "set_core_version", "set_device", "save_as_cambricon", "set_input_format"]
    assert {"call": "set_core_version", "args": ["MLU220"], "kwargs": {}} in calls
    assert genoff[-3:] == ["jit.trace", "wrote", "save_as_cambricon"]
    trace = next(c for c in calls if c["call"] == "jit.trace")
    assert trace["args"] == [[1, 3, 160, 160], "torch.float16"] and trace["kwargs"] == {"check_trace": False}
    assert (tmp_path / "docker" / "model_int8.pth").is_file()
    assert (tmp_path / "docker" / "demo_mlu220_int8_mlu220.cambricon").is_file()
    readme = (b / "README.md").read_text()
    assert "torch_mlu" in readme and "PyTorch 1.3" in readme and "bash run.sh" in readme


def test_mlu_bundle_follows_recipe_keys(root, mlu220):
    code, out, err = build(root, "target=mlu270", "precision=int16", "backend.options.core_number=4",
                           "backend.options.per_channel=true", "backend.options.iteration=3")
    assert code == 0, out + err
    b = build_dir(root / "ws", "demo_mlu270_int16_160x160") / "handoff"
    run_sh = (b / "run.sh").read_text()
    assert "-mcore MLU270 -core_number 4" in run_sh and "-fake_device 0 -quantized_mode 2" in run_sh
    q = (b / "quantize.py").read_text()
    assert "DTYPE = 'int16'" in q and "'per_channel': True" in q and "'iteration': 3" in q
    a = json.loads((mlu220 / "handoff" / "bundle.json").read_text())["files"]
    c = json.loads((b / "bundle.json").read_text())["files"]
    assert a["model.pth"] == c["model.pth"]  # same weights, same bytes (reproducible legacy serialization)
    assert a["quantize.py"] != c["quantize.py"] and a["genoff.py"] != c["genoff.py"]
    assert "preview" not in {o["id"] for o in manifest(b.parent)["ops"]}  # int16: no int8 preview


def test_mlu_fp16_has_no_quantize_step(root, tmp_path):
    code, out, err = build(root, "target=mlu270", "precision=fp16")
    assert code == 0, out + err
    b = build_dir(root / "ws", "demo_mlu270_fp16_160x160") / "handoff"
    assert not (b / "quantize.py").exists() and not (b / "calib").exists()
    r, calls = run_bundle(b, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(c["call"] == "quantize_dynamic_mlu" for c in calls)
    assert (tmp_path / "docker" / "demo_mlu270_fp16_mlu270.cambricon").is_file()


# --------------------------------------------------------------------------- rk1808 (RKNN-Toolkit 1.7)

@pytest.mark.parametrize("chip", ["rk1808", "rv1109"])
def test_rknn1_bundle_and_convert_py_against_fake_rknn(root, tmp_path, chip):
    code, out, err = build(root, f"target={chip}", "precision=int8")
    assert code == 0, out + err
    d = build_dir(root / "ws", f"demo_{chip}_int8_160x160")
    b = d / "handoff"
    import onnx

    g = onnx.load(str(b / "model.onnx")).graph
    ops = {n.op_type for n in g.node}
    assert "ScatterND" not in ops and "HardSwish" not in ops
    assert [o.name for o in g.output] == ["xy", "wh", "conf"]  # split head, mode 0: heads not concatenated
    r, calls = run_bundle(b, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["call"] for c in calls] == ["RKNN", "config", "load_onnx", "build", "export_rknn", "release"]
    cfg = calls[1]["kwargs"]
    assert cfg["mean_values"] == [[0, 0, 0]] and cfg["std_values"] == [[255.0, 255.0, 255.0]]
    assert cfg["target_platform"] == chip and cfg["quantized_dtype"] == "asymmetric_affine-u8"
    assert calls[3]["kwargs"] == {"do_quantization": True, "dataset": "dataset.txt", "pre_compile": False}
    assert (tmp_path / "docker" / f"demo_{chip}_int8.rknn").is_file()
    pv = {o["id"]: o for o in manifest(d)["ops"]}["preview"]["results"]["preview"]
    assert pv["label"] == PREVIEW_LABEL


def test_rknn1_pre_compile_needs_the_raw_head(root):
    code, out, err = build(root, "target=rk1808", "precision=fp16", "backend.options.pre_compile=true")
    assert code == 2, out + err
    assert "backend.options.pre_compile" in err and "graph.head=raw" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bm1684 (tpu-nntc)

def test_bm1684_tpu_nntc_bundle_runs_with_fake_sdk(root, tmp_path):
    code, out, err = build(root, "target=bm1684", "precision=int8", "backend.toolchain=tpu-nntc")
    assert code == 0, out + err
    d = build_dir(root / "ws", "demo_bm1684_int8_160x160")
    m = manifest(d)
    assert m["status"] == "handoff"
    assert {"export_torchscript", "handoff", "preview"} <= {o["id"] for o in m["ops"]}
    b = d / "handoff"
    run_sh = (b / "run.sh").read_text()
    assert ("--cali_image_preprocess='resize_h=160,resize_w=160;scale=0.003921569,bgr2rgb=True'" in run_sh)
    assert "bmnetu --model=demo_bm1684_int8.prototxt --weight=demo_bm1684_int8.int8umodel" in run_sh
    r, calls = run_bundle(b, tmp_path, path_bins=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["call"] for c in calls] == ["cali_model", "bmnetu"]
    assert calls[0]["kwargs"]["cali_iterations"] == "8" and calls[0]["kwargs"]["images"] == 8
    assert (tmp_path / "docker" / "compilation" / "compilation.bmodel").is_file()


def test_bm1684_tpu_nntc_fp32_runs_bmnetp(root, tmp_path):
    code, out, err = build(root, "target=bm1684", "precision=fp32", "backend.toolchain=tpu-nntc")
    assert code == 0, out + err
    r, calls = run_bundle(build_dir(root / "ws", "demo_bm1684_fp32_160x160") / "handoff", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["call"] for c in calls] == ["bmnetp"]
    assert calls[0]["kwargs"]["shapes"] == "[[1,3,160,160]]" and calls[0]["kwargs"]["outputs"] == 3


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, key, allowed", [
    (("target=mlu220", "precision=fp32"), "precision", "allowed: int8, int16, fp16"),
    (("target=mlu220", "precision=int4"), "precision", "allowed:"),
    (("target=mlu220", "precision=int8", "dataset=none"), "dataset.calib.path", "needs a calibration set"),
    (("target=bm1684x", "backend.toolchain=tpu-nntc"), "backend.toolchain", "allowed: tpu-mlir"),
])
def test_bad_input_exits_2_in_one_line(tmp_path, args, key, allowed):
    code, out, err = cli("validate", "recipe=demo", *args, f"workspace.path={tmp_path / 'ws'}")
    assert code == 2, out + err
    assert err.startswith(f"error: {key}") and allowed in err and "Traceback" not in err


def test_bad_backend_option_names_the_key(root):
    code, out, err = build(root, "target=va1", "precision=fp16", "+backend.options.vamc_verison=3",
                           "backend.options.cluster_mode=7")
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert any(ln.startswith("error: backend.options.cluster_mode: 7 is not allowed") for ln in lines)
    assert any("backend.options.vamc_verison: not a vamc option (did you mean 'vamc_version'?)" in ln for ln in lines)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- user edits, vendor tool present

def test_a_bundle_the_user_edited_is_never_overwritten(root):
    args = ("target=va1", "precision=fp16")
    code, out, err = build(root, *args, ws="ws_edit")
    assert code == 0, out + err
    d = build_dir(root / "ws_edit", "demo_va1_fp16_160x160")
    (d / "handoff" / "build.yaml").write_text((d / "handoff" / "build.yaml").read_text() + "# my tweak\n")
    code, out, err = build(root, *args, ws="ws_edit")  # nothing new: the edits stay, nothing beside
    assert code == 0 and "# my tweak" in (d / "handoff" / "build.yaml").read_text()
    assert not (d / "handoff.new").exists()
    code, out, err = build(root, *args, "backend.options.cluster_mode=1", ws="ws_edit")   # another configuration:
    assert code == 0, out + err                                                        # its own folder
    assert "# my tweak" in (d / "handoff" / "build.yaml").read_text() and not (d / "handoff.new").exists()
    # the same configuration with a changed target file (a --config-dir shadowing va1): a new bundle, beside
    shadow = root / "shadow" / "target"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "va1.yaml").write_text((REPO / "recipes" / "target" / "va1.yaml").read_text()
                                     .replace("backend_options: {}", "backend_options: {cluster_mode: 1}"))
    code, out, err = build(root, *args, "--config-dir", str(root / "shadow"), ws="ws_edit")
    assert code == 0, out + err
    assert "# my tweak" in (d / "handoff" / "build.yaml").read_text()
    assert "cluster_mode: 1" in (d / "handoff.new" / "build.yaml").read_text()
    assert "holds your edits" in out and str(d / "handoff.new") in out
    m = manifest(d)
    assert m["kept_edits"] and "handoff.new" in m["next"] and str(d) not in m["next"]   # no machine paths


def test_vendor_tool_present_runs_it(root, tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(FAKES))
    monkeypatch.setenv("FAKE_VENDOR_LOG", str(log))
    code, out, err = build(root, "target=va1", "precision=fp16", ws="ws_tool")
    assert code == 0, out + err
    d = build_dir(root / "ws_tool", "demo_va1_fp16_160x160")
    res = {o["id"]: o for o in manifest(d)["ops"]}["handoff"]["results"]
    assert res["vendor_tool"]["ran"] is True and res["vendor_tool"]["found"].startswith("vamc on PATH")
    assert (d / "handoff" / "deploy_weights" / "demo_va1_fp16" / "mod.so").is_file()
    assert json.loads(log.read_text().splitlines()[0])["call"] == "vamc"
    assert "the vendor tool ran here" in out.strip().splitlines()[-1]


def test_configured_vendor_python_counts_only_if_it_imports_the_vendor_module(tmp_path, monkeypatch):
    """backend.options.vendor_python is the vendor tool only when torch_mlu imports there."""
    from yolobuild.toolchains.cambricon.steps import VENDOR
    from yolobuild.toolchains.handoff import bundle as ho

    monkeypatch.delenv("YOLOBUILD_NO_VENDOR_TOOLS", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no fake genoff.py on PATH
    with_sdk = tmp_path / "python-with-torch_mlu"
    with_sdk.write_text(f"#!/bin/sh\nPYTHONPATH={FAKES} exec {sys.executable} \"$@\"\n")
    with_sdk.chmod(0o755)
    found = ho.detect(VENDOR, {"vendor_python": str(with_sdk)})
    assert found.startswith("configured:") and "imports torch_mlu" in found
    assert ho.detect(VENDOR, {"vendor_python": sys.executable}) == "absent"
    assert ho.detect(VENDOR, {"vendor_python": str(tmp_path / "missing-python")}) == "absent"
