"""Untrusted input never runs code: a checkpoint naming a function through a fork (model.source.repo),
for both `build` and `inspect`; and a fork's own layer classes still load."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from .conftest import build_dir, run_cli


def _fork(root: Path, common_py: str) -> Path:
    repo = root / "fork"
    (repo / "models").mkdir(parents=True)
    (repo / "models" / "__init__.py").write_text("")
    (repo / "models" / "common.py").write_text(common_py)
    return repo


def _save_calling(path: Path, module: str, func_name: str, args: tuple) -> None:
    """A checkpoint whose pickle calls `module.func_name(*args)` when loaded (pickle's REDUCE)."""
    fake = types.ModuleType(module)

    def stand_in(*a, **k):
        raise AssertionError("never called while saving")

    stand_in.__module__, stand_in.__qualname__, stand_in.__name__ = module, func_name, func_name
    setattr(fake, func_name, stand_in)

    class Payload:
        def __reduce__(self):
            return stand_in, args

    parents = [module.rsplit(".", i)[0] for i in range(module.count("."), 0, -1)]
    saved = {k: sys.modules.get(k) for k in (*parents, module)}
    for name in parents:
        sys.modules[name] = types.ModuleType(name)
    sys.modules[module] = fake
    try:
        torch.save({"epoch": 3, "model": Payload()}, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture
def reexport_attack(tmp_path):
    marker = tmp_path / "PWNED"
    repo = _fork(tmp_path, "from subprocess import check_output  # re-exported, as forks often do\n")
    weights = tmp_path / "best.pt"
    _save_calling(weights, "models.common", "check_output", (["touch", str(marker)],))
    return repo, weights, marker


def test_source_repo_refuses_a_reexported_function_in_build(reexport_attack, tmp_path):
    repo, weights, marker = reexport_attack
    r = run_cli("recipe=yolov5n", f"model.weights={weights}", f"model.source.repo={repo}",
                f"workspace.path={tmp_path / 'ws'}", "evaluate.enabled=false", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not marker.exists()
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "models.common.check_output" in errors[0] and "Traceback" not in r.stderr


def test_source_repo_refuses_a_reexported_function_in_inspect(reexport_attack, tmp_path):
    repo, weights, marker = reexport_attack
    r = run_cli("inspect", f"model.weights={weights}", f"model.source.repo={repo}", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not marker.exists()
    assert "models.common.check_output" in r.stderr and "Traceback" not in r.stderr


def test_source_repo_refuses_a_stdlib_module_named_directly(tmp_path):
    marker = tmp_path / "PWNED"
    repo = _fork(tmp_path, "")
    weights = tmp_path / "best.pt"
    _save_calling(weights, "subprocess", "check_output", (["touch", str(marker)],))
    r = run_cli("inspect", f"model.weights={weights}", f"model.source.repo={repo}", cwd=tmp_path)
    assert r.returncode == 2 and not marker.exists()
    assert "subprocess.check_output" in r.stderr


def test_source_repo_refuses_a_function_the_fork_defines(tmp_path):
    marker = tmp_path / "PWNED"
    repo = _fork(tmp_path, "import os\n\ndef check_output(cmd):\n    os.system(' '.join(cmd))\n")
    weights = tmp_path / "best.pt"
    _save_calling(weights, "models.common", "check_output", (["touch", str(marker)],))
    r = run_cli("inspect", f"model.weights={weights}", f"model.source.repo={repo}", cwd=tmp_path)
    assert r.returncode == 2 and not marker.exists()


def test_unpickler_allows_a_fork_layer_class_and_refuses_its_functions(tmp_path, monkeypatch):
    from yolobuild.models.safe_pickle import RefusedGlobal, make_pickle_module

    repo = tmp_path / "fork2"
    (repo / "forkpkg").mkdir(parents=True)
    (repo / "forkpkg" / "__init__.py").write_text("")
    (repo / "forkpkg" / "layers.py").write_text(
        "import torch\nfrom os import system\n\nclass MyConv(torch.nn.Module):\n    pass\n\n"
        "class Names(dict):\n    pass\n\ndef helper():\n    return 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    mod = make_pickle_module(source_repo=repo)
    unpickler = mod.Unpickler(__import__("io").BytesIO(b""))
    try:
        cls = unpickler.find_class("forkpkg.layers", "MyConv")
        assert issubclass(cls, torch.nn.Module) and cls.__module__ == "forkpkg.layers"
        assert issubclass(unpickler.find_class("forkpkg.layers", "Names"), dict)
        for name in ("helper", "system", "torch"):
            with pytest.raises(RefusedGlobal):
                unpickler.find_class("forkpkg.layers", name)
    finally:
        for key in [k for k in sys.modules if k == "forkpkg" or k.startswith("forkpkg.")]:
            del sys.modules[key]


def test_getattr_on_a_layer_class_gives_no_callable():
    from yolobuild.models.safe_pickle import RefusedGlobal, make_pickle_module

    mod = make_pickle_module()
    getattr_ = mod.Unpickler(__import__("io").BytesIO(b"")).find_class("builtins", "getattr")
    with pytest.raises(RefusedGlobal):
        getattr_(torch.nn.Conv2d, "register_forward_hook")


# --------------------------------------------------------------------------- a cache that checks what it serves

def _demo(tmp_path, *extra):
    from .conftest import cli_in_process

    return cli_in_process(f"workspace.path={tmp_path / 'ws'}", *extra)


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _manifest(tmp_path) -> dict:
    import json

    return json.loads((build_dir(tmp_path / "ws", "demo_onnxruntime_fp32_320x320") / "manifest.json").read_text())


def _object(cache: Path, sha: str) -> Path:
    return cache / "objects" / sha[:2] / sha


def _op(m: dict, op_id: str) -> dict:
    return next(o for o in m["ops"] if o["id"] == op_id)


def test_a_flipped_byte_in_a_cached_onnx_reruns_its_op_and_ships_the_right_bytes(tmp_path, isolated_cache):
    from yolobuild.engine.cache import sha256_file

    code, out, err = _demo(tmp_path)
    assert code == 0, out + err
    first = _manifest(tmp_path)
    sha = _op(first, "simplify")["outputs"]["model.onnx"]["sha256"]
    shipped = build_dir(tmp_path / "ws", "demo_onnxruntime_fp32_320x320") / "model.onnx"
    shipped.unlink()                                   # so the next build copies it from the cache again
    _flip_one_byte(_object(isolated_cache, sha))

    code, out, err = _demo(tmp_path)
    assert code == 0, out + err
    second = _manifest(tmp_path)
    assert _op(second, "simplify")["status"] == "ran"  # the op that made it ran again
    assert sha256_file(shipped) == sha == _op(second, "simplify")["outputs"]["model.onnx"]["sha256"]
    assert sha256_file(_object(isolated_cache, sha)) == sha
    assert any(e["object"] == sha for e in second["cache_events"])
    assert list((isolated_cache / "quarantine").glob(f"{sha}-*"))
    assert "failed its sha256 check" in out


def test_a_corrupt_intermediate_is_never_consumed(tmp_path, isolated_cache):
    code, out, err = _demo(tmp_path)
    assert code == 0, out + err
    first = _manifest(tmp_path)
    sha = _op(first, "export_onnx")["outputs"]["model.onnx"]["sha256"]
    _flip_one_byte(_object(isolated_cache, sha))
    for op_id in ("simplify", "check_simplify"):       # its consumers must run again and read it
        fp = _op(first, op_id)["fingerprint"]
        (isolated_cache / "entries" / fp[:2] / f"{fp}.json").unlink()
    code, out, err = _demo(tmp_path)
    assert code == 0, out + err
    second = _manifest(tmp_path)
    assert _op(second, "export_onnx")["status"] == "ran"
    assert _op(second, "export_onnx")["outputs"]["model.onnx"]["sha256"] == sha
    assert _op(second, "simplify")["outputs"] == _op(first, "simplify")["outputs"]


# --------------------------------------------------------------------------- no environment value in any file

def _recipe_reading_env(tmp_path: Path) -> Path:
    user = tmp_path / "conf"
    (user / "recipe").mkdir(parents=True)
    (user / "recipe" / "envdemo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo\n  - _self_\nrecipe: envdemo\n"
        "model:\n  weights: ${oc.env:DEMO_WEIGHTS_SECRET}\n")
    return user


def test_a_recipe_reading_the_environment_needs_allow_env(tmp_path, monkeypatch):
    from yolobuild.validate import ASSETS_DIR
    from .conftest import cli_in_process

    user = _recipe_reading_env(tmp_path)
    secret_dir = tmp_path / "s3cr3t-t0ken-value"
    secret_dir.mkdir()
    weights = secret_dir / "demo.pt"
    weights.write_bytes((ASSETS_DIR / "demo-yolov5n-shapes.pt").read_bytes())
    monkeypatch.setenv("DEMO_WEIGHTS_SECRET", str(weights))
    args = ("--config-dir", str(user), "recipe=envdemo", f"workspace.path={tmp_path / 'ws'}")
    code, out, err = cli_in_process("validate", *args)
    lines = [line for line in err.splitlines() if line]
    assert code == 2 and len(lines) == 1, out + err
    assert "model.weights" in lines[0] and "DEMO_WEIGHTS_SECRET" in lines[0] and "--allow-env" in lines[0]
    assert "envdemo.yaml" in lines[0]

    monkeypatch.setenv("YOLOBUILD_ALLOW_ENV", "DEMO_WEIGHTS_SECRET")   # the allow-list also lets it through
    assert cli_in_process("validate", *args)[0] == 0
    monkeypatch.delenv("YOLOBUILD_ALLOW_ENV")

    code, out, err = cli_in_process("--allow-env", *args)
    assert code == 0, out + err
    leaked = [p for root in (tmp_path / "ws", tmp_path / "cache") for p in root.rglob("*")
              if p.is_file() and b"s3cr3t-t0ken-value" in p.read_bytes()]
    assert not leaked, leaked
    manifest = (build_dir(tmp_path / "ws", "envdemo_onnxruntime_fp32_320x320") / "manifest.json").read_text()
    assert "${oc.env:DEMO_WEIGHTS_SECRET}" in manifest


def test_written_files_are_readable_by_the_group(tmp_path):
    import stat
    from .conftest import cli_in_process

    code, out, err = cli_in_process("validate", f"workspace.path={tmp_path / 'ws'}")
    code, out, err = cli_in_process("plan", f"workspace.path={tmp_path / 'ws'}")
    assert code == 0, out + err
    mode = stat.S_IMODE((build_dir(tmp_path / "ws", "demo_onnxruntime_fp32_320x320") / "plan.json").stat().st_mode)
    assert mode & 0o044 == 0o044, oct(mode)


# --------------------------------------------------------------------------- malformed YAML, a full disk

@pytest.mark.parametrize("name, text, expect", [
    ("syntax", "# @package _global_\nrecipe: syntax\nmodel: {family: yolov5\n", "syntax.yaml:4:1: invalid YAML"),
    ("tab", "# @package _global_\nrecipe: tab\nmodel:\n\tfamily: yolov5\n", "tabs"),
    ("alist", "- recipe: alist\n- model: {}\n", "must hold a mapping"),
    ("binary", None, "not a text file"),
])
def test_malformed_yaml_in_a_config_folder_is_one_line(tmp_path, name, text, expect):
    user = tmp_path / "conf" / "recipe"
    user.mkdir(parents=True)
    path = user / f"{name}.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage" if text is None else text.encode())
    r = run_cli("validate", "--config-dir", str(tmp_path / "conf"), f"recipe={name}", cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert expect in lines[0] and "Traceback" not in r.stderr


def _small_disk(path: Path, size: str) -> Path | None:
    """A tmpfs of `size` at path, or None where this machine does not let the tests mount one."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return path if r.returncode == 0 else None


@pytest.mark.parametrize("where", ["workspace", "cache"])
def test_a_full_disk_is_one_line_exit_4_and_leaves_no_partial_file(tmp_path, where):
    import subprocess

    disk = _small_disk(tmp_path / "small", "3m")
    if disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        ws = disk / "ws" if where == "workspace" else tmp_path / "ws"
        cache = disk / "cache" if where == "cache" else tmp_path / "cache"
        r = run_cli(f"workspace.path={ws}", f"cache.dir={cache}", cwd=tmp_path)
        lines = [line for line in r.stderr.splitlines() if line]
        assert r.returncode == 4 and len(lines) == 1, r.stdout + r.stderr
        assert "no space left" in lines[0] and "Traceback" not in r.stderr
        leftovers = [p for p in ws.rglob("*")] if ws.exists() else []
        assert not [p for p in leftovers if p.name.endswith(".tmp") or ".building-" in p.name], leftovers
        assert not list((cache / "tmp").glob("*")) if (cache / "tmp").exists() else True
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --------------------------------------------------------------------------- a corpus of malicious pickles

class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):   # so a pickled call's result can itself be called (a two-step gadget)
        raise AssertionError("never called while saving")


def _corpus(marker: Path) -> dict[str, object]:
    import builtins
    import functools
    import operator
    import os as os_module
    import subprocess as sp

    touch = f"touch {marker}"
    return {
        "os.system": _Reduce(os_module.system, (touch,)),
        "builtins.eval": _Reduce(builtins.eval, (f"__import__('os').system({touch!r})",)),
        "builtins.exec": _Reduce(builtins.exec, (f"import os; os.system({touch!r})",)),
        "subprocess.Popen": _Reduce(sp.Popen, (["touch", str(marker)],)),
        "builtins.__import__": _Reduce(builtins.__import__, ("os",)),
        "functools.partial": _Reduce(functools.partial, (os_module.system, touch)),
        "operator.attrgetter": _Reduce(operator.attrgetter, ("system",)),
        "getattr gadget": _Reduce(_Reduce(getattr, (_Reduce(builtins.__import__, ("os",)), "system")), (touch,)),
    }


@pytest.mark.parametrize("name", list(_corpus(Path("/nonexistent"))))
def test_malicious_pickle_corpus_is_refused(tmp_path, name):
    import pickle

    from yolobuild.models.safe_pickle import make_pickle_module

    marker = tmp_path / "PWNED"
    payload = _corpus(marker)[name]
    for protocol in (2, 4):
        data = pickle.dumps({"model": payload, "epoch": 1}, protocol=protocol)
        for module in (make_pickle_module(), make_pickle_module(source_repo=_fork(tmp_path / f"p{protocol}", ""))):
            with pytest.raises(pickle.UnpicklingError):
                module.loads(data)
    torch.save({"model": payload, "epoch": 1}, tmp_path / "evil.pt")
    r = run_cli("inspect", f"model.weights={tmp_path / 'evil.pt'}", cwd=tmp_path)
    assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists()
