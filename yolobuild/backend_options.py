"""`backend.options` checked against the chosen toolchain's option schema (its toolchain.yaml `options`).

The schema holds every option's default, once: the merged dict is the schema defaults, then the
target YAML's `backend_options` (a chip's own value, with a comment saying why), then the command
line. Each problem becomes one line naming `backend.options.<key>`; step functions get the merged
dict and never re-default or re-check it. Imports no torch.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import nearest
from .toolchains.registry import Toolchain


def merged(decl: Toolchain, given: dict | None) -> dict[str, Any]:
    return {**decl.option_defaults(), **dict(given or {})}


def _bounds(schema: dict) -> str:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        return f" {lo}..{hi}" if "exclusiveMinimum" not in schema else f" > {lo} and <= {hi}"
    if lo is not None:
        return f" {'>' if 'exclusiveMinimum' in schema else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def describe(schema: dict) -> str:
    """What an option schema allows, in words, for the error line."""
    if "enum" in schema:
        return ", ".join(json.dumps(v) for v in schema["enum"])
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(describe(s) for s in schema.get("oneOf", schema.get("anyOf")))
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    words = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
             "null": "null", "array": "a list", "object": "a mapping"}
    parts = [words.get(t, t) + (_bounds(schema) if t in ("integer", "number") else "") for t in types]
    if "array" in types and "minItems" in schema and schema.get("minItems") == schema.get("maxItems"):
        parts[types.index("array")] = f"a list of {schema['minItems']} {describe(schema.get('items', {})) or 'values'}"
    return " or ".join(parts) or "see the toolchain's option schema"


def problems(decl: Toolchain, options: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, message) for every option the schema rejects; one per key."""
    schema = decl.options
    if not schema:
        return []
    from jsonschema import Draft202012Validator

    props = schema.get("properties", {})
    out: dict[str, str] = {}
    if schema.get("additionalProperties") is False:
        for key in sorted(set(options) - set(props)):
            out[key] = (f"not a {decl.name} option{nearest(key, list(props))}; "
                        f"allowed: {', '.join(props) or 'none'}")
    for err in Draft202012Validator(schema).iter_errors(options):
        path = list(err.absolute_path)
        if not path:
            continue   # additionalProperties: reported above, key by key
        key = str(path[0])
        if key in out or key not in props:
            continue
        value = options[key]
        shown = repr(value) if isinstance(value, str) else json.dumps(value)
        out[key] = f"{shown} is not allowed; allowed: {describe(props[key])}"
    return [(f"backend.options.{key}", msg) for key, msg in sorted(out.items())]
