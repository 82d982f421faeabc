"""Toolchains as plugins: a third-party toolchain found through its entry point and built end to end,
and fingerprints that cover only the code an op runs (editing one vendor keeps every other cache)."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
import pytest

from .conftest import build_dir, REPO, run_cli

SMALL = ("input.width=160", "input.height=160", "check.parity_images=2")

TOY_DECLARATION = """\
name: toy
env: host
tools: [onnxruntime]
precisions: [fp32]
heads: [raw, split, decoded]
plan: {quantize: none, simulate: op, handoff: false, exports: []}
compiled: [model.toy]
op_version: 1
steps: toyvendor.steps
code: [steps.py]
options:
  type: object
  additionalProperties: false
  properties:
    threads: {type: integer, minimum: 1, default: 1}
"""

TOY_STEPS = '''\
"""A toy NPU: its "compiler" copies the ONNX, its "simulator" is ONNX Runtime."""
import shutil

import numpy as np

from yolobuild.runtime.arrays import canvas_to_input, load_npz, save_npz


def compile(ctx):
    shutil.copyfile(ctx.inputs["model"], ctx.outputs["model.toy"])
    ctx.results["threads"] = ctx.params["options"]["threads"]


def simulate(ctx):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = ctx.params["options"]["threads"]
    sess = ort.InferenceSession(str(ctx.inputs["model"]), so, providers=["CPUExecutionProvider"])
    canvases = load_npz(ctx.inputs["probe"])["images"]
    names = [o.name for o in sess.get_outputs()]
    outs = [sess.run(names, {sess.get_inputs()[0].name: canvas_to_input(c[None], ctx.params["scale"])})
            for c in canvases]
    arrays = {n: np.concatenate([o[k] for o in outs], 0) for k, n in enumerate(names)}
    save_npz(ctx.outputs["outputs.npz"], __names__=np.asarray(names, dtype=str), **arrays)
'''

TOY_TARGET = """\
name: toy1
toolchain: toy
platform: toy1
availability: simulator
precisions: [fp32]
default_precision: fp32
frontend: onnx
opset: 13
input_layout: nchw_float32
heads: {preferred: raw, allowed: [raw, split, decoded]}
patches: []
fuse: true
backend_options: {}
op_limits: []
parity:
  fp32: {cosine: 0.9999}
"""


def toy_distribution(root: Path) -> Path:
    """A site folder holding the toyvendor package and its dist-info with the entry point."""
    site = root / "site"
    pkg = site / "toyvendor"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""A toy toolchain package."""\n')
    (pkg / "toolchain.yaml").write_text(TOY_DECLARATION)
    (pkg / "steps.py").write_text(TOY_STEPS)
    info = site / "toyvendor-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyvendor\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[yolobuild.toolchains]\ntoy = toyvendor\n")
    conf = root / "conf" / "target"
    conf.mkdir(parents=True)
    (conf / "toy1.yaml").write_text(TOY_TARGET)
    return site


def manifest(ws: Path, name: str) -> dict:
    return json.loads((build_dir(ws, name) / "manifest.json").read_text())


def test_a_toolchain_from_a_third_party_distribution_builds_end_to_end(tmp_path):
    site = toy_distribution(tmp_path)
    env = {"PYTHONPATH": str(site)}
    args = ("--config-dir", str(tmp_path / "conf"), "target=toy1", *SMALL, f"workspace.path={tmp_path / 'ws'}")
    r = run_cli("validate", *args, "backend.options.threads=zero", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "backend.options.threads" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*args, "backend.options.threads=2", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    m = manifest(tmp_path / "ws", "demo_toy1_fp32_160x160")
    assert m["status"] == "compiled"
    ops = {o["id"]: o for o in m["ops"]}
    assert ops["compile"]["results"]["threads"] == 2
    assert min(v["cosine"] for v in m["parity"].values()) > 0.9999
    assert (build_dir(tmp_path / "ws", "demo_toy1_fp32_160x160") / "model.toy").is_file()


def test_a_toolchain_declared_without_steps_fails_honestly(tmp_path):
    site = toy_distribution(tmp_path)
    decl = site / "toyvendor" / "toolchain.yaml"
    decl.write_text(decl.read_text().replace("steps: toyvendor.steps", "steps: null"))
    args = ("--config-dir", str(tmp_path / "conf"), "target=toy1", *SMALL, f"workspace.path={tmp_path / 'ws'}")
    r = run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert r.returncode == 3 and "not wired" in r.stderr and "Traceback" not in r.stderr
    m = manifest(tmp_path / "ws", "demo_toy1_fp32_160x160")
    assert m["status"] == "failed" and {op["id"]: op["status"] for op in m["ops"]}["compile"] == "failed"


def copy_of_the_package(root: Path) -> Path:
    """yolobuild as it would be checked out, in a folder of its own (the test edits this copy)."""
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("yolobuild", "recipes", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    return src


def test_editing_one_vendor_module_keeps_every_other_targets_cache(tmp_path):
    src = copy_of_the_package(tmp_path)
    env = {"PYTHONPATH": str(src), "YOLOBUILD_CACHE": str(tmp_path / "cache")}
    args = (*SMALL, f"workspace.path={tmp_path / 'ws'}")
    first = run_cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    with open(src / "yolobuild" / "toolchains" / "vamc" / "steps.py", "a") as f:
        f.write("\n# an edit to the VastAI toolchain only\n")
    second = run_cli(*args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    statuses = {o["id"]: o["status"] for o in manifest(tmp_path / "ws", "demo_onnxruntime_fp32_160x160")["ops"]}
    assert set(statuses.values()) == {"cached"}, statuses
    with open(src / "yolobuild" / "toolchains" / "onnxruntime" / "steps.py", "a") as f:
        f.write("\n# an edit to the toolchain this build uses\n")
    third = run_cli(*args, cwd=tmp_path, env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    statuses = {o["id"]: o["status"] for o in manifest(tmp_path / "ws", "demo_onnxruntime_fp32_160x160")["ops"]}
    assert statuses["compile"] == statuses["simulate"] == "ran" and statuses["load_model"] == "cached", statuses


def test_shipped_declarations_match_their_schema_and_are_found_without_import():
    import subprocess
    import sys

    code = textwrap.dedent("""
        import sys
        from yolobuild.toolchains import registry
        names = registry.names()
        assert {"onnxruntime", "rknn-toolkit2", "tpu-mlir", "vamc", "cambricon", "tpu-nntc",
                "rknn-toolkit-1.7"} <= set(names), names
        bad = [p for n in names for p in registry.declaration_problems(registry.get(n))]
        assert not bad, bad
        assert not any(m.endswith(".steps") or m == "torch" for m in sys.modules), sorted(sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", sorted(__import__("yolobuild.toolchains.registry", fromlist=["shipped"]).shipped()))
def test_every_shipped_declaration_is_valid_and_each_option_has_a_valid_default(name):
    """Each default lives once, in the option schema: every option has one, and the defaults satisfy it."""
    import jsonschema
    import yaml

    from yolobuild.toolchains import registry

    decl = registry.get(name)
    schema = json.loads((REPO / "schemas" / "toolchain.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(Path(decl.source).read_text()))
    jsonschema.Draft202012Validator.check_schema(decl.options)
    defaults = decl.option_defaults()
    assert set(defaults) == set(decl.options.get("properties", {}))
    jsonschema.Draft202012Validator(decl.options).validate(defaults)
    root = Path(registry.__file__).resolve().parents[2]
    assert all((root / f).exists() for f in decl.code), decl.code
