"""Which command-line overrides make a build a different configuration than its readable name says.

The build folder is named `<recipe>_<target>_<precision>_<H>x<W>`; two builds that differ in any
other override (a `backend.options.*`, a dataset, the weights) would share it and the second would
silently replace the first. Those overrides are kept with the config (`overrides`), and their short
digest is added to the folder's name.
"""
from __future__ import annotations

import hashlib

IN_THE_NAME = ("recipe", "target", "precision", "input.width", "input.height")
NO_EFFECT = ("workspace.path", "cache.dir", "cache.max_size", "cache.remote", "cache.remote_options")   # where things go
#                                                                  (a key or any key below it), not what is built
ALIASES = {"backend.options.": "target.backend_options."}


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~/")


def _normal(override: str) -> str:
    """One spelling per override: `+`/`++` dropped, `backend.options.` as its real key."""
    text = override.lstrip("+")
    for old, new in ALIASES.items():
        for prefix in ("", "~"):
            if text.startswith(prefix + old):
                text = prefix + new + text[len(prefix + old):]
    return text


def identity(overrides) -> list[str]:
    """The overrides that change what is built and are not part of the readable name, sorted."""
    kept = set()
    for o in overrides:
        key = _key(o)
        if key in IN_THE_NAME or key.startswith(tuple(k + "." for k in NO_EFFECT)) or key in NO_EFFECT or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        kept.add(_normal(o))
    return sorted(kept)


def suffix(identity_overrides) -> str:
    """`-<8 hex>` for a build with identity overrides, '' for one without."""
    if not identity_overrides:
        return ""
    return "-" + hashlib.sha256("\n".join(identity_overrides).encode()).hexdigest()[:8]
