"""The commands for recipes that live in a model repo: `init`, `schema`, `check-recipes`.

Kept apart from cli.py's build verbs: these read or write recipe files, they never build.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import EXIT_OK, EXIT_USER, UserError, nearest

INIT_USAGE = "yolobuild init [--weights PATH|builtin:NAME] [--name NAME] [--from RECIPE] [--trust-checkpoint]"


def _options(argv: list[str], valued: set[str], flags: set[str], verb: str) -> tuple[dict[str, str], list[str]]:
    """`--key VALUE` / `--key=VALUE` options and bare flags; anything else is one clear error."""
    found: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in valued:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{verb}: {name} needs a value (command line)")
                i += 1
                value = argv[i]
            found[name] = value
        elif a in flags:
            found[a] = "true"
        elif a.startswith("-"):
            raise UserError(f"{verb}: {a}: unknown option{nearest(name, valued | flags)}; "
                            f"allowed: {', '.join(sorted(valued | flags))} (command line)")
        else:
            rest.append(a)
        i += 1
    return found, rest


def cmd_init(argv: list[str], out) -> int:
    from .init_recipe import init

    opts, rest = _options(argv, {"--weights", "--name", "--from"}, {"--trust-checkpoint"}, "init")
    if rest:
        raise UserError(f"init: {rest[0]}: unexpected; say `{INIT_USAGE}` (command line)")
    written = init(opts.get("--name"), opts.get("--weights"), opts.get("--from"),
                   trust="--trust-checkpoint" in opts)
    for path in written:
        out.say(f"wrote {_shown(path)}")
    recipe = next(p for p in written if p.parent.name == "recipe")
    out.say(f"next: yolobuild validate recipe={recipe.stem} target=onnxruntime   (from any folder of this repo)")
    return EXIT_OK


def cmd_schema(argv: list[str], out) -> int:
    from .recipe_schema import render

    opts, rest = _options(argv, {"--output", "-o"}, set(), "schema")
    if rest:
        raise UserError(f"schema: {rest[0]}: unexpected; say `yolobuild schema [--output FILE]` (command line)")
    text = render()
    target = opts.get("--output") or opts.get("-o")
    if not target or target == "-":
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(target).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--output: cannot write {path} ({exc.strerror})") from None
    out.say(f"wrote {path}")
    return EXIT_OK


def check_file(path: Path, schema: dict) -> list[str]:
    """Every problem of one config file: its YAML, the recipe schema, then the composed build's rules."""
    from .compose import GROUPS, _yaml_problem, compose
    from .recipe_schema import problems
    from .validate import validate

    if not path.is_file():
        return [f"{path}: no such file"]
    problem = _yaml_problem(path)
    if problem:
        return [problem]
    if path.name == "yolobuild.yaml":
        from . import repo

        try:
            repo.load(path)
        except UserError as err:
            return err.lines
        return []
    group = path.parent.name
    if group not in GROUPS:
        return [f"{path}: not in a recipe/, target/, precision/ or dataset/ folder, so no build reads it"]
    if group == "recipe":
        import yaml

        lines = [f"{path}: {line}" for line in problems(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, schema)]
        if lines:
            return lines
    try:
        validate(compose([f"{group}={path.stem}"], [str(path.parent.parent)]))
    except UserError as err:
        return [f"{path}: {line}" for line in err.lines]
    return []


def cmd_check_recipes(argv: list[str], out) -> int:
    """`yolobuild check-recipes FILE...`: the pre-commit hook's command (no torch, one line per problem)."""
    from .recipe_schema import recipe_file_schema

    opts, files = _options(argv, set(), set(), "check-recipes")
    if not files:
        raise UserError("check-recipes: name the recipe files, e.g. `yolobuild check-recipes deploy/recipe/*.yaml` "
                        "(command line)")
    schema = recipe_file_schema()
    bad = 0
    for name in files:
        lines = check_file(Path(name), schema)
        bad += bool(lines)
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        if not lines:
            out.say(f"ok: {name}")
    return EXIT_USER if bad else EXIT_OK


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
