"""One build: run the plan through the cache, then lay out the build folder.

Build folder `<workspace>/<recipe>_<target>_<precision>_<H>x<W>/`: the final artifacts,
plan.json, manifest.json and report.md. A user error met while running (a corrupt
checkpoint, say) leaves the folder as the last good build left it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import EXIT_INTERRUPTED, EXIT_OK, UserError
from ..plan.ir import Plan
from .cache import Cache, pid_alive, default_root, write_atomic
from .runner import CorruptObject, MAX_REPAIR_ROUNDS, Execution, OpRecord, Runner, yolobuild_version


@dataclass
class BuildResult:
    plan: Plan
    build_dir: Path
    manifest: dict[str, Any]
    exit_code: int
    message: str = ""


def build_dir_for(config: Mapping, plan: Plan) -> Path:
    return Path(config["workspace"]["path"]).expanduser() / plan.name


def cache_for(config: Mapping) -> Cache:
    return Cache.configured(config["cache"])


def _previous_keys(build_dir: Path) -> dict[str, dict]:
    try:
        manifest = json.loads((build_dir / "manifest.json").read_text())
        return {op["id"]: op.get("key", {}) for op in manifest.get("ops", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


MARKER = ".yolobuild-sha256"


def _user_edited(dest: Path, cache: Cache) -> bool:
    """A folder in the build folder whose files no longer hash to what yolobuild placed there
    (its marker), or a non-empty folder yolobuild did not write: it holds a user's edits."""
    if not dest.is_dir():
        return False
    marker = dest / MARKER
    if not marker.is_file():
        return any(dest.iterdir())
    h = hashlib.sha256(b"tree\n")  # cache.sha256_tree's format, without the marker itself
    for p in sorted(dest.rglob("*")):
        if p.is_file() and p != marker:
            h.update(f"{p.relative_to(dest).as_posix()}\0{cache.hash_file(p)}\n".encode())
    return h.hexdigest() != marker.read_text().strip()


class _Corrupt(Exception):
    def __init__(self, sha: str):
        self.sha = sha


