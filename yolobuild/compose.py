"""Compose a build config from Hydra config groups: recipe x target x precision x dataset.

Uses Hydra's config loader directly (not `@hydra.main`) so that a user's `--config-dir`
is searched before the shipped recipes, and so that each key's source file can be
recovered for error messages. Imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, nearest
from .resources import RECIPES_DIR

PRIMARY = "config"
GROUPS = ("recipe", "target", "precision", "dataset")
MISSING = "???"
GLOBAL_PRECISION = "fp32"   # recipes/config.yaml's precision default; a target's default_precision replaces it


@dataclass(frozen=True)
class Composed:
    """A composed (not yet validated) config with what is needed to explain it."""

    config: dict[str, Any]
    overrides: tuple[str, ...]
    config_dirs: tuple[Path, ...]
    choices: dict[str, str] = field(default_factory=dict)
    unresolved: tuple[tuple[str, str], ...] = ()   # (key, why) for interpolations that failed


def search_dirs(config_dirs=()) -> list[Path]:
    """User folders first (they may add or shadow recipes and targets), shipped recipes last."""
    return [Path(d).resolve() for d in config_dirs] + [RECIPES_DIR]


def options(group: str, config_dirs=()) -> list[str]:
    """The choices of a config group; files named `_*.yaml` are bases other files inherit, never a choice."""
    names = set()
    for d in search_dirs(config_dirs):
        if (d / group).is_dir():
            names.update(p.stem for p in (d / group).glob("*.yaml") if not p.stem.startswith("_"))
    return sorted(names)


def _loader(config_dirs):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra._internal.core_plugins.structured_config_source import StructuredConfigSource
    from hydra._internal.sources_registry import SourcesRegistry

    registry = SourcesRegistry.instance()
    for source in (FileConfigSource, StructuredConfigSource):
        if source.scheme() not in registry.types:
            registry.register(source)
    path = ConfigSearchPathImpl()
    for d in search_dirs(config_dirs):
        path.append("yolobuild", f"file://{d}")
    path.append("schema", "structured://")  # Hydra requires its schema source, last
    return ConfigLoaderImpl(config_search_path=path)


def _load(loader, overrides):
    """Hydra's composition, then the target's default precision when nothing chose one.

    A target declares `default_precision` (mlu220 builds int8, not the global fp32); when the
    command line names no precision and the composed one is the global default, the config is
    composed again with `precision=<the target's>` appended to `overrides` (so the Composed record
    and error messages show it). An explicit precision= always wins."""
    cfg, choices = _compose_once(loader, overrides)
    default = _target_default_precision(cfg, choices, overrides)
    if default:
        overrides.append(f"precision={default}")
        cfg, choices = _compose_once(loader, overrides)
    return cfg, choices


def _target_default_precision(cfg, choices, overrides) -> str | None:
    if any(o.split("=", 1)[0].lstrip("+~/") == "precision" for o in overrides if "=" in o or o.startswith("~")):
        return None
    target = cfg.get("target") or {}
    default = target.get("default_precision") if hasattr(target, "get") else None
    if not default or str(choices.get("precision")) != GLOBAL_PRECISION or default == GLOBAL_PRECISION:
        return None
    return str(default)


def _compose_once(loader, overrides):
    """Hydra's composition (defaults lists, group overrides, command-line overrides, struct
    mode) without the `hydra:` node of an app run: that node alone costs ~100 ms to build,
    and validate/plan must stay far below an `import torch`.

    `target.backend_options` is left open (not struct): an option the target YAML does not list
    may still be given (`backend.options.KEY=VALUE`); the toolchain's option schema rejects
    unknown ones at validate, naming the key. `cache.remote_options` is open too: fsspec's
    options for the remote's protocol (`cache.remote_options.endpoint_url=...`)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.defaults_list import create_defaults_list
    from omegaconf import OmegaConf

    parsed, repo = loader._parse_overrides_and_create_caching_repo(PRIMARY, list(overrides))
    defaults = create_defaults_list(repo=repo, config_name=PRIMARY, overrides_list=parsed,
                                    prepend_hydra=False, skip_missing=False)
    cfg = loader._compose_config_from_defaults_list(defaults=defaults.defaults, repo=repo)
    OmegaConf.set_struct(cfg, True)
    for open_node in ("target.backend_options", "cache.remote_options"):   # keys checked later, by their schema
        options = OmegaConf.select(cfg, open_node)
        if OmegaConf.is_config(options):
            OmegaConf.set_struct(options, False)
    ConfigLoaderImpl._apply_overrides_to_config(defaults.config_overrides, cfg)
    return cfg, dict(defaults.overrides.known_choices)


