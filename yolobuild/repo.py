"""Find the model repo a command runs in: the `yolobuild.yaml` (or `[tool.yolobuild]` in pyproject.toml)
at its root names the config folder and the defaults every command there shares.

Found by walking up from the current folder, as git and ruff find theirs, so a recipe checked into the
repo works from any folder inside it without --config-dir. A few stat calls per level and no imports
beyond the standard library (a YAML parse only once a marker is found): validate must stay fast.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, nearest

MARKER = "yolobuild.yaml"
PYPROJECT = "pyproject.toml"
DEFAULT_CONFIG_DIR = "deploy"
KEYS = {"config_dir": "the folder of recipe/, target/, precision/, dataset/ (relative to this file)",
        "workspace": "where builds go (workspace.path), relative to this file",
        "cache": "the op cache (cache.dir); null: ~/.cache/yolobuild or YOLOBUILD_CACHE"}


@dataclass(frozen=True)
class Repo:
    root: Path
    marker: Path            # the file that said so (yolobuild.yaml or pyproject.toml)
    config_dir: Path
    workspace: Path
    cache: Path | None


def find_marker(start: Path | None = None) -> Path | None:
    """The nearest yolobuild.yaml, or pyproject.toml with a [tool.yolobuild] table, at or above start."""
    here = Path(start or os.getcwd()).absolute()
    for folder in (here, *here.parents):
        marker = folder / MARKER
        if marker.is_file():
            return marker
        pyproject = folder / PYPROJECT
        if pyproject.is_file() and _has_tool_table(pyproject):
            return pyproject
    return None


def _has_tool_table(pyproject: Path) -> bool:
    try:
        return "[tool.yolobuild]" in pyproject.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _read_settings(marker: Path) -> dict:
    if marker.name == PYPROJECT:
        import tomllib

        try:
            data = tomllib.loads(marker.read_text(encoding="utf-8")).get("tool", {}).get("yolobuild", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"{marker}: cannot read [tool.yolobuild] ({exc})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(marker.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{marker}: invalid YAML ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{marker}: must hold a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise UserError(f"{marker}: unknown key {unknown[0]!r}{nearest(unknown[0], KEYS)}; allowed: {', '.join(KEYS)}")
    for key, value in data.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"{marker}: {key}: {value!r} has the wrong type; expected a path (string) or null")
    return data


def load(marker: Path) -> Repo:
    settings = _read_settings(marker)
    root = marker.parent.absolute()
    config_dir = root / (settings.get("config_dir") or DEFAULT_CONFIG_DIR)
    cache = settings.get("cache")
    return Repo(root=root, marker=marker, config_dir=config_dir,
                workspace=root / (settings.get("workspace") or "yolobuild-out"),
                cache=(root / Path(cache).expanduser()) if cache else None)


def discover(start: Path | None = None) -> Repo | None:
    marker = find_marker(start)
    return load(marker) if marker else None


def _sets(overrides, key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def apply(repo: Repo | None, config_dirs: list[str], overrides: list[str]) -> tuple[list[str], list[str]]:
    """(config folders, overrides) with the repo's folder and defaults; --config-dir and the command line win.

    The repo's defaults go first in the override list (as `repo-default:` entries, which compose applies
    where the recipe left the shipped default), and a key typed on the command line replaces them."""
    if repo is None:
        return list(config_dirs), list(overrides)
    dirs = list(config_dirs)
    if not dirs and repo.config_dir.is_dir():
        dirs = [str(repo.config_dir)]
    from .compose import REPO_DEFAULT

    defaults = []   # they replace the shipped defaults only: a recipe file that sets them keeps its value
    if not _sets(overrides, "workspace.path"):
        defaults.append(f"{REPO_DEFAULT}workspace.path={_quoted(repo.workspace)}")
    if repo.cache is not None and not _sets(overrides, "cache.dir"):
        defaults.append(f"{REPO_DEFAULT}cache.dir={_quoted(repo.cache)}")
    return dirs, defaults + list(overrides)


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar reads)."""
    text = str(path)
    if any(ch in text for ch in " ,=()[]{}'\"\\$:*?"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def repo_root_or_cwd(start: Path | None = None) -> Path:
    """Where a new marker goes: the git work tree's top (walking up for .git), else the current folder."""
    here = Path(start or os.getcwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here