def _copy_artifact(src: Path, dest: Path, sha: str, cache: Cache) -> Path:
    """Copy one cached object into the build folder unless the same bytes are already there.

    A folder the user edited since yolobuild placed it is never overwritten: a different new
    version goes beside it (`<name>.new`). Returns where the object is.
    """
    if src.is_dir():
        marker = dest / MARKER
        if _user_edited(dest, cache):
            if marker.is_file() and marker.read_text().strip() == sha:
                return dest  # nothing new to place: the user's edits stay as they are
            dest = dest.with_name(f"{dest.name}.new")
            marker = dest / MARKER
        if dest.is_dir() and marker.exists() and marker.read_text().strip() == sha:
            return dest
        if not cache.object_intact(sha):
            raise _Corrupt(sha)
        staging = dest.with_name(f".{dest.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        (staging / ".yolobuild-sha256").write_text(sha)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
        return dest
    if dest.is_file() and cache.hash_file(dest) == sha:
        return dest
    if not cache.object_intact(sha):
        raise _Corrupt(sha)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


def _materialize(plan: Plan, records: list[OpRecord], build_dir: Path, cache: Cache,
                 moved: dict[str, Path] | None = None) -> dict[str, str]:
    """Final outputs into the build folder (a later op's output of the same name wins).

    `moved` collects the outputs placed beside a folder holding the user's edits (name -> path)."""
    chosen: dict[str, str] = {}
    made_by: dict[str, OpRecord] = {}
    for rec in records:
        for name in rec.op.final:
            if name in rec.outputs:
                chosen[name] = rec.outputs[name]["sha256"]
                made_by[name] = rec
    for name, sha in chosen.items():
        try:
            where = _copy_artifact(cache.object_path(sha), build_dir / name, sha, cache)
        except _Corrupt:
            rec = made_by[name]
            raise CorruptObject(rec.op.id, rec.fingerprint or "", sha, name) from None
        if where != build_dir / name and moved is not None:
            moved[name] = where
    return chosen


def _copy_logs(records: list[OpRecord], build_dir: Path) -> None:
    """Logs of the tools that ran this time, beside the artifacts (a failed op's log above all)."""
    for rec in records:
        if rec.log and rec.log.exists():
            (build_dir / "logs").mkdir(exist_ok=True)
            shutil.copyfile(rec.log, build_dir / "logs" / f"{rec.op.id}.log")


def _tools(records: list[OpRecord]) -> dict[str, str]:
    tools = {"yolobuild": yolobuild_version(), "python": platform.python_version()}
    for rec in records:
        for name, version in rec.key.get("tools", {}).items():
            if name != "yolobuild-op":
                tools[name] = version
    return tools


def _where(path: Path, build_dir: Path, cache: Cache) -> dict[str, str]:
    """A path as the manifest records it: relative to the build folder, or to the cache root (no machine paths)."""
    try:
        return {"path": path.relative_to(build_dir).as_posix(), "in": "build"}
    except ValueError:
        return {"path": path.relative_to(cache.root).as_posix(), "in": "cache"}


def _display(path: Path) -> str:
    home = Path.home()
    return f"~/{path.relative_to(home).as_posix()}" if path.is_relative_to(home) else str(path)


def next_step(manifest: Mapping, build_dir: Path, cache_root: Path | None = None) -> str | None:
    """The hand-off's next command with `<output>` placeholders filled in with real paths on this machine."""
    for op in manifest.get("ops", []):
        text = (op.get("results") or {}).get("next")
        if not text:
            continue
        for name, out in op["outputs"].items():
            base = build_dir if out.get("in") == "build" else (cache_root or build_dir)
            text = text.replace(f"<{name}>", str(base / out["path"]))
        return text
    return None


def make_manifest(config: Mapping, plan: Plan, ex: Execution, build_dir: Path, cache: Cache,
                  placed: dict[str, str], status: str, moved: dict[str, Path] | None = None) -> dict[str, Any]:
    """What the build did. Paths are relative to the build folder (`in: build`) or the cache root (`in: cache`)."""
    parity, metrics, benchmark = {}, {}, {}
    ops = []
    moved = moved or {}
    for rec in ex.records:
        parity.update(rec.results.get("parity", {}))
        metrics.update(rec.results.get("metrics", {}))
        benchmark.update(rec.results.get("benchmark", {}))
        outputs = {}
        for name, out in rec.outputs.items():
            in_build = name in rec.op.final and placed.get(name) == out["sha256"]
            path = moved.get(name, build_dir / name) if in_build else cache.object_path(out["sha256"])
            outputs[name] = {**_where(path, build_dir, cache), "sha256": out["sha256"]}
        ops.append({"id": rec.op.id, "kind": rec.op.kind, "env": rec.op.env, "fingerprint": rec.fingerprint,
                    "status": rec.status, "reason": rec.reason, "seconds": rec.seconds, "started": rec.started,
                    "outputs": outputs, "results": rec.results, "key": rec.key})
    manifest = {
        "status": status,
        "build": plan.name,
        "recipe": config["recipe"],
        "target": config["target"]["name"],
        "precision": config["precision"]["name"],
        "input": {"height": config["input"]["height"], "width": config["input"]["width"]},
        "overrides": list(config.get("overrides") or ()),
        "head": config["graph"]["head"],
        "weights": config["model"]["weights"],
        "random_weights": config["model"]["weights"] == "random",
        "tools": _tools(ex.records),
        "ops": ops,
        "parity": parity,
        "metrics": metrics,
        "benchmark": benchmark,
        "error": str(ex.error) if ex.error else ("interrupted" if ex.interrupted else None),
        "kept_edits": [f"{name} holds your edits: it was left as it is and the new {name} was written beside it, "
                       f"to {path.relative_to(build_dir).as_posix()}" for name, path in sorted(moved.items())],
        "cache": _display(cache.root),
        "cache_events": ex.cache_events + cache.events,   # + broken locks, cache.remote trouble
    }
    manifest["next"] = next_step({"ops": ops}, Path("."))   # relative to the build folder
    accuracy = _accuracy(plan, ex.records, cache)
    if accuracy:
        manifest["accuracy"] = accuracy
    return manifest


def _accuracy(plan: Plan, records: list[OpRecord], cache: Cache) -> dict[str, Any]:
    """manifest.accuracy: the per-layer error (layers.json, graph order), the worst layers, and the layers
    this build kept in float (backend.options.keep_float as its ops were given it)."""
    out: dict[str, Any] = {}
    for op in plan.ops:
        if op.kind == "compile" and isinstance(op.params.get("options"), Mapping):
            out["kept_float"] = list(op.params["options"].get("keep_float") or ())
    for rec in records:
        if rec.op.kind != "layer_error" or "layers.json" not in rec.outputs:
            continue
        try:
            doc = json.loads(cache.object_path(rec.outputs["layers.json"]["sha256"]).read_text())
        except (OSError, ValueError):
            continue
        out.update({"method": doc.get("method"), "images": doc.get("images"), "layers": doc.get("layers", []),
                    "worst": list(doc.get("worst", []))[:5]})
    if "layers" not in out and not out.get("kept_float"):
        return {}
    return out


# ------------------------------------------------------------------------------- the build folder, atomically

STAGING = ".building-"


def _link_tree(src: Path, dest: Path) -> None:
    """dest: the same files as src, as hard links where the file system allows (no bytes copied)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, copy_function=link)
    else:
        link(src, dest)


def _stage(build_dir: Path) -> Path:
    """A new build folder beside the old one, holding what the old one holds (hard links): the new build
    is laid out in it while the old one stays whole, then the two are swapped (`_swap`)."""
    staging = build_dir.with_name(f".{build_dir.name}{STAGING}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if build_dir.is_dir():
        for entry in build_dir.iterdir():
            if entry.name not in ("manifest.json", "plan.json", "report.md", "report.html", ".lock"):
                _link_tree(entry, staging / entry.name)
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap(staging: Path, build_dir: Path) -> None:
    """Put the staged build in place: at every instant build_dir is the old build or the new one."""
    if not build_dir.exists():
        os.rename(staging, build_dir)
        return
    if not _exchange(staging, build_dir):   # two renames: a moment with no folder, never a mixed one
        old = build_dir.with_name(f".{build_dir.name}.old-{os.getpid()}")
        os.rename(build_dir, old)
        os.rename(staging, build_dir)
        staging = old
    shutil.rmtree(staging, ignore_errors=True)


def clean_abandoned_staging(build_dir: Path) -> None:
    """Staging folders of builds that were killed (their process is gone) are removed."""
    for path in build_dir.parent.glob(f".{build_dir.name}*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if (STAGING in path.name or ".old-" in path.name) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def readable_sibling(build_dir: Path) -> Path:
    """`demo_onnxruntime_fp32_320x320-1a2b3c4d` -> `demo_onnxruntime_fp32_320x320`: a first build with an
    override explains what changed against the build without it (`param head changed: "raw" -> "split"`)."""
    import re

    match = re.fullmatch(r"(.*_\d+x\d+)-[0-9a-f]{8}", build_dir.name)
    return build_dir.with_name(match.group(1)) if match else build_dir


def refuse_another_configuration(config: Mapping, build_dir: Path) -> None:
    """A build folder holding another configuration's build (its manifest lists other overrides) is
    never replaced: that would silently lose the other build. Folders from before overrides were
    recorded carry none and are replaced as before."""
    try:
        theirs = json.loads((build_dir / "manifest.json").read_text()).get("overrides")
    except (OSError, ValueError, AttributeError):
        return
    ours = list(config.get("overrides") or ())
    if theirs is not None and list(theirs) != ours:
        raise UserError(f"workspace.path: {build_dir} holds another configuration's build "
                        f"(overrides: {' '.join(theirs) or 'none'}; this one: {' '.join(ours) or 'none'}); "
                        "remove it or choose another workspace.path")


def run_build(config: Mapping, plan: Plan, on_op: Callable[[OpRecord], None] | None = None,
              on_event: Callable[[str, OpRecord], None] | None = None) -> BuildResult:
    """Run the plan and lay out the build folder; `on_op` / `on_event`: see Runner (what a live view shows)."""
    from ..report import render_report
    from ..report_html import render_html

    build_dir = build_dir_for(config, plan)
    refuse_another_configuration(config, build_dir)
    cache = cache_for(config)
    try:
        cache.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cache.dir: {cache.root} is not writable ({exc.strerror}) (YOLOBUILD_CACHE / cache.dir)") from None
    if (cache.root / "tmp").is_dir():
        cache.clean_abandoned_tmp()   # what a killed build left
    runner = Runner(cache, _previous_keys(build_dir) or _previous_keys(readable_sibling(build_dir)), on_op,
                    on_event=on_event)
    ex = runner.run(plan)
    if ex.interrupted:
        return BuildResult(plan, build_dir, {}, EXIT_INTERRUPTED, "finished ops stay cached")
    if isinstance(ex.error, UserError):
        raise ex.error  # nothing written: the build folder keeps the last good build
    try:
        build_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"workspace.path: cannot create {build_dir.parent} ({exc.strerror})") from None
    cache.ensure_writable()
    with cache.lock(f"build-{hashlib.sha256(str(build_dir.resolve()).encode()).hexdigest()}"):
        clean_abandoned_staging(build_dir)
        staging = _stage(build_dir)
        try:
            moved: dict[str, Path] = {}
            placed = {}
            for round_ in range(MAX_REPAIR_ROUNDS):
                if ex.error is not None:
                    break
                try:
                    placed = _materialize(plan, ex.records, staging, cache, moved)
                    break
                except CorruptObject as bad:   # a final artifact went bad in the cache: make it again
                    events = ex.cache_events + [runner.repair(bad)]
                    ex = runner.run(plan)
                    ex.cache_events = events + ex.cache_events
                    ex.error = ex.error or (bad if round_ == MAX_REPAIR_ROUNDS - 1 else None)
            _copy_logs(ex.records, staging)
            status = "failed" if ex.error else plan.status_if_done
            manifest = make_manifest(config, plan, ex, staging, cache, placed, status, moved)
            fps = {rec.op.id: rec.fingerprint for rec in ex.records}
            write_atomic(staging / "plan.json", plan_json(plan, fps, build_dir))
            write_atomic(staging / "manifest.json", json.dumps(manifest, indent=2))
            write_atomic(staging / "report.md", render_report(manifest))
            write_atomic(staging / "report.html", render_html(manifest, staging))
            _swap(staging, build_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    budget = config["cache"].get("max_size")
    if budget is not None:   # keep the cache within its size budget (what this build used was just touched)
        from .upkeep import gc, parse_size

        gc(cache, parse_size(budget))
    code = ex.error.exit_code if ex.error else EXIT_OK
    return BuildResult(plan, build_dir, manifest, code, str(ex.error) if ex.error else "")


def plan_json(plan: Plan, fingerprints: dict, build_dir: Path) -> str:
    """plan.json with the paths of user files relative to the build folder (no machine paths)."""
    from ..redaction import scrub

    data = plan.to_dict(fingerprints)
    for op in data["ops"]:
        for ref in op["inputs"].values():
            if ref.get("path"):   # a path read from the environment stays its ${oc.env:NAME}
                hidden = scrub(ref["path"])
                ref["path"] = hidden if hidden != ref["path"] else os.path.relpath(ref["path"], build_dir)
    return json.dumps(data, indent=2)
