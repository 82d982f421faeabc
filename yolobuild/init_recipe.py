"""`yolobuild init`: write the shortest recipe that builds the user's model, from what the checkpoint says.

The checkpoint's family, scale and layout pick the shipped recipe to inherit (`defaults: [yolov5s, _self_]`),
so the new file holds only what differs: the name, the weights, the classes, the trained input size.
Every key gets a comment, the first line points editors at the recipe schema, and the repo root gets
the yolobuild.yaml marker that lets every command find the recipe from any folder in the repo.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import UserError

DEFAULT_BASE = "yolov5s"
SCHEMA_FILE = "recipe.schema.json"   # written beside recipe/ in the repo's config folder
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def checkpoint_path(value: str) -> Path:
    """What model.weights names, as a file: a path, or `builtin:NAME` (a checkpoint shipped in the package)."""
    from .validate import ASSETS_DIR, BUILTIN_PREFIX
    from .errors import nearest

    if value == "random":
        raise UserError("model.weights=random holds no checkpoint to read; name a file or builtin:NAME (command line)")
    if value.startswith(BUILTIN_PREFIX):
        name = value[len(BUILTIN_PREFIX):]
        known = sorted(p.stem for p in ASSETS_DIR.glob("*.pt"))
        if name not in known:
            raise UserError(f"model.weights: {value!r} is not a shipped checkpoint{nearest(name, known)}; allowed: "
                            f"{', '.join('builtin:' + k for k in known)} (command line)")
        return ASSETS_DIR / f"{name}.pt"
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"model.weights: {value!r}: no such file (command line)")
    return path


def shipped_recipes() -> dict[str, dict]:
    """name -> the model section of each shipped recipe (plain YAML reads, no composition)."""
    import yaml

    from .compose import RECIPES_DIR

    out = {}
    for path in sorted((RECIPES_DIR / "recipe").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(data.get("model"), dict) and "defaults" not in data:
            out[path.stem] = data
    return out


def pick_base(info: dict, recipes: dict[str, dict]) -> str | None:
    """The shipped recipe with the checkpoint's family, scale and layout (the plain one before variants)."""
    fits = [name for name, r in recipes.items()
            if r["model"].get("family") == info.get("family") and r["model"].get("layout") == info.get("layout")
            and str(r["model"].get("scale")) == str(info.get("scale"))]
    return min(fits, key=len) if fits else None


def _yaml_value(value: Any) -> str:
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z0-9_./:-]+", value) and value not in ("null", "true", "false", "???") \
            else json.dumps(value)
    return json.dumps(value)   # flow style: JSON is YAML


def recipe_text(name: str, base: str, base_recipe: dict, weights: str, info: dict | None, schema_ref: str) -> str:
    """The recipe file: only the keys that differ from `base`, one comment each."""
    model = base_recipe["model"]
    lines = ["# @package _global_",   # Hydra reads its header only while lines start with `# @`: first
             f"# yaml-language-server: $schema={schema_ref}"]
    if info:
        lines.append(f"# {name}: {info['family']} {info.get('scale')} ({info['layout']} layout) read from "
                     f"{weights} by `yolobuild init`; anchors and strides come from the checkpoint at build time")
        if info.get("anchors"):
            lines.append(f"#   anchors in the checkpoint: {_yaml_value(info['anchors'])}")
    else:
        lines.append(f"# {name}: a {base} with random weights, written by `yolobuild init`: it checks the "
                     "pipeline; set model.weights to your trained checkpoint")
    rows: list[tuple[str, str, str]] = [("model.weights", _yaml_value(weights),
                                         "the checkpoint (a path relative to where you run yolobuild, builtin:NAME, "
                                         "or random)")]
    if info:
        if info.get("nc") is not None and info["nc"] != model.get("nc"):
            rows.append(("model.nc", _yaml_value(info["nc"]), "number of classes the checkpoint was trained on"))
        if info.get("names") and info["names"] != model.get("names"):
            rows.append(("model.names", _yaml_value(list(info["names"])), "class names, in the checkpoint's order "
                         "(written to the deploy labels)"))
        size = info.get("input_size")
        inp = base_recipe.get("input") or {}
        if size and [size[0], size[1]] != [inp.get("height"), inp.get("width")]:
            rows.append(("input.height", str(int(size[0])), "the trained image size (a multiple of the max stride)"))
            rows.append(("input.width", str(int(size[1])), "override on the command line: input.width=W"))
    lines += ["defaults:",
              f"  - {base}   # the shipped recipe this one inherits: family, scale, layout, stride, input size",
              "  - _self_    # then the keys below replace its values",
              f"recipe: {name}   # builds are filed under <workspace>/{name}_<target>_<precision>_<H>x<W>/"]
    section = None
    for key, value, comment in rows:
        top, leaf = key.split(".", 1)
        if top != section:
            lines.append(f"{top}:")
            section = top
        lines.append(f"  {leaf}: {value}   # {comment}")
    return "\n".join(lines) + "\n"


