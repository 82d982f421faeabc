"""Values read from the environment (`${oc.env:NAME}`) never reach a file yolobuild writes.

A recipe may come from someone else's repository and a cache or a build folder may be shared,
so the values a config took from environment variables are remembered here (per process) and
replaced by their `${oc.env:NAME}` text in every JSON or text file the engine writes: plan.json,
manifest.json, report.md and the cache's entries. Fingerprints still hash the real value.
"""
from __future__ import annotations

import json
import re

ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:\s*([^,}\s]+)")
_MIN_LENGTH = 4   # shorter values ("1", "fp16"?) would also match ordinary words of the file

_secrets: dict[str, str] = {}   # value -> what stands for it


def remember(value: object, name: str) -> None:
    """Record a value that came from environment variable `name` (strings and the strings in lists)."""
    if isinstance(value, (list, tuple)):
        for v in value:
            remember(v, name)
    elif isinstance(value, str) and len(value) >= _MIN_LENGTH:
        _secrets[value] = f"${{oc.env:{name}}}"


def hide(value: object, stand_in: str) -> None:
    """Record a value that must never be written (a credential in cache.remote's options), shown as `stand_in`."""
    if isinstance(value, str) and len(value) >= _MIN_LENGTH:
        _secrets[value] = stand_in


def active() -> bool:
    return bool(_secrets)


def scrub(text: str) -> str:
    """The text with every remembered value replaced, longest first (JSON-escaped forms too)."""
    for value in sorted(_secrets, key=len, reverse=True):
        stand_in = _secrets[value]
        text = text.replace(value, stand_in)
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            text = text.replace(escaped, stand_in)
    return text


def forget() -> None:
    _secrets.clear()
