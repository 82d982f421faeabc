"""Recipes in a model repo: init, discovery, the recipe schema, check-recipes and its pre-commit hook,
the lock, the Python API. References are independent: the shipped demo recipe for what init must read
from the demo checkpoint, jsonschema's own meta-schema check, a hand-edited lock entry."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yolobuild.compose import RECIPES_DIR

from tests.conftest import REPO, cli_in_process, run_cli

ENV = {"PYTHONPATH": str(REPO)}
DEMO_PT = REPO / "yolobuild" / "assets" / "demo-yolov5n-shapes.pt"


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


# ------------------------------------------------------------------------------ init + discovery

def test_init_then_validate_from_a_subfolder_without_config_dir(tmp_path):
    root = git_repo(tmp_path / "repo")
    r = run_cli("init", "--name", "helmet", cwd=root, env=ENV)
    assert r.returncode == 0, r.stderr
    recipe = root / "deploy" / "recipe" / "helmet.yaml"
    assert (root / "yolobuild.yaml").is_file() and recipe.is_file()
    text = recipe.read_text()
    assert text.startswith("# @package _global_\n# yaml-language-server: $schema=../recipe.schema.json")
    assert yaml.safe_load(text)["defaults"] == ["yolov5s", "_self_"]
    assert all("#" in line for line in text.splitlines() if line.strip() and not line.startswith(("model:", "defaults:")))
    sub = root / "src" / "deeper"
    sub.mkdir(parents=True)
    r = run_cli("validate", "recipe=helmet", "target=onnxruntime", cwd=sub, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "ok: helmet_onnxruntime_fp32_640x640" in r.stdout
    r = run_cli("--help", cwd=sub, env=ENV)
    assert f"recipe ({root / 'deploy'}): helmet" in r.stdout and "yolov5s" in r.stdout


def test_init_refuses_to_overwrite_in_one_line(tmp_path):
    git_repo(tmp_path / "r")
    os.chdir(tmp_path / "r")
    assert cli_in_process("init", "--name", "helmet")[0] == 0
    before = (tmp_path / "r" / "deploy" / "recipe" / "helmet.yaml").read_text()
    code, out, err = cli_in_process("init", "--name", "helmet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "never overwrites" in err
    assert (tmp_path / "r" / "deploy" / "recipe" / "helmet.yaml").read_text() == before
    code, _, err = cli_in_process("init", "--name", "yolov5s")
    assert code == 2 and "shipped recipe" in err
    code, _, err = cli_in_process("init", "--nmae", "x")
    assert code == 2 and "did you mean '--name'" in err


def test_init_reads_the_checkpoint_like_the_shipped_demo_recipe_says(tmp_path):
    """The demo recipe was written by hand for the demo checkpoint: init must arrive at the same model."""
    root = git_repo(tmp_path / "r")
    (root / "runs").mkdir()
    shutil.copy(DEMO_PT, root / "runs" / "best.pt")
    os.chdir(root)
    code, out, err = cli_in_process("init", "--weights", "runs/best.pt", "--name", "shapes")
    assert code == 0, err
    data = yaml.safe_load((root / "deploy" / "recipe" / "shapes.yaml").read_text())
    assert data["defaults"] == ["yolov5n", "_self_"]
    assert data["model"]["weights"] == "runs/best.pt"
    import yolobuild

    mine = yolobuild.validate(recipe="shapes")
    demo = yolobuild.validate(recipe="demo")
    for key in ("family", "scale", "layout", "nc", "names", "max_stride"):
        assert mine["model"][key] == demo["model"][key], key
    assert dict(mine["input"]) == dict(demo["input"])


def test_marker_in_pyproject_and_config_dir_wins(tmp_path):
    from yolobuild import repo

    root = tmp_path / "p"
    (root / "cfg" / "recipe").mkdir(parents=True)
    (root / "other" / "recipe").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname="x"\n\n[tool.yolobuild]\nconfig_dir = "cfg"\n')
    (root / "a" / "b").mkdir(parents=True)
    found = repo.discover(root / "a" / "b")
    assert found.root == root and found.config_dir == root / "cfg"
    dirs, overrides = repo.apply(found, [], ["target=rk3588"])
    assert dirs == [str(root / "cfg")] and overrides == [f"repo-default:workspace.path={root / 'yolobuild-out'}", "target=rk3588"]
    dirs, overrides = repo.apply(found, [str(root / "other")], ["workspace.path=w"])
    assert dirs == [str(root / "other")] and overrides == ["workspace.path=w"]
    assert repo.discover(tmp_path) is None


def test_bad_marker_is_one_line_exit_2(tmp_path):
    (tmp_path / "yolobuild.yaml").write_text("config_dri: deploy\n")
    code, _, err = cli_in_process("validate")
    assert code == 2 and err.strip().count("\n") == 0 and "did you mean 'config_dir'" in err


# ------------------------------------------------------------------------------ schema + check-recipes

def test_schema_is_draft_2020_12_self_contained_and_judges_recipes(tmp_path):
    from jsonschema import Draft202012Validator

    out = tmp_path / "s.json"
    code, _, err = cli_in_process("schema", "--output", str(out))
    assert code == 0, err
    schema = json.loads(out.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    refs = [m for m in json.dumps(schema).split('"$ref": ')[1:]]
    assert all(r.startswith('"#/$defs/') for r in refs)   # nothing outside the file
    v = Draft202012Validator(schema)
    shipped = sorted((RECIPES_DIR / "recipe").glob("*.yaml"))
    assert len(shipped) > 20
    for path in shipped:
        assert not list(v.iter_errors(yaml.safe_load(path.read_text()))), path
    bad = yaml.safe_load((RECIPES_DIR / "recipe" / "yolov5s.yaml").read_text())
    bad["model"]["nc_classes"] = 3
    assert list(v.iter_errors(bad))
    bad = {"inptu": {"width": 320}}
    assert list(v.iter_errors(bad))


def test_schema_takes_each_toolchains_option_schema_from_its_declaration():
    from yolobuild import recipe_schema

    schema = recipe_schema.recipe_file_schema()
    assert {"options_rknn-toolkit2", "options_onnxruntime", "options_openvino"} <= set(schema["$defs"])
    assert recipe_schema.problems({"backend": {"options": {"quantized_method": "layer"}}}, schema) == []
    assert recipe_schema.problems({"backend": {"options": {"quantized_method": "row"}}}, schema)


def write_recipes(config_dir: Path) -> tuple[Path, Path]:
    (config_dir / "recipe").mkdir(parents=True, exist_ok=True)
    good = config_dir / "recipe" / "good.yaml"
    good.write_text("# @package _global_\ndefaults: [yolov5s, _self_]\nrecipe: good\nmodel: {weights: random}\n")
    bad = config_dir / "recipe" / "bad.yaml"
    bad.write_text("# @package _global_\ndefaults: [yolov5s, _self_]\nrecipe: bad\nmodel: {weigths: random}\n")
    return good, bad


def test_check_recipes_names_the_misspelled_key_and_imports_no_torch(tmp_path):
    good, bad = write_recipes(tmp_path / "deploy")
    stride = tmp_path / "deploy" / "recipe" / "stride.yaml"
    stride.write_text("# @package _global_\ndefaults: [yolov5s, _self_]\nrecipe: stride\ninput: {width: 650}\n")
    probe = ("import sys; from yolobuild.cli import main; code = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NOTORCH'); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", probe, "check-recipes", str(good), str(bad), str(stride)],
                       capture_output=True, text=True, env={**os.environ, **ENV}, cwd=tmp_path)
    assert r.returncode == 2 and "NOTORCH" in r.stdout
    assert f"ok: {good}" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "weigths" in lines[0] and "did you mean 'weights'" in lines[0] and str(bad) in lines[0]
    assert "input.width" in lines[1] and "multiple" in lines[1]


def _pre_commit() -> str | None:
    return shutil.which("pre-commit") or next((p for p in ("/tmp/pc/bin/pre-commit",) if Path(p).is_file()), None)


def test_pre_commit_try_repo_fails_a_bad_recipe_and_passes_a_good_one(tmp_path):
    pre_commit = _pre_commit()
    if pre_commit is None:
        pytest.skip("pre-commit is not installed (python3 -m venv /tmp/pc && /tmp/pc/bin/pip install pre-commit)")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("the checkout is not a git work tree: pre-commit try-repo needs one")
    shim = tmp_path / "bin" / "yolobuild"   # the hook is language: system: the yolobuild of this checkout
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m yolobuild "$@"\n')
    shim.chmod(0o755)
    repo = git_repo(tmp_path / "model")
    good, bad = write_recipes(repo / "deploy")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "PRE_COMMIT_HOME": str(tmp_path / "pc")}
    for path, want in ((bad, 1), (good, 0)):
        r = subprocess.run([pre_commit, "try-repo", str(REPO), "yolobuild-validate", "--files",
                            str(path.relative_to(repo))], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == want, r.stdout + r.stderr
    assert "weigths" not in r.stdout


def test_example_model_repo_recipes_check_and_validate(tmp_path):
    example = REPO / "examples" / "model-repo"
    files = [str(p) for p in sorted((example / "deploy" / "recipe").glob("*.yaml"))] + [str(example / "yolobuild.yaml")]
    code, out, err = cli_in_process("check-recipes", *files)
    assert code == 0, err
    shipped_schema = json.loads((example / "deploy" / "recipe.schema.json").read_text())
    from yolobuild.recipe_schema import recipe_file_schema

    assert shipped_schema == recipe_file_schema()   # regenerate: yolobuild schema --output examples/model-repo/deploy/recipe.schema.json
    os.chdir(example / "deploy")
    import yolobuild

    wide = yolobuild.validate(recipe="shapes-wide", overrides=[f"workspace.path={tmp_path}"])
    assert list(wide["model"]["names"]) == ["circle", "square", "triangle"]   # inherited from the repo's shapes recipe
    assert (wide["input"]["height"], wide["input"]["width"]) == (256, 416)
    workflow = yaml.safe_load((example / ".github" / "workflows" / "yolobuild.yml").read_text())
    steps = " ".join(str(s.get("run", "")) for job in workflow["jobs"].values() for s in job["steps"])
    assert "check-recipes" in steps and "--locked" in steps and "validate" in steps


# ------------------------------------------------------------------------------ lock

def test_lock_differences_name_tool_input_and_key():
    from yolobuild.lockfile import differences

    now = {"tools": {"onnxruntime": "1.20"}, "inputs": {"model.weights": {"file": "w.pt", "sha256": "b" * 64}},
           "config": {"input.width": 320}, "ops": []}
    locked = {"tools": {"onnxruntime": "1.19"}, "inputs": {"model.weights": {"file": "w.pt", "sha256": "a" * 64}},
              "config": {"input.width": 640}, "ops": []}
    lines = differences(locked, now)
    assert lines == ["tool onnxruntime changed: 1.19 -> 1.20",
                     "input file model.weights changed: w.pt sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb",
                     "recipe key input.width changed: 640 -> 320"]
    assert differences(now, now) == []


@pytest.fixture(scope="module")
def demo_built(tmp_path_factory):
    """The demo built once through the Python API, into a module-wide cache."""
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLOBUILD_CACHE", str(root / "cache"))
        mp.chdir(root)
        import yolobuild

        result = yolobuild.build(recipe="demo")
    return root, result


def test_python_api_build_returns_the_result(demo_built):
    root, result = demo_built
    assert result.status == "compiled" and result.exit_code == 0
    on_disk = json.loads((result.build_dir / "manifest.json").read_text())
    assert on_disk["status"] == "compiled" and on_disk["build"] == result.manifest["build"]
    assert result.paths["model.onnx"].is_file() and result.paths["model.onnx"].parent == result.build_dir


def test_lock_then_build_locked_passes_and_a_changed_weights_file_exits_3(demo_built, monkeypatch, tmp_path):
    root, _ = demo_built
    monkeypatch.setenv("YOLOBUILD_CACHE", str(root / "cache"))
    shutil.copy(DEMO_PT, tmp_path / "w.pt")
    args = ("recipe=demo", "model.weights=w.pt")
    assert cli_in_process("lock", *args)[0] == 0
    lock = json.loads((tmp_path / "yolobuild.lock").read_text())
    (name,) = [n for n in lock["jobs"] if n.startswith("demo_onnxruntime_fp32_320x320")]   # + the weights' digest
    entry = lock["jobs"][name]
    from yolobuild.engine.cache import sha256_file

    assert entry["inputs"]["model.weights"]["sha256"] == sha256_file(tmp_path / "w.pt")
    code, out, err = cli_in_process("build", "--locked", *args)
    assert code == 0, err
    with open(tmp_path / "w.pt", "ab") as f:
        f.write(b"\0")
    code, out, err = cli_in_process("build", "--locked", *args)
    assert code == 3 and "model.weights changed" in err and "building" not in out
    code, out, err = cli_in_process("build", "--locked", "recipe=demo", "model.weights=w.pt", "evaluate.conf_thres=0.01")
    assert code == 3 and "recipe key evaluate.conf_thres changed" in err


def test_api_raises_typed_errors_and_import_stays_light(tmp_path):
    import yolobuild
    from yolobuild.errors import UserError

    with pytest.raises(UserError, match="did you mean 'yolov5s'"):
        yolobuild.validate(recipe="yolov5ss")
    r = subprocess.run([sys.executable, "-c", "import sys, yolobuild; print(sorted(m for m in ('torch', 'hydra', 'omegaconf') "
                        "if m in sys.modules))"], capture_output=True, text=True, env={**os.environ, **ENV})
    assert r.stdout.strip() == "[]", r.stderr


def test_version_and_inspect_builtin():
    from yolobuild import __version__

    code, out, _ = cli_in_process("--version")
    assert code == 0 and out.strip() == f"yolobuild {__version__}"
    code, out, err = cli_in_process("inspect", "model.weights=builtin:demo-yolov5n-shapes")
    assert code == 0, err
    assert "family:      yolov5" in out and '["circle", "square", "triangle"]' in out
    code, _, err = cli_in_process("inspect", "model.weights=builtin:demo")
    assert code == 2 and "builtin:demo-yolov5n-shapes" in err


def test_a_recipe_that_sets_the_workspace_keeps_it_inside_a_repo(tmp_path):
    """The marker's defaults replace the shipped defaults, not what a recipe file says."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert run_cli("init", "--name", "helmet", cwd=tmp_path, env=ENV).returncode == 0
    (tmp_path / "deploy" / "recipe" / "own.yaml").write_text(
        "# @package _global_\ndefaults: [helmet, _self_]\nrecipe: own\nworkspace: {path: elsewhere}\n")
    (tmp_path / "sub").mkdir()
    r = run_cli("plan", "recipe=own", cwd=tmp_path / "sub", env=ENV)
    assert r.returncode == 0 and "elsewhere/own_onnxruntime_fp32_640x640" in r.stdout, r.stdout + r.stderr
    r = run_cli("plan", "recipe=helmet", cwd=tmp_path / "sub", env=ENV)
    assert r.returncode == 0 and str(tmp_path / "yolobuild-out" / "helmet_onnxruntime") in r.stdout, r.stdout