MARKER_TEXT = """\
# The root of this model repo for yolobuild: every yolobuild command run in this folder or below
# finds the recipes here without --config-dir (written by `yolobuild init`).
config_dir: {config_dir}        # recipe/ (and target/, precision/, dataset/ if you add them)
workspace: yolobuild-out   # where builds go (workspace.path), relative to this file
cache: null                # the op cache (cache.dir); null: ~/.cache/yolobuild or YOLOBUILD_CACHE
"""


def init(name: str | None, weights: str | None, base: str | None, cwd: Path | None = None,
         trust: bool = False) -> list[Path]:
    """Write the recipe (and the marker and schema file where they are missing); return what was written."""
    from . import recipe_schema, repo as repo_mod

    recipes = shipped_recipes()
    if base is not None and base not in recipes:
        from .errors import nearest

        raise UserError(f"--from: {base!r} is not a shipped recipe{nearest(base, recipes)}; "
                        f"allowed: {', '.join(recipes)} (command line)")
    info = None
    if weights is not None and weights != "random":
        from .ops.checkpoint import inspect_weights

        info = inspect_weights(checkpoint_path(weights), trust)
        if info.get("family") is None:
            raise UserError(f"--weights: {weights}: the file does not say which model it is "
                            f"(a bare state_dict, {info.get('guess', 'unknown')}); name the recipe to start from "
                            "with --from RECIPE (command line)")
        found = pick_base(info, recipes)
        if base is None and found is None:
            raise UserError(f"--weights: no shipped recipe is a {info['family']} {info.get('scale')} "
                            f"{info['layout']}; name the closest with --from RECIPE (command line)")
        base = base or found
    base = base or DEFAULT_BASE
    marker = repo_mod.find_marker(cwd)
    root = marker.parent if marker else repo_mod.repo_root_or_cwd(cwd)
    repo = repo_mod.load(marker) if marker else None
    config_dir = repo.config_dir if repo else root / repo_mod.DEFAULT_CONFIG_DIR
    name = name or _name_from(root)
    if not NAME_PATTERN.match(name):
        raise UserError(f"--name: {name!r} is not a recipe name; allowed: letters, digits, . _ - (command line)")
    if name in recipes:
        raise UserError(f"--name: {name!r} is a shipped recipe's name; pick another so both stay reachable "
                        "(command line)")
    recipe = config_dir / "recipe" / f"{name}.yaml"
    if recipe.exists():
        raise UserError(f"{_shown(recipe)} exists; yolobuild init never overwrites a recipe "
                        "(remove it, or pick another --name)")
    written = []
    recipe.parent.mkdir(parents=True, exist_ok=True)
    schema = config_dir / SCHEMA_FILE
    if not schema.exists():
        schema.write_text(recipe_schema.render(), encoding="utf-8")
        written.append(schema)
    text = recipe_text(name, base, recipes[base], _weights_as_written(weights, root), info,
                       f"../{SCHEMA_FILE}")
    with open(recipe, "x", encoding="utf-8") as f:   # "x": never replaces a file that appeared meanwhile
        f.write(text)
    written.append(recipe)
    if marker is None:
        path = root / repo_mod.MARKER
        path.write_text(MARKER_TEXT.format(config_dir=config_dir.relative_to(root).as_posix()), encoding="utf-8")
        written.append(path)
    return written


def _weights_as_written(weights: str | None, root: Path) -> str:
    if weights is None or weights == "random" or weights.startswith("builtin:"):
        return weights or "random"
    path = Path(weights).expanduser().absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _name_from(root: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip("-.") or "model"
    return name if NAME_PATTERN.match(name) else f"model-{name}"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
