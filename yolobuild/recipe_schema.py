"""The JSON Schema (Draft 2020-12) of a recipe FILE, for editors and review.

Built from the schemas validate checks a composed config against (validate.SCHEMAS_DIR), so the two
never disagree: every cross-file $ref is inlined (the result stands alone, an editor needs no other
file), `required` is dropped (a recipe sets only what it changes from the recipe it inherits), and a
value may always be an interpolation (`${target.heads.preferred}`) or `???` (set on the command line).
Unknown keys stay errors at every level: a misspelled key is what a schema is for.
"""
from __future__ import annotations

import copy
import json
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
INTERPOLATED = {"anyOf": [{"type": "string", "pattern": r"^\$\{.+\}$",
                           "description": "an OmegaConf interpolation, resolved when the build is composed"},
                          {"const": "???", "description": "must be set (by another recipe or the command line)"}]}
DEFAULTS_LIST = {
    "description": "Hydra defaults list: the recipe this one inherits (e.g. [yolov5s, _self_]) and group "
                   "choices (- override /dataset: folder)",
    "type": "array",
    "items": {"anyOf": [{"type": "string", "minLength": 1},
                        {"type": "object", "minProperties": 1, "maxProperties": 1,
                         "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]}}]},
}


def _load_schemas() -> dict[str, dict]:
    from .validate import SCHEMAS_DIR

    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMAS_DIR.glob("*.schema.json"))}


def _pointer(doc: dict, pointer: str) -> Any:
    node = doc
    for part in [p for p in pointer.lstrip("/").split("/") if p]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _inline(node: Any, doc_name: str, docs: dict[str, dict], depth: int = 0) -> Any:
    """node with every $ref replaced by the schema it names (resolved against the file it appears in)."""
    if depth > 64:
        raise ValueError("schemas: $ref chain too deep (a cycle?)")
    if isinstance(node, list):
        return [_inline(v, doc_name, docs, depth) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline(v, doc_name, docs, depth) for k, v in node.items() if k not in ("$ref", "$defs", "$id", "$schema")}
    ref = node.get("$ref")
    if ref is None:
        return out
    target_doc, _, pointer = ref.partition("#")
    target_doc = target_doc or doc_name
    target = _inline(_pointer(docs[target_doc], pointer), target_doc, docs, depth + 1)
    return {"allOf": [target, out]} if out else target


def _partial(schema: Any, wrap: bool = True) -> Any:
    """Drop `required` everywhere; let every property value be an interpolation too."""
    if isinstance(schema, list):
        return [_partial(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "required":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: {"anyOf": [_partial(sub), {"$ref": "#/$defs/interpolated"}]}
                        for name, sub in value.items()}
        else:
            out[key] = _partial(value)
    return out


def toolchain_option_schemas() -> dict[str, dict]:
    """toolchain name -> JSON Schema of its backend options, from each registered toolchain's declaration."""
    from .toolchains import registry

    schemas = {}
    for name in registry.names():
        decl = registry.find(name)
        if decl is not None and decl.options:
            schemas[name] = decl.options
    return schemas


def _options_schema(options: dict[str, dict]) -> dict:
    if not options:
        return {"type": "object", "description": "toolchain options (backend.options.KEY=VALUE)"}
    return {"description": "toolchain options (backend.options.KEY=VALUE): one schema per toolchain",
            "anyOf": [{"$ref": f"#/$defs/options_{name}"} for name in sorted(options)]}


def recipe_file_schema() -> dict:
    """The self-contained schema of one recipe file (`# @package _global_`: its keys are the config's)."""
    docs = _load_schemas()
    config = _inline(docs["config.schema.json"], "config.schema.json", docs)
    options = toolchain_option_schemas()
    config["properties"]["backend"]["properties"]["options"] = _options_schema(options)
    config["properties"]["target"]["properties"]["backend_options"] = _options_schema(options)
    body = _partial(config)
    body["properties"] = {"defaults": DEFAULTS_LIST, **body["properties"]}
    defs = {"interpolated": INTERPOLATED}
    defs.update({f"options_{name}": copy.deepcopy(s) for name, s in sorted(options.items())})
    for sub in defs.values():
        sub.pop("$schema", None)
    return {"$schema": DRAFT, "$id": "https://yolobuild.dev/schemas/recipe-file.schema.json",
            "title": "yolobuild recipe file (recipe/NAME.yaml, `# @package _global_`)",
            **{k: v for k, v in body.items() if k not in ("title", "$schema", "$id")},
            "$defs": defs}


def render() -> str:
    return json.dumps(recipe_file_schema(), indent=2) + "\n"


def problems(data: Any, schema: dict | None = None) -> list[str]:
    """One line per way a parsed recipe file breaks the schema (dotted key first)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema or recipe_file_schema())
    lines = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        err = _real_branch(err)
        key = ".".join(map(str, err.absolute_path)) or "recipe"
        lines.append(f"{key}: {_explain(err)}")
    return lines


def _real_branch(err):
    """Follow an anyOf failure into the value's own schema (branch 0), not the interpolation alternative."""
    while err.context:
        real = [e for e in err.context if list(e.schema_path)[:1] == [0]] or list(err.context)
        err = max(real, key=lambda e: len(e.absolute_path))
    return err


def _explain(err) -> str:
    from .errors import nearest

    if err.validator == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(known))
        return "; ".join(f"unknown key {k!r}{nearest(k, known)}" for k in extra) + f"; allowed keys: {', '.join(known)}"
    return err.message
