"""The Python API for scripts and notebooks: `yolobuild.build(...)` and `yolobuild.validate(...)`.

The same composition, repo discovery, cache and build folder as the command line; where the CLI prints
one line and exits, these raise the typed exceptions of yolobuild.errors (UserError: fix the recipe or
the call; BuildFailed: a toolchain or a check failed, with the result attached; LockMismatch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import EXIT_INTERRUPTED, EXIT_OK, BuildFailed, UserError


@dataclass(frozen=True)
class Result:
    """What one build left: `status` is compiled, handoff or failed (as manifest.json says)."""

    status: str
    manifest: dict[str, Any]
    build_dir: Path
    paths: dict[str, Path]      # each artifact copied into the build folder, by output name
    exit_code: int = EXIT_OK


def _overrides(recipe, target, precision, dataset, overrides: Iterable[str]) -> list[str]:
    if isinstance(overrides, str):
        raise UserError("overrides: pass a list of KEY=VALUE strings, not one string")
    chosen = [f"{group}={value}" for group, value in
              (("recipe", recipe), ("target", target), ("precision", precision), ("dataset", dataset)) if value]
    return chosen + list(overrides)


def _job(recipe, target, precision, dataset, overrides, config_dir, allow_env, cwd):
    from . import repo
    from .cli import _prepare

    dirs = [str(d) for d in ([config_dir] if isinstance(config_dir, (str, Path)) else (config_dir or []))]
    found = repo.discover(Path(cwd) if cwd else None)
    dirs, all_overrides = repo.apply(found, dirs, _overrides(recipe, target, precision, dataset, overrides))
    config, plan = _prepare(all_overrides, dirs, allow_env)
    return found, config, plan


def validate(recipe: str | None = None, target: str | None = None, precision: str | None = None,
             dataset: str | None = None, overrides: Iterable[str] = (), config_dir=None,
             allow_env: bool = False, cwd=None) -> Mapping[str, Any]:
    """The composed, validated (read-only) config; raises UserError listing every problem."""
    return _job(recipe, target, precision, dataset, overrides, config_dir, allow_env, cwd)[1]


def build(recipe: str | None = None, target: str | None = None, precision: str | None = None,
          dataset: str | None = None, overrides: Iterable[str] = (), config_dir=None, locked: bool = False,
          allow_env: bool = False, cwd=None, on_op: Callable | None = None) -> Result:
    """Build one job; cached ops are reused. Raises BuildFailed (with .result) when the build failed."""
    from . import lockfile
    from .compose import MISSING
    from .accuracy.search import run as run_build   # one build, or the accuracy.* search's builds
    from .validate import WEIGHTS_UNSET

    found, config, plan = _job(recipe, target, precision, dataset, overrides, config_dir, allow_env, cwd)
    if config["model"]["weights"] == MISSING:
        raise UserError(WEIGHTS_UNSET)
    if locked:
        lockfile.check(config, plan, lockfile.lock_path(found.root if found else None))
    outcome = run_build(config, plan, on_op, say=lambda line: None)
    if outcome.exit_code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(outcome.message)
    manifest, build_dir = outcome.manifest, outcome.build_dir.absolute()   # the caller may change folder
    paths = {name: build_dir / out["path"] for op in manifest.get("ops", [])
             for name, out in op.get("outputs", {}).items() if out.get("in") == "build"}
    result = Result(manifest.get("status", "failed"), manifest, build_dir, paths, outcome.exit_code)
    if outcome.exit_code != EXIT_OK:
        raise BuildFailed(outcome.message, result, outcome.exit_code)
    return result
