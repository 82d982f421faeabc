"""Isolated toolchain environments: one venv per toolchain, owned by yolobuild.

Vendor toolchains pin numpy, protobuf, onnx and even Python versions that clash with the host
stack, so each lives in its own venv under `<cache>/toolchains/` (or `YOLOBUILD_TOOLCHAINS`),
created from the pinned requirements its toolchain package ships (declared in its toolchain.yaml),
never in the host environment. The host drives it through `worker.py` (JSON request in, JSON result
and files out).

An environment is complete only when its marker file exists; the marker is written last, so
an interrupted install is seen as incomplete and the next install starts it over.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ToolchainError

MARKER = "yolobuild-env.json"


@dataclass(frozen=True)
class EnvSpec:
    """What makes one toolchain's environment: its facts, nothing else."""

    name: str                            # environment name, also its folder prefix
    aliases: tuple[str, ...]             # names accepted by `yolobuild toolchain install`
    python: str                          # "host" (this interpreter's version) or "3.10"
    steps: tuple[tuple[str, tuple[str, ...]], ...]  # (requirements file in `folder`, extra pip args), in order
    record: tuple[str, ...]              # distributions whose versions key the toolchain's ops
    fixup: str | None = None             # "module:function(env_dir)" run after pip, before the marker
    check: str = ""                      # python code that must run in the env for it to count as working
    extra_env: dict[str, str] = field(default_factory=dict)
    folder: Path = Path(".")             # the toolchain package's folder: requirements paths start here


def environments() -> dict[str, EnvSpec]:
    """Every isolated environment the toolchain declarations name (toolchain.yaml `environment`)."""
    from .registry import environments as declared

    return declared()


def find_spec(name: str) -> EnvSpec:
    specs = environments()
    for spec in specs.values():
        if name == spec.name or name in spec.aliases:
            return spec
    known = ", ".join(a for s in specs.values() for a in s.aliases)
    raise ToolchainError(f"toolchain {name!r} has no installable environment; known: {known}")


def toolchains_root() -> Path:
    env = os.environ.get("YOLOBUILD_TOOLCHAINS")
    if env:
        return Path(env).expanduser()
    from ..storage import default_root

    return default_root(None) / "toolchains"


def spec_digest(spec: EnvSpec) -> str:
    h = hashlib.sha256(json.dumps([spec.python, spec.steps, spec.fixup]).encode())
    for req, _ in spec.steps:
        h.update((spec.folder / req).read_bytes())
    return h.hexdigest()[:12]


def env_dir(spec: EnvSpec) -> Path:
    return toolchains_root() / f"{spec.name}-{spec_digest(spec)}"


def env_python(path: Path) -> Path:
    return path / "bin" / "python"


