"""Memo of composed + schema-validated configs, so a rebuild need not import Hydra or jsonschema.

The key covers everything composition reads: the overrides, the config folders, and the
size and mtime of every recipe and schema file in them, plus the yolobuild version. The
checks that look at the file system (weights, calibration images, workspace) are not part
of the memo: they run again on every hit. Configs that use OmegaConf resolvers such as
`${oc.env:...}` depend on more than files, so they are never memoised.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import __version__
from .compose import search_dirs
from .validate import SCHEMAS_DIR

TOOLCHAINS_DIR = Path(__file__).parent / "toolchains"   # toolchain.yaml: option schemas and defaults
RESOLVER_MARK = "${oc."
PACKAGE = Path(__file__).parent
CODE = ("compose.py", "validate.py", "compose_memo.py", "backend_options.py", "variant.py")


def _cache_root(overrides) -> Path:
    from .storage import default_root

    for ov in overrides:
        if ov.startswith("cache.dir="):
            return default_root(ov.split("=", 1)[1] or None)
    return default_root(None)


def memo_key(overrides, config_dirs) -> str | None:
    h = hashlib.sha256(json.dumps([__version__, list(overrides), [str(d) for d in config_dirs]]).encode())
    user_dirs = search_dirs(config_dirs)[:-1]
    for root in [SCHEMAS_DIR, *search_dirs(config_dirs), TOOLCHAINS_DIR]:
        if not root.is_dir():
            return None
        for p in sorted(root.rglob("*")):
            if p.suffix not in (".yaml", ".yml", ".json"):
                continue
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if root in user_dirs and RESOLVER_MARK in p.read_text(errors="replace"):  # shipped files use none
                return None
    for code in CODE:  # the composition and its rules are part of what is memoised
        st = (PACKAGE / code).stat()
        h.update(f"{code}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if any(RESOLVER_MARK in ov for ov in overrides):
        return None
    return h.hexdigest()


def _path(overrides, key: str) -> Path:
    return _cache_root(overrides) / "compose" / f"{key}.json"


def load(overrides, config_dirs) -> tuple[str | None, dict[str, Any] | None]:
    key = memo_key(overrides, config_dirs)
    if key is None:
        return None, None
    try:
        return key, json.loads(_path(overrides, key).read_text())
    except (OSError, ValueError):
        return key, None


def store(overrides, key: str | None, config: dict[str, Any]) -> None:
    from .redaction import credentials

    if key is None or credentials(config.get("cache")):
        return   # a config holding cache.remote credentials is never written down
    from .storage import write_atomic

    try:
        write_atomic(_path(overrides, key), json.dumps(config))
    except OSError:
        pass  # a read-only cache only costs speed

