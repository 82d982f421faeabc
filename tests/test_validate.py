"""Compose + validate: every bad input is one line naming key, value, what is allowed, and its source."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from yolobuild.compose import compose, expand_sweep
from yolobuild.errors import UserError
from yolobuild.validate import validate

from .conftest import build_dir, run_cli


def problems(*overrides, config_dirs=()):
    with pytest.raises(UserError) as info:
        validate(compose(list(overrides), config_dirs))
    return info.value.lines


def test_default_is_the_demo():
    cfg = validate(compose([]))
    assert cfg["recipe"] == "demo"
    assert cfg["target"]["name"] == "onnxruntime"
    assert cfg["dataset"]["name"] == "shapes"
    assert (cfg["input"]["width"], cfg["input"]["height"]) == (320, 320)
    # sections mirror vamc's
    for section in ("frontend", "graph", "dataset", "backend", "workspace"):
        assert section in cfg


def test_config_is_frozen():
    cfg = validate(compose([]))
    with pytest.raises(TypeError):
        cfg["recipe"] = "other"
    with pytest.raises(TypeError):
        cfg["input"]["width"] = 64


def test_target_capabilities_come_from_its_yaml():
    cfg = validate(compose(["recipe=yolov5s", "model.weights=random", "target=va1", "precision=fp16"]))
    assert cfg["frontend"]["opset"] == 10
    assert cfg["graph"]["head"] == "raw"
    assert cfg["backend"]["toolchain"] == "vamc"


@pytest.mark.parametrize("group,bad,suggest", [
    ("target", "rk3589", "rk3588"), ("recipe", "yolov5ss", "yolov5s"), ("precision", "int9", "int8"),
    ("dataset", "shapez", "shapes"),
])
def test_unknown_group_choice_lists_allowed_and_nearest(group, bad, suggest):
    lines = problems(f"{group}={bad}")
    assert len(lines) == 1
    assert f"'{bad}'" in lines[0] and f"did you mean '{suggest}'" in lines[0]
    assert "allowed:" in lines[0] and "(command line)" in lines[0]


def test_unknown_key_suggests_the_nearest():
    (line,) = problems("model.wieghts=x.pt")
    assert line.startswith("model.wieghts: unknown key") and "model.weights" in line


def test_wrong_type_out_of_range_and_stride_reported_together():
    lines = problems("input.width=abc", "input.height=100", "dataset.calib.count=-3", "graph.head=rawr")
    text = "\n".join(lines)
    assert "input.width: 'abc' has the wrong type; expected integer (command line)" in text
    assert "dataset.calib.count: -3 is too small; allowed: >= 0 (command line)" in text
    assert "graph.head: 'rawr' is not allowed (did you mean 'raw'?)" in text
    assert "input.height: 100 is not a multiple of the model's max stride 32" in text
    assert len(lines) == 4


def test_precision_not_supported_by_target():
    (line,) = problems("recipe=yolov5s", "model.weights=random", "target=rv1106", "precision=fp16")
    assert line.startswith("precision.name: 'fp16' is not supported by target rv1106; allowed: int8")


def test_int8_needs_a_calibration_set():
    (line,) = problems("recipe=yolov5s", "model.weights=random", "precision=int8", "dataset=none")
    assert line.startswith("dataset.calib.path: int8 needs a calibration set")
    assert "dataset/none.yaml" in line


def test_head_must_suit_target():
    (line,) = problems("recipe=yolov5s", "model.weights=random", "target=va1", "precision=int8", "graph.head=decoded")
    assert line.startswith("graph.head: 'decoded' does not suit target va1; allowed: raw (command line)")


@pytest.mark.parametrize("setup,expect", [
    ("missing", "does not exist"),
    ("empty", "the folder holds no images"),
    ("text_only", "the folder holds no images"),
    ("list_with_bad", "missing or non-image"),
])
def test_calibration_folder_problems(tmp_path, setup, expect):
    path = tmp_path / "calib"
    if setup == "empty":
        path.mkdir()
    elif setup == "text_only":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif setup == "list_with_bad":
        path = tmp_path / "list.txt"
        (tmp_path / "a.txt").write_text("x")
        path.write_text("a.txt\nnothere.jpg\n")
    (line,) = problems("precision=int8", "dataset=folder", f"dataset.calib.path={path}")
    assert line.startswith("dataset.calib.path:") and expect in line and "(command line)" in line


def test_weights_file_missing():
    (line,) = problems("recipe=yolov5s", "model.weights=/no/such/best.pt")
    assert line.startswith("model.weights: '/no/such/best.pt': no such file")


def test_workspace_not_writable(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    (line,) = problems(f"workspace.path={blocker}/out")
    assert line.startswith("workspace.path:") and "not writable" in line


def test_errors_name_the_file_that_set_the_value(tmp_path):
    user = tmp_path / "myrecipes"
    (user / "recipe").mkdir(parents=True)
    (user / "target").mkdir()
    (user / "recipe" / "mydet.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        recipe: mydet
        model: {family: yolov5, scale: s, layout: v6, weights: random, nc: 2, names: [a, b],
                anchors: null, max_stride: 32, trust_checkpoint: false}
        input: {width: 650, height: 640}
    """))
    (line,) = problems("recipe=mydet", config_dirs=[user])
    assert line.startswith("input.width: 650 is not a multiple")
    assert line.endswith("myrecipes/recipe/mydet.yaml)")


