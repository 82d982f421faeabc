"""Toolchain declarations: each toolchain package's `toolchain.yaml`, read as data, nothing imported.

Shipped packages are found by listing `yolobuild/toolchains/*/toolchain.yaml`; a third-party
distribution adds one through the entry-point group `yolobuild.toolchains` (the value names a
package whose folder holds toolchain.yaml). Entry points are scanned only for a name that is not
shipped, or to list every toolchain, so validate and plan never pay for them otherwise.

The planner reads the declaration (precisions, plan shape, compiled files, option schema); the
engine only asks this module for an isolated environment's spec. Neither imports a package.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..errors import ToolchainError, UserError, nearest
from .envs import EnvSpec

ENTRY_POINT_GROUP = "yolobuild.toolchains"
SHIPPED_DIR = Path(__file__).resolve().parent
DECLARATION = "toolchain.yaml"
# shared code a toolchain's ops run besides their package's own files (the fingerprint covers it)
SHARED_CODE = {"handoff": ("yolobuild/toolchains/handoff",),
               "isolated": ("yolobuild/toolchains/envs.py", "yolobuild/toolchains/worker.py"),
               "always": ("yolobuild/runtime/arrays.py", "yolobuild/runtime/quiet.py", "yolobuild/runtime/probe.py",
                          "yolobuild/errors.py", "yolobuild/context.py")}


@dataclass(frozen=True)
class PlanShape:
    quantize: str = "in_compile"     # separate | in_compile | none
    simulate: str = "op"             # op | in_compile | op_rebuilds
    handoff: bool = False
    exports: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccuracyFacts:
    """What an accuracy search may change (toolchain.yaml `accuracy`): the option naming the calibration
    algorithm and the algorithms to try, and whether the toolchain has a `layer_error` step."""

    calibration_option: str | None = None
    calibration_choices: tuple[str, ...] = ()
    layer_error: bool = False


@dataclass(frozen=True)
class Toolchain:
    """One toolchain package's declaration (toolchain.yaml), as the planner and validator read it."""

    name: str
    package: str                     # dotted package name
    folder: Path
    env: str                         # host, or its isolated environment's name
    environment: EnvSpec | None
    tools: tuple[str, ...]
    precisions: tuple[str, ...]
    heads: tuple[str, ...]
    plan: PlanShape
    compiled: tuple[str, ...]
    op_version: int
    steps: str | None                # module holding the step functions; None: not wired yet
    code: tuple[str, ...]            # files and folders (import-root relative) whose source keys its ops
    options: dict[str, Any]          # JSON Schema of backend.options
    source: str                      # where it was declared (for messages)
    accuracy: AccuracyFacts = AccuracyFacts()

    def step(self, kind: str) -> str | None:
        return f"{self.steps}:{kind}" if self.steps else None

    def option_defaults(self) -> dict[str, Any]:
        return {k: v["default"] for k, v in self.options.get("properties", {}).items() if "default" in v}


def _read_yaml_mapping(path: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(), Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the toolchain declaration: {str(exc).splitlines()[0]}") from None
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    data = _read_yaml_mapping(path)
    if not isinstance(data.get("name"), str):
        raise UserError(f"{path}: a toolchain declaration needs at least a `name`")
    return data


def _code(data: dict, package: str, folder: Path) -> tuple[str, ...]:
    rel = Path(*package.split("."))
    own = data.get("code") or sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    files = [(rel / f).as_posix() for f in own]
    plan = data.get("plan") or {}
    if plan.get("handoff"):
        files += SHARED_CODE["handoff"]
    if data.get("env", "host") != "host":
        files += SHARED_CODE["isolated"]
    return tuple(dict.fromkeys(files + list(SHARED_CODE["always"])))


def _environment(data: dict, folder: Path) -> EnvSpec | None:
    env = data.get("environment")
    if data.get("env", "host") == "host" or not env:
        return None
    return EnvSpec(name=data["env"], aliases=tuple(env.get("aliases") or (data["env"],)),
                   python=str(env.get("python", "host")),
                   steps=tuple((s["requirements"], tuple(s.get("pip_args") or ())) for s in env.get("steps") or ()),
                   record=tuple(env.get("record") or ()), fixup=env.get("fixup"), check=env.get("check") or "",
                   extra_env=dict(env.get("extra_env") or {}), folder=folder)


@lru_cache(maxsize=1)
def _handoff_options() -> dict:
    """The option schema properties every hand-off toolchain shares (handoff/options.yaml)."""
    return _read_yaml_mapping(SHIPPED_DIR / "handoff" / "options.yaml")


def _options(data: dict, plan: dict) -> dict:
    options = dict(data.get("options") or {})
    if plan.get("handoff") and options:
        options["properties"] = {**options.get("properties", {}), **_handoff_options()}
    return options


def _accuracy(data: dict) -> AccuracyFacts:
    acc = data.get("accuracy") or {}
    return AccuracyFacts(calibration_option=acc.get("calibration_option"),
                         calibration_choices=tuple(acc.get("calibration_choices") or ()),
                         layer_error=bool(acc.get("layer_error", False)))


def _declaration(path: Path, package: str) -> Toolchain:
    data = _read_yaml(path)
    folder = path.parent
    plan = data.get("plan") or {}
    return Toolchain(
        name=data["name"], package=package, folder=folder, env=str(data.get("env", "host")),
        environment=_environment(data, folder), tools=tuple(data.get("tools") or ()),
        precisions=tuple(data.get("precisions") or ()), heads=tuple(data.get("heads") or ()),
        plan=PlanShape(quantize=plan.get("quantize", "in_compile"), simulate=plan.get("simulate", "op"),
                       handoff=bool(plan.get("handoff", False)), exports=tuple(plan.get("exports") or ())),
        compiled=tuple(data.get("compiled") or ()), op_version=int(data.get("op_version", 1)),
        steps=data.get("steps"), code=_code(data, package, folder), options=_options(data, plan),
        source=str(path), accuracy=_accuracy(data))


@lru_cache(maxsize=1)
def shipped() -> dict[str, Toolchain]:
    """name -> declaration of every package shipped in yolobuild/toolchains (a listing, no import)."""
    found = {}
    for path in sorted(SHIPPED_DIR.glob(f"*/{DECLARATION}")):
        decl = _declaration(path, f"yolobuild.toolchains.{path.parent.name}")
        found[decl.name] = decl
    return found


def _entry_point_packages() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]


