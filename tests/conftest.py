"""Shared fixtures: every test gets its own cache and workspace; nothing touches ~/.cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Toolchain environments (rknn-toolkit2, ...) are large and slow to create: tests share the
# user's default location so a machine installs each once, whatever cache a test uses.
os.environ.setdefault("YOLOBUILD_TOOLCHAINS", str(Path.home() / ".cache" / "yolobuild" / "toolchains"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("YOLOBUILD_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def build_dir(ws: Path, name: str) -> Path:
    """ws/name, or the one ws/name-<digest>: a build with overrides its readable name does not show
    (model.weights=random, evaluate.enabled=false, ...) carries their digest in its folder's name."""
    plain = ws / name
    if plain.exists():
        return plain
    found = sorted(ws.glob(f"{name}-" + "[0-9a-f]" * 8))
    return found[0] if len(found) == 1 else plain


def built_folder(ws: Path, stdout: str) -> Path:
    """The folder a build wrote, from its `building NAME` line."""
    return ws / next(line.split()[1] for line in stdout.splitlines() if line.startswith("building "))


def cli_in_process(*args: str) -> tuple[int, str, str]:
    """yolobuild in this process (saves a torch import per build); returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from yolobuild.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m yolobuild ARGS` as a user would, capturing both streams."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "yolobuild", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's numeric tests: results that do not depend on the core count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
