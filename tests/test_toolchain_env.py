"""The shared toolchain-environment mechanism: install, repair, refuse, and the worker protocol.

Uses a tiny environment spec (a bare venv, no pip installs) so the mechanism is tested in
seconds; the real rknn-toolkit2 environment is exercised by tests/test_rknn.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from yolobuild.errors import ToolchainError
from yolobuild.ops import OpContext
from yolobuild.toolchains import envs

REPO = Path(__file__).resolve().parents[1]
# the worker sees only the yolobuild package; the test functions it runs live in tests/, named here
FAKE = envs.EnvSpec(name="fake-env", aliases=("fake",), python="host", steps=(), record=("pip",),
                    check="import json", extra_env={"PYTHONPATH": str(REPO)})


WORKER = "tests.fake_worker_functions"
DECLARED = envs.environments


def declare(mp, spec) -> None:
    """Make `spec` one of the declared environments (as a toolchain.yaml `environment` would)."""
    mp.setattr(envs, "environments", lambda: {**DECLARED(), spec.name: spec})


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOBUILD_TOOLCHAINS", str(tmp_path / "toolchains"))
    declare(monkeypatch, FAKE)
    return FAKE


@pytest.fixture(scope="module")
def installed_fake(tmp_path_factory):
    """One installed fake environment shared by the worker-protocol tests."""
    root = tmp_path_factory.mktemp("toolchains")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLOBUILD_TOOLCHAINS", str(root))
        declare(mp, FAKE)
        envs.install(FAKE, progress=lambda m: None)
        yield FAKE


def ctx_for(tmp_path) -> OpContext:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return OpContext(op_id="compile", kind="compile", params={}, inputs={}, outputs={}, scratch=scratch,
                     log_file=tmp_path / "logs" / "compile.log")


def test_missing_environment_names_the_fix(fake_env):
    with pytest.raises(ToolchainError, match=r"not installed .*run `yolobuild toolchain install fake`"):
        envs.ensure(fake_env, auto_install=False)


def test_partial_environment_is_reported_incomplete_and_repaired(fake_env):
    envs.env_dir(fake_env).mkdir(parents=True)  # a crash left the folder without its marker
    with pytest.raises(ToolchainError, match="is incomplete"):
        envs.ensure(fake_env, auto_install=False)
    marker = envs.ensure(fake_env, progress=lambda m: None, auto_install=True)
    assert Path(marker["python"]).exists() and marker["versions"]["pip"]


def test_interrupted_install_is_started_over(fake_env, monkeypatch):
    def interrupted_fixup(target, log):
        raise KeyboardInterrupt

    declare(monkeypatch, envs.EnvSpec(**{**FAKE.__dict__, "fixup": f"{__name__}:boom"}))
    globals()["boom"] = interrupted_fixup
    spec = envs.find_spec(FAKE.name)
    with pytest.raises(KeyboardInterrupt):
        envs.install(spec, progress=lambda m: None)
    assert envs.read_marker(spec) is None  # no marker: never mistaken for a working environment
    declare(monkeypatch, FAKE)
    assert envs.install(FAKE, progress=lambda m: None)["name"] == "fake-env"


def test_worker_round_trip_and_log(installed_fake, tmp_path):
    ctx = ctx_for(tmp_path)
    out = tmp_path / "out.txt"
    result = envs.call_in_env(ctx, "fake-env", f"{WORKER}:echo", {"text": "rknn", "out": str(out)})
    assert result["seen"] == "rknn" and out.read_text() == "RKNN"
    assert ctx.log_file.exists()


def test_compiler_error_gives_its_last_line_without_colours_and_the_log(installed_fake, tmp_path):
    ctx = ctx_for(tmp_path)
    with pytest.raises(ToolchainError) as info:
        envs.call_in_env(ctx, "fake-env", f"{WORKER}:compiler_error", {})
    msg = str(info.value)
    assert "E build: Unsupported op 'Foo' at node 17" in msg
    assert "\x1b[" not in msg and f"full log: {ctx.log_file}" in msg
    assert "\x1b[" not in ctx.log_file.read_text()


def test_worker_crash_is_a_toolchain_error(installed_fake, tmp_path):
    with pytest.raises(ToolchainError, match="worker exited with code 3"):
        envs.call_in_env(ctx_for(tmp_path), "fake-env", f"{WORKER}:hard_exit", {})


def test_worker_import_path_holds_only_the_yolobuild_package(tmp_path):
    """An installed yolobuild lives in the host's site-packages; that folder must not reach a vendor env."""
    from yolobuild.toolchains.worker import _package_only_path

    root = _package_only_path(tmp_path)
    assert [p.name for p in root.iterdir()] == ["yolobuild"]
    assert (root / "yolobuild").resolve() == Path(envs.__file__).resolve().parents[1]
    assert _package_only_path(tmp_path) == root  # idempotent: a second op call reuses the link


def test_child_environment_does_not_inherit_the_host_environment(fake_env, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    assert "SECRET_TOKEN" not in envs._clean_env()


def test_cli_toolchain_list_and_unknown_name(fake_env):
    from .conftest import run_cli

    r = run_cli("toolchain", "list", env={"YOLOBUILD_TOOLCHAINS": os.environ["YOLOBUILD_TOOLCHAINS"]})
    assert r.returncode == 0 and "rknn-toolkit2" in r.stdout
    r = run_cli("toolchain", "install", "nope")
    assert r.returncode == 2 and "known: rknn" in r.stderr