def _package_folder(package: str) -> Path | None:
    """The folder of `package` holding toolchain.yaml, found without importing the package."""
    first, *rest = package.split(".")
    spec = importlib.util.find_spec(first)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location, *rest)
        if (folder / DECLARATION).is_file():
            return folder
    return None


@lru_cache(maxsize=1)
def third_party() -> dict[str, Toolchain]:
    """name -> declaration of every toolchain registered through the entry-point group."""
    found = {}
    for package in _entry_point_packages():
        folder = _package_folder(package)
        if folder is None:
            continue
        decl = _declaration(folder / DECLARATION, package)
        if decl.name not in shipped():
            found[decl.name] = decl
    return found


def names() -> list[str]:
    return sorted({**shipped(), **third_party()})


def find(name: str) -> Toolchain | None:
    """The declaration named `name` (shipped first; entry points only when it is not shipped)."""
    return shipped().get(name) or third_party().get(name)


def get(name: str) -> Toolchain:
    decl = find(name)
    if decl is None:
        known = names()
        raise UserError(f"backend.toolchain: {name!r} is not a toolchain{nearest(name, known)}; "
                        f"allowed: {', '.join(known)}")
    return decl


def environments() -> dict[str, EnvSpec]:
    """env name -> spec of every isolated environment a toolchain declares."""
    envs = {}
    for decl in {**shipped(), **third_party()}.values():
        if decl.environment is not None:
            envs.setdefault(decl.environment.name, decl.environment)
    return envs


def environment(env: str) -> EnvSpec | None:
    """The spec of an isolated environment by name (None for host); shipped declarations first."""
    for decl in shipped().values():
        if decl.environment is not None and decl.environment.name == env:
            return decl.environment
    if env == "host":
        return None
    return environments().get(env)


def environment_versions(env: str, install: bool, progress: Callable[[str], None] = print) -> dict[str, str]:
    """Versions inside an op's isolated environment, from its marker file (no process started),
    as `env:dist` keys; {} for the host. With `install`, a missing environment is installed first
    (its versions key the op); without, it is reported."""
    from . import envs

    spec = environment(env)
    if spec is None:
        return {}
    marker = envs.ensure(spec, progress) if install else envs.read_marker(spec)
    if marker is None:
        raise ToolchainError(f"toolchain environment {spec.name} is not installed; run `{envs.install_hint(spec)}` "
                             "(or build: it installs on first use)")
    return {f"{spec.name}:{k}": v for k, v in marker["versions"].items()}


def declaration_problems(decl: Toolchain) -> list[str]:
    """toolchain.yaml against schemas/toolchain.schema.json, one line per problem (validate calls it)."""
    import json

    from jsonschema import Draft202012Validator

    from ..resources import SCHEMAS_DIR

    schema = json.loads((SCHEMAS_DIR / "toolchain.schema.json").read_text())
    data = _read_yaml(Path(decl.source))
    lines = []
    for err in sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(map(str, e.path))):
        where = ".".join(map(str, err.path)) or "/"
        lines.append(f"{decl.source}: {where}: {err.message}")
    if decl.options:
        try:
            Draft202012Validator.check_schema(decl.options)
        except Exception as exc:  # jsonschema.SchemaError: a broken option schema in the package
            lines.append(f"{decl.source}: options: not a valid JSON Schema: {str(exc).splitlines()[0]}")
    return lines
