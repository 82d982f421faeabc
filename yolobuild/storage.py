"""Where yolobuild keeps its files (the cache root) and how it writes one atomically.

Neutral ground for the composition memo, the toolchain environments and the engine's cache, so
none of them imports another's module for it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_root(configured: str | None = None) -> Path:
    """cache.dir, else YOLOBUILD_CACHE, else the user cache folder."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("YOLOBUILD_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolobuild"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
