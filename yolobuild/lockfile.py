"""`yolobuild lock` and `build --locked`: pin what a reviewed build was made from.

For each job the lock holds the resolved recipe keys, the sha256 of every input file, the versions of
every tool, and a fingerprint per planned op chained from those (an op fed by another op names that op's
lock fingerprint, since its output hash is only known once it ran). All of it is knowable without
building and without torch. `build --locked` recomputes it and refuses (exit 3) before any op runs when
anything differs, naming what: a tool version, an input file, a recipe key.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .errors import LockMismatch, UserError, YolobuildError

LOCK_NAME = "yolobuild.lock"
FORMAT = 1
# keys that say where things go, not what is built: they may differ between machines
UNLOCKED_PREFIXES = ("workspace.", "cache.")
INPUT_KEYS = ("model.weights", "dataset.calib.path", "dataset.eval.images", "dataset.eval.annotations")


def lock_path(repo_root: Path | None = None) -> Path:
    return (repo_root or Path.cwd()) / LOCK_NAME


def _input_keys(config: Mapping) -> dict[str, str]:
    """resolved input path -> the recipe key that names it."""
    from .compose import flatten
    from .plan.lower import weights_ref
    from .validate import thaw

    flat = flatten(thaw(config))
    out = {}
    for key in INPUT_KEYS:
        value = flat.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key == "model.weights":
            ref = weights_ref(value)
            path = ref.path if ref is not None else None
        else:
            path = str(Path(value).expanduser().resolve())
        if path:
            out[path] = key
    return out


def job_entry(config: Mapping, plan) -> dict[str, Any]:
    """What the lock pins for one job."""
    from .compose import flatten
    from .engine.build import cache_for
    from .engine.runner import Runner, env_tool_versions, fingerprint, op_key, yolobuild_version
    from .validate import thaw

    runner = Runner(cache_for(config))
    names = _input_keys(config)
    inputs: dict[str, dict] = {}
    tools: dict[str, str] = {"yolobuild": yolobuild_version()}
    locked: dict[str, str] = {}
    ops = []
    for op in plan.ops:
        hashes = {}
        for slot, ref in op.inputs.items():
            if ref.op:
                hashes[slot] = f"op:{locked[ref.op]}:{ref.output}"
                continue
            sha = runner._hash_ref(ref, {})
            hashes[slot] = sha
            key = names.get(ref.path or "", f"{op.id}.{slot}")
            inputs[key] = {"file": _display(ref.path), "sha256": sha}
        try:
            env_versions = env_tool_versions(op, install=False, progress=lambda m: None)
        except YolobuildError:
            env_versions = {op.env: "not installed"}
        key = op_key(op, hashes, env_versions)
        tools.update({k: v for k, v in key["tools"].items() if k != "yolobuild-op"})
        locked[op.id] = fingerprint(key)
        ops.append({"id": op.id, "kind": op.kind, "fingerprint": locked[op.id],
                    "definition": key["tools"]["yolobuild-op"]})
    config_keys = {k: v for k, v in flatten(thaw(config)).items() if not k.startswith(UNLOCKED_PREFIXES)}
    return {"config": config_keys, "inputs": inputs, "tools": dict(sorted(tools.items())), "ops": ops}


def _display(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def write(entries: dict[str, dict], path: Path) -> None:
    from .engine.cache import write_atomic

    body = {"format": FORMAT, "note": "written by `yolobuild lock`; `yolobuild build --locked` refuses a build "
            "that differs from it", "jobs": dict(sorted(entries.items()))}
    write_atomic(path, json.dumps(body, indent=2, sort_keys=False, default=str) + "\n")


def read(path: Path) -> dict[str, dict]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--locked: no {path}; run `yolobuild lock ...` first and commit it") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--locked: {path} is not a lock file yolobuild can read ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("jobs"), dict):
        raise UserError(f"--locked: {path} is not a yolobuild lock (format {FORMAT}); run `yolobuild lock ...` again")
    return body["jobs"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(locked: dict, now: dict) -> list[str]:
    """What changed, most telling first: tool versions, input files, recipe keys, then op definitions."""
    out = []
    for name in sorted(set(locked.get("tools", {})) | set(now["tools"])):
        old, new = locked.get("tools", {}).get(name), now["tools"].get(name)
        if old != new:
            out.append(f"tool {name} changed: {old or 'absent'} -> {new or 'absent'}")
    for key in sorted(set(locked.get("inputs", {})) | set(now["inputs"])):
        old, new = locked.get("inputs", {}).get(key), now["inputs"].get(key)
        if old is None or new is None:
            out.append(f"input {key} {'added' if old is None else 'removed'}")
        elif old["sha256"] != new["sha256"]:
            out.append(f"input file {key} changed: {new['file']} sha256 {old['sha256'][:12]} -> {new['sha256'][:12]}")
    for key in sorted(set(locked.get("config", {})) | set(now["config"])):
        old, new = locked.get("config", {}).get(key, "<absent>"), now["config"].get(key, "<absent>")
        if old != new:
            out.append(f"recipe key {key} changed: {_short(old)} -> {_short(new)}")
    if not out:
        old_ops = {o["id"]: o for o in locked.get("ops", [])}
        for op in now["ops"]:
            was = old_ops.get(op["id"])
            if was is None:
                out.append(f"op {op['id']} is new in the plan")
            elif was["fingerprint"] != op["fingerprint"]:
                out.append(f"op {op['id']} changed: its definition {was.get('definition')} -> {op['definition']} "
                           "(yolobuild's own code)")
        out += [f"op {i} is no longer in the plan" for i in old_ops if i not in {o['id'] for o in now['ops']}]
    return out


def _same_axes(jobs: dict[str, dict], config: Mapping) -> dict | None:
    """The locked job of the same recipe, target and precision (its input size or name may have changed)."""
    axes = (config["recipe"], config["target"]["name"], config["precision"]["name"])
    for entry in jobs.values():
        c = entry.get("config", {})
        if (c.get("recipe"), c.get("target.name"), c.get("precision.name")) == axes:
            return entry
    return None


def check(config: Mapping, plan, path: Path) -> None:
    """Raise LockMismatch naming every change, or return when the build is the locked one."""
    jobs = read(path)
    locked = jobs.get(plan.name) or _same_axes(jobs, config)
    if locked is None:
        raise LockMismatch([f"{plan.name} is not in {path} (it locks {', '.join(jobs) or 'nothing'}); "
                            "run `yolobuild lock` with these overrides"])
    changes = differences(locked, job_entry(config, plan))
    if changes:
        raise LockMismatch([f"{plan.name}: differs from {path.name}: {c}" for c in changes])