def _check_group_choices(overrides, config_dirs) -> None:
    """Unknown recipe/target/precision/dataset names: list the allowed ones, suggest the nearest."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    errors = []
    for ov in parse_overrides(overrides):
        group = ov.key_or_group.lstrip("/")
        if group not in GROUPS or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        allowed = options(group, config_dirs)
        for value in values:
            if value not in allowed:
                errors.append(f"{group}: unknown {group} {value!r}{nearest(value, allowed)}; "
                              f"allowed: {', '.join(allowed)} (command line)")
    if errors:
        raise UserError(errors[0], errors)
    del OverridesParser


# backend.options is `${target.backend_options}`: the target YAML holds the defaults, so a
# command-line override of one option is an override of the target's default for this build.
ALIASES = {"backend.options.": "target.backend_options."}


def _alias(override: str) -> str:
    for prefix in ("", "+", "++", "~"):
        for old, new in ALIASES.items():
            if override.startswith(prefix + old):
                return prefix + new + override[len(prefix + old):]
    return override


def parse_overrides(overrides):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"command line: cannot parse override: {first}") from None


def expand_sweep(overrides) -> list[list[str]]:
    """`--multirun` overrides -> one override list per job, using Hydra's sweep grammar."""
    import itertools

    fixed = [o for o in overrides if o.startswith(REPO_DEFAULT)]   # a model repo's defaults: never swept
    overrides = [o for o in overrides if not o.startswith(REPO_DEFAULT)]
    axes = []
    for ov in parse_overrides(overrides):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            fixed.append(ov.input_line)
    return [fixed + list(combo) for combo in itertools.product(*axes)] if axes else [fixed]


def _explain_composition_error(exc, overrides, config_dirs) -> UserError:
    text = str(exc).strip()
    msg = text.splitlines()[0]
    import re

    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        key = m.group(1)
        top = key.split(".")[0]
        hint = ""
        if "not in struct" in text or "Could not override" in text:
            known = _known_keys(config_dirs) if overrides else []
            hint = nearest(key, known) or nearest(top, known)
            return UserError(f"{key}: unknown key{hint}; to add a new key use +{key}=VALUE (command line)")
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        return UserError(f"config: {msg}")
    return UserError(f"command line: {msg}")


def _all_composition_errors(exc, overrides, config_dirs, limit: int = 8) -> UserError:
    """Hydra stops at the first bad override: drop it and compose again, so independent mistakes are all
    reported in one run (only on the error path, where a few more compositions cost nothing)."""
    first = _explain_composition_error(exc, overrides, config_dirs)
    lines, remaining = list(first.lines), list(overrides)
    for _ in range(limit):
        culprit = next((o for o in remaining if o.lstrip("+~").split("=", 1)[0] == first.lines[0].split(":")[0]),
                       None)
        if culprit is None:
            break
        remaining.remove(culprit)
        try:
            validate_later = compose(remaining, config_dirs, allow_env=True)
        except UserError as more:
            new = [line for line in more.lines if line not in lines]
            if not new:
                break
            lines += new
            first = more
            continue
        from .validate import validate

        try:
            validate(validate_later)
        except UserError as more:
            lines += [line for line in more.lines if line not in lines]
        break
    return UserError(lines[0], lines)


def _known_keys(config_dirs) -> list[str]:
    try:
        cfg = compose([], config_dirs).config
    except UserError:
        return []
    return list(flatten(cfg))