def test_user_config_dir_adds_recipes_and_targets(tmp_path):
    user = tmp_path / "deploy"
    (user / "recipe").mkdir(parents=True)
    (user / "target").mkdir()
    (user / "recipe" / "mydet.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        recipe: mydet
        model: {family: yolov5, scale: n, layout: v6, weights: random, nc: 2, names: [a, b],
                anchors: null, max_stride: 32, trust_checkpoint: false}
        input: {width: 416, height: 256}
    """))
    (user / "target" / "myboard.yaml").write_text(textwrap.dedent("""\
        name: myboard
        toolchain: onnxruntime
        platform: cpu
        availability: real
        precisions: [fp32]
        frontend: onnx
        opset: 12
        input_layout: nchw_float32
        heads: {preferred: split, allowed: [split]}
        patches: []
        fuse: true
        backend_options: {}
        op_limits: []
        parity: {fp32: {cosine: 0.9999}}
    """))
    cfg = validate(compose(["recipe=mydet", "target=myboard"], [user]))
    assert cfg["graph"]["head"] == "split" and cfg["frontend"]["opset"] == 12
    assert cfg["input"]["width"] == 416


def test_bad_user_target_file_is_caught_by_the_schema(tmp_path):
    user = tmp_path / "deploy"
    (user / "target").mkdir(parents=True)
    (user / "target" / "broken.yaml").write_text("name: broken\ntoolchain: magic\n")
    lines = problems("target=broken", config_dirs=[user])
    assert any(line.startswith("target:") and "missing required key" in line for line in lines)
    assert all(line.endswith(("deploy/target/broken.yaml)", "(command line)")) for line in lines), lines


def test_multirun_expands_with_hydra_sweep_grammar():
    jobs = expand_sweep(["recipe=yolov5s", "target=rk3588,bm1684x", "precision=fp16,int8"])
    assert len(jobs) == 4
    assert ["recipe=yolov5s", "target=bm1684x", "precision=int8"] in jobs


def test_cli_user_error_is_one_line_exit_2_no_traceback():
    r = run_cli("validate", "target=rk3589")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: target:")


def test_cli_unknown_verb_and_option():
    r = run_cli("buidl")
    assert r.returncode == 2 and "did you mean 'build'" in r.stderr
    r = run_cli("--multirn")
    assert r.returncode == 2 and "--multirun" in r.stderr


def test_cli_help_lists_choices():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "rk3588" in r.stdout and "validate" in r.stdout and "precision: fp16, fp32" in r.stdout


def test_sweep_without_multirun_is_refused():
    r = run_cli("validate", "target=rk3588,bm1684x")
    assert r.returncode == 2 and "--multirun" in r.stderr


def test_multirun_validate_reports_each_job():
    r = run_cli("validate", "--multirun", "recipe=yolov5s", "target=rk3588,bm1684x", "precision=fp16,int8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok: yolov5s_") == 4


@pytest.mark.parametrize("verb", ["validate", "plan"])
def test_validate_and_plan_never_import_torch(verb, tmp_path):
    code = textwrap.dedent(f"""
        import sys, json
        from yolobuild.cli import main
        rc = main(["{verb}", "recipe=yolov5s", "precision=int8", "input.width=736", "input.height=416"])
        print(json.dumps({{"rc": rc, "heavy": [m for m in ("torch", "onnxruntime", "onnx", "numpy") if m in sys.modules]}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": []}, r.stderr


def test_plan_writes_plan_json(tmp_path):
    r = run_cli("plan", "recipe=yolov5s", "model.weights=random", "precision=int8",
                "input.width=736", "input.height=416", f"workspace.path={tmp_path / 'ws'}")
    assert r.returncode == 0, r.stderr
    plan = json.loads((build_dir(tmp_path / "ws", "yolov5s_onnxruntime_int8_416x736") / "plan.json").read_text())
    kinds = [op["kind"] for op in plan["ops"]]
    for kind in ("load_model", "patch", "export_onnx", "simplify", "calibrate", "quantize", "compile", "check_parity"):
        assert kind in kinds
    assert plan["ops"][kinds.index("load_model")]["fingerprint"]  # known before anything ran


def test_int8_shared_scale_head_is_linted_with_the_fix():
    (line,) = problems("target=rk3588", "precision=int8", "graph.head=decoded")
    assert line.startswith("graph.head: 'decoded' in int8 on rk3588 shares one output scale")
    assert "use graph.head=raw" in line and "graph.allow_shared_scale_head=true" in line
    cfg = validate(compose(["target=rk3588", "precision=int8", "graph.head=decoded",
                            "graph.allow_shared_scale_head=true"]))
    assert cfg["graph"]["head"] == "decoded"
    validate(compose(["target=rk3588", "precision=fp16", "graph.head=decoded"]))  # only int8 is at risk


def test_memoised_composition_still_checks_files_each_time(tmp_path):
    """A memo hit skips Hydra, never the checks that read the disk."""
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"PK\x03\x04 a checkpoint by its first bytes")
    args = ("validate", "recipe=yolov5s", f"model.weights={weights}")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    assert run_cli(*args, cwd=tmp_path).returncode == 0  # memo hit
    weights.unlink()
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_a_text_file_as_weights_is_refused_at_validate(tmp_path):
    weights = tmp_path / "best.pt"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")   # an LFS pointer
    r = run_cli("validate", "recipe=yolov5s", f"model.weights={weights}", cwd=tmp_path)
    assert r.returncode == 2 and "is a text file" in r.stderr and "git-lfs" in r.stderr


def test_independent_mistakes_are_all_reported(tmp_path):
    r = run_cli("validate", "input.widht=320", "modle.nc=3", "input.height=abc", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 3, r.stderr
    assert lines[0].startswith("error: input.widht") and lines[1].startswith("error: modle.nc")
    assert lines[2].startswith("error: input.height")


@pytest.mark.parametrize("target, option, value, ok", [
    ("bm1684x", "num_core", 2, False), ("bm1688", "num_core", 2, True),
    ("mlu220", "core_number", 5, False), ("mlu270", "core_number", 5, True),
])
def test_chip_facts_narrow_options_at_validate(target, option, value, ok):
    """A chip's core count lives in its target YAML (option_choices), checked before any build."""
    if ok:
        validate(compose([f"target={target}", f"backend.options.{option}={value}"]))
        return
    with pytest.raises(UserError) as err:
        validate(compose([f"target={target}", f"backend.options.{option}={value}"]))
    assert err.value.lines[0].startswith(f"backend.options.{option}: {value} is not allowed on {target}")
