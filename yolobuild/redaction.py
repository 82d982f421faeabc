"""Values read from the environment (`${oc.env:NAME}`) never reach a file yolobuild writes.

A recipe may come from someone else's repository and a cache or a build folder may be shared,
so the values a config took from environment variables are remembered here (per process) and
replaced by their `${oc.env:NAME}` text in every JSON or text file the engine writes: plan.json,
manifest.json, report.md and the cache's entries. Fingerprints still hash the real value.
Credentials given to cache.remote (its URL's password, `cache.remote_options.secret=...`) are hidden
the same way, shown as `<cache.remote_options.secret>`.
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


CREDENTIAL_KEY = re.compile(r"key|secret|token|passw|credential|auth|sas|signature|connection_string", re.I)


def credentials(cache_settings: object) -> dict[str, str]:
    """What grants access in a config's `cache:` section (value -> stand-in): the password in
    cache.remote's URL, and every cache.remote_options value under a credential-looking name."""
    from collections.abc import Mapping
    from urllib.parse import urlsplit

    found: dict[str, str] = {}
    if not isinstance(cache_settings, Mapping):
        return found
    url = cache_settings.get("remote")
    try:
        password = urlsplit(url).password if isinstance(url, str) else None
    except ValueError:
        password = None
    if password:
        found[password] = "<cache.remote password>"

    def walk(tree: object, dotted: str) -> None:
        if isinstance(tree, Mapping):   # the validated config is read-only mappings
            for k, v in tree.items():
                walk(v, f"{dotted}.{k}")
        elif isinstance(tree, (list, tuple)):
            for v in tree:
                walk(v, dotted)
        elif isinstance(tree, str) and CREDENTIAL_KEY.search(dotted.rsplit(".", 1)[-1]):
            found[tree] = f"<{dotted}>"

    walk(cache_settings.get("remote_options"), "cache.remote_options")
    return found


def hide_credentials(cache_settings: object) -> None:
    for value, stand_in in credentials(cache_settings).items():
        hide(value, stand_in)


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