def _yaml_problem(path: Path) -> str | None:
    """One line on what is wrong with a config file's YAML, or None when it is a mapping (or empty)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"{path}: not a text file (UTF-8); a config file is YAML text"
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror})"
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        hint = "; indent with spaces, YAML does not allow tabs" if "'\\t'" in problem or "\t" in problem else ""
        return f"{where}: invalid YAML: {problem}{hint}"
    except yaml.YAMLError as exc:
        return f"{path}: invalid YAML: {' '.join(str(exc).split())[:160]}"
    if data is not None and not isinstance(data, dict):
        return (f"{path}: the file holds a {type(data).__name__}, a config file must hold a mapping "
                "(key: value lines)")
    return None


def check_yaml_files(config_dirs) -> None:
    """The user's config folders parse as YAML mappings: a broken file is named with its line, not a traceback."""
    lines = []
    for d in config_dirs:
        for path in sorted(Path(d).rglob("*.yaml")) + sorted(Path(d).rglob("*.yml")):
            problem = _yaml_problem(path)
            if problem:
                lines.append(problem)
    if lines:
        raise UserError(lines[0], lines)


ALLOW_ENV_VARIABLE = "YOLOBUILD_ALLOW_ENV"


def _env_allowed(name: str, allow_env: bool) -> bool:
    import os

    listed = [n.strip() for n in os.environ.get(ALLOW_ENV_VARIABLE, "").split(",") if n.strip()]
    return allow_env or name in listed


def _check_env_reads(raw: dict, overrides, config_dirs, allow_env: bool) -> dict[str, list[str]]:
    """Keys whose value reads an environment variable -> the variable names.

    A recipe file may come from someone else's repository: reading the environment from one needs
    --allow-env (or the variable listed in YOLOBUILD_ALLOW_ENV). The user's own command line may."""
    from .redaction import ENV_INTERPOLATION

    reads = {key: ENV_INTERPOLATION.findall(value) for key, value in flatten(raw).items()
             if isinstance(value, str) and ENV_INTERPOLATION.search(value)}
    reads.update({f"{key}[]": ENV_INTERPOLATION.findall(str(value)) for key, value in flatten(raw).items()
                  if isinstance(value, list) and ENV_INTERPOLATION.search(str(value))})
    typed = {ov.key_or_group.lstrip("+~") for ov in parse_overrides(overrides) if "oc.env" in ov.input_line}
    refused = [(key, name) for key, names in reads.items() for name in names
               if key.rstrip("[]") not in typed and not _env_allowed(name, allow_env)]
    if refused:
        sources, _ = provenance(overrides, config_dirs)
        lines = [f"{key.rstrip('[]')}: reads the environment variable {name} (${{oc.env:{name}}}); a recipe file "
                 f"may read the environment only with --allow-env, or with {name} listed in "
                 f"{ALLOW_ENV_VARIABLE} ({source_of(key.rstrip('[]'), sources)})" for key, name in refused]
        raise UserError(lines[0], lines)
    return reads


def _remember_env_values(resolved: dict, reads: dict[str, list[str]]) -> None:
    from .redaction import remember

    values = flatten(resolved)
    for key, names in reads.items():
        remember(values.get(key.rstrip("[]")), names[0])


# `repo-default:KEY=VALUE`: a model repo's default (yolobuild.yaml) that replaces the shipped default only,
# so a recipe file that sets KEY keeps its value (a plain override would beat the recipe)
REPO_DEFAULT = "repo-default:"


def _apply_repo_defaults(resolved: dict, repo_defaults: list[str]) -> None:
    import yaml

    shipped = flatten(yaml.safe_load((RECIPES_DIR / f"{PRIMARY}.yaml").read_text()) or {})
    for item in repo_defaults:
        ov = parse_overrides([item])[0]
        key, value = ov.key_or_group, ov.value()
        parts = key.split(".")
        node = resolved
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if node.get(parts[-1]) == shipped.get(key):
            node[parts[-1]] = value