def read_marker(spec: EnvSpec) -> dict | None:
    """The installed environment's record, or None when absent or incomplete. Starts no process."""
    try:
        marker = json.loads((env_dir(spec) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if env_python(env_dir(spec)).exists() else None


def install_hint(spec: EnvSpec) -> str:
    return f"yolobuild toolchain install {spec.aliases[0]}"


def locate_python310() -> Path:
    """Python 3.10 for toolchains that need it: YOLOBUILD_PYTHON310, PATH, then pyenv."""
    candidates = []
    if os.environ.get("YOLOBUILD_PYTHON310"):
        candidates.append(Path(os.environ["YOLOBUILD_PYTHON310"]))
    found = shutil.which("python3.10")
    if found:
        candidates.append(Path(found))
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(pyenv_root.glob("versions/3.10*/bin/python3.10"), reverse=True)
    for c in candidates:
        try:
            out = subprocess.run([str(c), "-c", "import sys, venv; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 10)":
            return c
    raise ToolchainError("Python 3.10 not found (needed by this toolchain): install it (e.g. `pyenv install 3.10`) "
                         "or point YOLOBUILD_PYTHON310 at a python3.10 binary")


def _base_python(spec: EnvSpec) -> Path:
    return Path(sys.executable) if spec.python == "host" else locate_python310()


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child environment that inherits only what a process needs, not the host's whole environment."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "PATH", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
            "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_NO_INDEX", "PIP_TRUSTED_HOST", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(extra or {})
    return env


def _run(cmd: list[str], log: Path, progress: Callable[[str], None], what: str, timeout: float) -> None:
    progress(what)
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=_clean_env())
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"{what}: timed out after {timeout:.0f} s; log: {log}") from None
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise ToolchainError(f"{what} failed (exit {proc.returncode}): {tail[-400:]}; full log: {log}")


def install(spec: EnvSpec, progress: Callable[[str], None] = print, force: bool = False) -> dict:
    """Create (or repair) the environment. Safe to run twice at once: a lock serialises it."""
    from filelock import FileLock

    target = env_dir(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and read_marker(spec):
            return read_marker(spec)
        if target.exists():  # incomplete or forced: start over
            shutil.rmtree(target)
        log = target.parent / f"{target.name}.install.log"
        log.write_text(f"installing {spec.name} into {target}\n")
        start = time.time()
        base = _base_python(spec)
        _run([str(base), "-m", "venv", str(target)], log, progress, f"{spec.name}: creating venv ({base})", 300)
        py = str(env_python(target))
        if spec.steps:
            _run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log, progress,
                 f"{spec.name}: upgrading pip", 600)
        for i, (req, args) in enumerate(spec.steps, 1):
            _run([py, "-m", "pip", "install", "--quiet", *args, "-r", str(spec.folder / req)], log, progress,
                 f"{spec.name}: pip install step {i}/{len(spec.steps)} ({req})", 1800)
        if spec.fixup:
            from importlib import import_module

            module, func = spec.fixup.split(":")
            progress(f"{spec.name}: applying environment fix-ups")
            getattr(import_module(module), func)(target, log)
        if spec.check:
            _run([py, "-c", spec.check], log, progress, f"{spec.name}: checking the environment", 600)
        versions = _versions_in(py, spec.record, log)
        marker = {"name": spec.name, "python": py, "versions": versions, "digest": spec_digest(spec),
                  "installed_seconds": round(time.time() - start, 1)}
        from ..storage import write_atomic

        write_atomic(target / MARKER, json.dumps(marker, indent=1))
        progress(f"{spec.name}: ready in {marker['installed_seconds']} s ({target})")
        return marker


def _versions_in(py: str, dists: tuple[str, ...], log: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m\n"
            f"out = {{}}\nfor d in {list(dists)!r}:\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = 'not installed'\n"
            "print(json.dumps(out))")
    proc = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120, env=_clean_env())
    if proc.returncode != 0:
        raise ToolchainError(f"cannot read versions in {py}: {proc.stderr.strip()[-300:]}; log: {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure(spec: EnvSpec, progress: Callable[[str], None] = print, auto_install: bool | None = None) -> dict:
    """The environment's marker, installing on first use unless YOLOBUILD_NO_INSTALL=1."""
    marker = read_marker(spec)
    if marker:
        return marker
    if auto_install is None:
        auto_install = os.environ.get("YOLOBUILD_NO_INSTALL", "") not in ("1", "true", "yes")
    if not auto_install:
        state = "incomplete" if env_dir(spec).exists() else "not installed"
        raise ToolchainError(f"the {spec.name} environment is {state} ({env_dir(spec)}); run `{install_hint(spec)}`")
    return install(spec, progress)


def listing() -> list[dict]:
    rows = []
    for spec in environments().values():
        marker = read_marker(spec)
        rows.append({"toolchain": spec.name, "install name": spec.aliases[0],
                     "state": "installed" if marker else ("incomplete" if env_dir(spec).exists() else "not installed"),
                     "versions": ", ".join(f"{k} {v}" for k, v in (marker or {}).get("versions", {}).items()),
                     "path": str(env_dir(spec))})
    return rows


def call_in_env(ctx, env_name: str, function: str, request: dict, timeout: float = 3600) -> dict:
    """Run a worker function for an op inside its toolchain environment; its log goes to ctx.log_file."""
    from .worker import call

    spec = find_spec(env_name)
    marker = ensure(spec, progress=ctx.log)
    ctx.log_file.parent.mkdir(parents=True, exist_ok=True)
    return call(Path(marker["python"]), function, request, ctx.scratch / "worker", ctx.log_file, timeout,
                _clean_env(spec.extra_env), progress=ctx.progress)
