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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()   # read once: os.umask sets while it reads, and ops write files from threads


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file in the same folder, then rename over the target.

    Text goes through redaction.scrub (no value read from the environment lands in a file), and the
    file gets the mode any new file gets (mkstemp's 0600 would hide manifests from the group)."""
    from .redaction import scrub

    if isinstance(data, str):
        data = scrub(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