def compose(overrides=(), config_dirs=(), allow_env: bool = False) -> Composed:
    """Compose the config for one job. Raises UserError with one line per problem."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for d in config_dirs:
        if not Path(d).is_dir():
            raise UserError(f"--config-dir: {d} is not a folder (command line)")
    check_yaml_files(config_dirs)
    repo_defaults = [o[len(REPO_DEFAULT):] for o in overrides if o.startswith(REPO_DEFAULT)]
    overrides = [_alias(o) for o in overrides if not o.startswith(REPO_DEFAULT)]
    _check_group_choices(overrides, config_dirs)
    loader = _loader(config_dirs)
    try:
        cfg, known_choices = _load(loader, overrides)
    except MissingConfigException as exc:
        raise UserError(f"config: {str(exc).strip().splitlines()[0]}") from None
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        raise _all_composition_errors(exc, overrides, config_dirs) from None
    except HydraException as exc:
        raise UserError(f"command line: {str(exc).strip().splitlines()[0]}") from None
    choices = {g: str(known_choices.get(g)) for g in GROUPS}
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    reads = _check_env_reads(OmegaConf.to_container(plain, resolve=False), overrides, config_dirs, allow_env)
    try:
        resolved, unresolved = OmegaConf.to_container(plain, resolve=True, throw_on_missing=False), ()
    except OmegaConfBaseException:
        resolved, unresolved = _resolve_leniently(plain)
    _remember_env_values(resolved, reads)
    _apply_repo_defaults(resolved, repo_defaults)
    from .redaction import hide_credentials

    hide_credentials(resolved.get("cache"))   # cache.remote's credentials never reach a file
    return Composed(config=resolved, overrides=tuple(overrides),
                    config_dirs=tuple(Path(d).resolve() for d in config_dirs), choices=choices,
                    unresolved=unresolved)


def _resolve_leniently(plain) -> tuple[dict, tuple[tuple[str, str], ...]]:
    """Resolve what can be; an interpolation that cannot (a user target lacking a key) becomes None."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = OmegaConf.to_container(plain, resolve=False)
    problems = []
    for key, value in flatten(raw).items():
        if isinstance(value, str) and "${" in value:
            try:
                value = OmegaConf.select(plain, key, throw_on_missing=False)
                value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except OmegaConfBaseException as exc:
                problems.append((key, f"cannot resolve {value}: {str(exc).splitlines()[0]}"))
                value = None
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return raw, tuple(problems)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = tree
    return out


def provenance(overrides=(), config_dirs=()) -> tuple[dict[str, str], dict[str, str]]:
    """(dotted key -> the file that last set it or 'command line', key -> key it merely copies).

    A key set to a plain `${other.key}` interpolation is attributed to where other.key was
    set: `graph.head: ${target.heads.preferred}` is the target file's choice. Only called
    to explain errors, so its cost is not on the fast path.
    """
    import re
    from hydra._internal.defaults_list import create_defaults_list
    from omegaconf import OmegaConf

    loader = _loader(config_dirs)
    parsed, repo = loader._parse_overrides_and_create_caching_repo(PRIMARY, list(overrides))
    defaults = create_defaults_list(repo=repo, config_name=PRIMARY, overrides_list=parsed,
                                    prepend_hydra=False, skip_missing=False)
    source: dict[str, str] = {}
    raw: dict[str, object] = {}
    for d in defaults.defaults:
        if d.config_path is None or d.config_path.startswith("hydra/"):
            continue
        loaded = loader.repository.load_config(d.config_path)
        if loaded is None:
            continue
        body = OmegaConf.to_container(loaded.config, resolve=False)
        body.pop("defaults", None)
        package = d.package or ""
        where = _display_path(loaded.path, d.config_path)
        prefix = package if package and package != "_global_" else ""
        if prefix:
            source[prefix] = where
        for key, value in flatten(body, prefix).items():
            source[key] = where
            raw[key] = value
    for ov in parse_overrides(overrides):
        key = ov.key_or_group.lstrip("+~/")
        if key not in GROUPS:  # a group choice's keys come from the file it chose
            source[key] = "command line"
            raw[key] = None
    aliases = {}
    for key, value in raw.items():
        m = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
        if m and source.get(key) != "command line":
            aliases[key] = m.group(1)
            source[key] = source_of(m.group(1), source)
    return source, aliases


def _display_path(source_path: str, config_path: str) -> str:
    root = source_path.replace("file://", "")
    path = Path(root) / f"{config_path}.yaml"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        if path.is_relative_to(RECIPES_DIR):
            return f"recipes/{path.relative_to(RECIPES_DIR)}"
        return str(path)


def source_of(key: str, sources: dict[str, str]) -> str:
    """The source of key, or of its closest parent (a list or a section set as a whole)."""
    parts = key.split(".")
    while parts:
        hit = sources.get(".".join(parts))
        if hit:
            return hit
        parts.pop()
    return "recipes/config.yaml"
