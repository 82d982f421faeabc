"""Run a plan's ops as their inputs become ready, reusing cached results (a constructive trace, early cut-off).

An op's fingerprint = sha256(kind, op version, params, the sha256 of every input artifact,
the versions of the tools it uses). Internal inputs are hashed by content, so an upstream op
that reruns but produces identical bytes does not invalidate what follows.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..errors import ToolchainError, UserError, YolobuildError, machine_error
from ..plan.ir import Op, Plan, Ref
from ..toolchains import registry
from .cache import Cache, Entry, sha256_tree
from .dispatch import implementation, runs_in_child
from ..progress import ignore


@lru_cache(maxsize=1)
def _installed_versions() -> dict[str, str]:
    """name -> version from the *.dist-info folder names on sys.path: one listdir per entry,
    where importlib.metadata would open and parse every METADATA file it meets."""
    import os
    import re
    import sys

    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                dist, version = name[: -len(".dist-info")].split("-", 1)
                found.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), version)
    return found


def tool_version(dist: str) -> str:
    """A distribution's version; `path:NAME` is a program looked up on PATH now (a vendor tool with no
    distribution: finding it changes the key, so the op reruns with it)."""
    if dist.startswith("path:"):
        import shutil

        return "on PATH" if shutil.which(dist[len("path:"):]) else "absent"
    return _distribution_version(dist)


@lru_cache(maxsize=None)
def _distribution_version(dist: str) -> str:
    import re

    version = _installed_versions().get(re.sub(r"[-_.]+", "-", dist).lower())
    if version:
        return version
    from importlib.metadata import PackageNotFoundError, version as metadata_version

    try:
        return metadata_version(dist)
    except PackageNotFoundError:
        return "not installed"


def yolobuild_version() -> str:
    from .. import __version__

    return __version__


def _code_root(top: str) -> Path | None:
    """The sys.path entry a top-level package lives under (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(top)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve().parent if locations else None


@lru_cache(maxsize=None)
def implementation_digest(code: tuple[str, ...]) -> str:
    """sha256 over the source an op runs (its declared code: files, or folders meaning every .py in
    them), so editing that code (without remembering to bump the op's version) never serves a stale
    cached result, and editing code the op does not run keeps its cache."""
    h = hashlib.sha256()
    for entry in sorted(code):
        root = _code_root(entry.split("/", 1)[0])
        path = root / entry if root else None
        if path is None or not path.exists():
            h.update(entry.encode() + b"\0missing\0")
            continue
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def env_tool_versions(op: Op, install: bool, progress: Callable[[str], None] = print) -> dict[str, str]:
    """Versions inside an op's toolchain environment, from its marker file (no process started).

    During a build a missing environment is installed first (its versions key the op);
    during `plan` it is reported instead."""
    return registry.environment_versions(op.env, install, progress)


def op_code(op: Op) -> tuple[str, ...]:
    """What an op runs: the plan says for toolchain steps; a host op kind declares it in the ops table."""
    if op.code:
        return tuple(op.code)
    from ..ops import OP_KINDS, code_paths

    kind = OP_KINDS.get(op.kind)
    return code_paths(kind) if kind else ()


def op_key(op: Op, input_hashes: dict[str, str], env_versions: dict[str, str] | None = None) -> dict[str, Any]:
    tools = dict(env_versions) if env_versions else {t: tool_version(t) for t in op.tools}
    tools["yolobuild-op"] = f"{op.kind}/{op.version}/{implementation_digest(op_code(op))[:16]}"
    return {"kind": op.kind, "version": op.version, "env": op.env, "params": op.params,
            "inputs": input_hashes, "tools": tools}


def fingerprint(key: dict[str, Any]) -> str:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def explain(key: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """Why an op must run, ninja `-d explain` style, against the last build's key for it."""
    if not previous:
        return "no cache entry"
    for field_name in ("version", "env"):
        if previous.get(field_name) != key[field_name]:
            return f"op {field_name} changed: {previous.get(field_name)} -> {key[field_name]}"
    for name in sorted(set(key["params"]) | set(previous.get("params", {}))):
        old, new = previous.get("params", {}).get(name), key["params"].get(name)
        if old != new:
            return f"param {name} changed: {json.dumps(old)} -> {json.dumps(new)}"
    for name in sorted(set(key["inputs"]) | set(previous.get("inputs", {}))):
        old, new = previous.get("inputs", {}).get(name), key["inputs"].get(name)
        if old != new:
            return f"input {name} changed: {str(old)[:12]} -> {str(new)[:12]}"
    for name in sorted(set(key["tools"]) | set(previous.get("tools", {}))):
        old, new = previous.get("tools", {}).get(name), key["tools"].get(name)
        if old != new:
            return f"tool {name} changed: {old} -> {new}"
    return "no cache entry (same key as the last build: the cache entry was removed)"


def one_blas_thread():
    """numpy's BLAS held to one thread while a build's op threads run (restore_original_limits() ends it).
    numpy's OpenBLAS (0.3.31, numpy 2.4) called from two op threads of one build, a host check beside a
    toolchain step's host side, was seen to spin in exec_blas for good (check_parity's norm, 15 minutes at
    100% CPU, its worker thread asleep); one BLAS thread runs in the caller and has no hand-off to lose. The
    op threads are the build's parallelism; torch and ONNX Runtime keep their own thread pools."""
    import numpy  # noqa: F401  (loaded first: the limit applies to the BLAS libraries loaded now)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@dataclass
class OpRecord:
    op: Op
    fingerprint: str | None = None
    status: str = "pending"          # ran | cached | handoff | failed | pending
    reason: str = ""
    seconds: float = 0.0
    started: float | None = None     # seconds after the run began that this op started (ops overlap)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None          # the tool's log for this run, when it wrote one
    # while it runs, for the live view only (never in the manifest or the cache): when it began
    # (time.time()) and its latest per-image progress {"done", "total", "what", "at"}
    began: float | None = None
    progress: dict[str, Any] | None = None


@dataclass
class Execution:
    records: list[OpRecord]
    error: YolobuildError | None = None
    interrupted: bool = False
    cache_events: list[dict[str, Any]] = field(default_factory=list)   # objects found corrupt, what was done


class CorruptObject(ToolchainError):
    """A cached object no longer hashes to its name: quarantined; the op that made it must run again."""

    def __init__(self, producer: str, fingerprint: str, sha: str, output: str):
        super().__init__(f"cache: {producer}'s output {output} (object {sha[:16]}) failed its sha256 check")
        self.producer, self.fingerprint, self.sha, self.output = producer, fingerprint, sha, output


# a corrupt object makes its op run again; more rounds than this means the cache's disk itself is failing
MAX_REPAIR_ROUNDS = 3


def feeds_a_worker(plan: Plan) -> set[str]:
    """Ops a toolchain-environment op waits for (directly or not): they start first, so the long worker
    run starts as early as it can and host-only work (the PyTorch reference, checks) fills in beside it."""
    by_id = {op.id: op for op in plan.ops}
    needed: set[str] = set()
    stack = [ref.op for op in plan.ops if op.env != "host" for ref in op.inputs.values() if ref.op]
    while stack:
        op_id = stack.pop()
        if op_id not in needed:
            needed.add(op_id)
            stack.extend(ref.op for ref in by_id[op_id].inputs.values() if ref.op)
    return needed


def start_order(plan: Plan) -> list[Op]:
    """Toolchain-worker ops first (the long compile), then what they wait for, then the rest; else plan order."""
    feeding = feeds_a_worker(plan)
    return sorted(plan.ops, key=lambda op: 0 if op.env != "host" else 1 if op.id in feeding else 2)


def in_interpreter(op: Op) -> bool:
    """Runs in this interpreter: everything but a toolchain-environment worker (its own process) and the
    ops engine.child runs. A hand-off op is host code too (it traces and serializes with torch here)."""
    return registry.environment(op.env) is None and not runs_in_child(op)


def ready_to_start(pending: list[Op], running: list[Op], produced: set[str], jobs: int) -> list[Op]:
    """The ops to start now, in `pending`'s order: inputs produced, at most `jobs` running in all,
    and at most one op in this interpreter at a time. Those share its lock (the GIL) and torch /
    onnxruntime already use every core, so two at once each take about twice as long (measured);
    a toolchain worker and the numpy/Pillow ops run in processes of their own, beside them."""
    chosen: list[Op] = []
    busy = any(in_interpreter(op) for op in running)
    for op in pending:
        if len(running) + len(chosen) >= jobs:
            break
        if busy and in_interpreter(op):
            continue
        if all(r.op in produced for r in op.inputs.values() if r.op):
            chosen.append(op)
            busy = busy or in_interpreter(op)
    return chosen


def max_jobs() -> int:
    """How many ops may run at once (YOLOBUILD_JOBS, default 2: a toolchain worker and host work)."""
    value = os.environ.get("YOLOBUILD_JOBS", "2")
    try:
        return max(1, int(value))
    except ValueError:
        raise UserError(f"YOLOBUILD_JOBS: {value!r} is not a whole number; allowed: 1, 2, ...") from None


class Runner:
    def __init__(self, cache: Cache, previous_keys: dict[str, dict] | None = None,
                 on_op: Callable[[OpRecord], None] | None = None, progress: Callable[[str], None] = print,
                 on_event: Callable[[str, OpRecord], None] | None = None):
        """`on_op(rec)`: an op finished (ran, cached or failed). `on_event(kind, rec)`: "start" when an op
        begins to run, "progress" when it reports per-image progress (rec.progress), for a live view."""
        self.cache = cache
        self.progress = progress
        self.previous = previous_keys or {}
        self.on_op = on_op or (lambda rec: None)
        self.on_event = on_event
        self._report_lock = threading.Lock()

    # -- hashing inputs ------------------------------------------------------------------------
    def _hash_ref(self, ref: Ref, produced: dict[str, OpRecord]) -> str:
        if ref.op:
            return produced[ref.op].outputs[ref.output]["sha256"]
        if ref.kind == "unset":
            raise UserError("model.weights is not set")
        path = Path(ref.path)
        if ref.kind == "images":
            from ..runtime.images import list_images

            if path.is_dir():
                return sha256_tree(path, self.cache.hash_file)
            h = hashlib.sha256(self.cache.hash_file(path).encode())
            for image in list_images(path):
                h.update(self.cache.hash_file(image).encode())
            return h.hexdigest()
        if not path.is_file():
            raise UserError(f"{path}: input file is missing")
        return self.cache.hash_file(path)

    def _input_path(self, ref: Ref, produced: dict[str, OpRecord], link_dir: Path | None = None) -> Path:
        """An input's path; a cached object is shown under its output name (tools check suffixes).

        The object is checked against its sha256 first: an op never reads bytes the key did not name."""
        if not ref.op:
            return Path(ref.path)
        producer = produced[ref.op]
        sha = producer.outputs[ref.output]["sha256"]
        if not self.cache.object_intact(sha):
            raise CorruptObject(ref.op, producer.fingerprint or "", sha, ref.output)
        obj = self.cache.object_path(sha)
        if link_dir is None:
            return obj
        link = link_dir / ref.output
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(obj, target_is_directory=obj.is_dir())
        return link

    def key_for(self, op: Op, produced: dict[str, OpRecord], install: bool = True) -> dict[str, Any]:
        inputs = {slot: self._hash_ref(ref, produced) for slot, ref in op.inputs.items()}
        return op_key(op, inputs, env_tool_versions(op, install, self.progress))

    def dry_run(self, plan: Plan) -> list[OpRecord]:
        """Fingerprints as far as the cache can resolve them, without running anything.

        An op whose inputs come from an op that has not run yet has no fingerprint until
        then: its key holds the other op's output hash (early cut-off), not a guess.
        """
        records, produced = [], {}
        for op in plan.ops:
            rec = OpRecord(op)
            records.append(rec)
            waiting = [r.op for r in op.inputs.values() if r.op and r.op not in produced]
            if waiting:
                rec.reason = f"fingerprint known after {waiting[0]} runs"
                continue
            try:
                rec.key = self.key_for(op, produced, install=False)
            except (YolobuildError, OSError) as exc:
                rec.reason = str(exc)
                continue
            rec.fingerprint = fingerprint(rec.key)
            entry = self.cache.lookup(rec.fingerprint)
            if entry:
                rec.status, rec.reason, rec.outputs = "cached", "fingerprint found in cache", entry.outputs
                produced[op.id] = rec
            else:
                rec.reason = "will run: " + explain(rec.key, self.previous.get(op.id))
        return records

    # -- running -------------------------------------------------------------------------------
    def run(self, plan: Plan) -> Execution:
        """Run the plan; where a cached object turns out corrupt, quarantine it, forget the entry that
        named it and run the plan again (every other op is a cache hit), so the op that made it reruns."""
        events: list[dict[str, Any]] = []
        for _ in range(MAX_REPAIR_ROUNDS + 1):
            ex = self._run_once(plan)
            if not isinstance(ex.error, CorruptObject):
                ex.cache_events = events
                return ex
            events.append(self.repair(ex.error))
        ex.cache_events = events
        return ex

    def repair(self, bad: CorruptObject) -> dict[str, Any]:
        self.cache.quarantine(bad.sha, f"{bad.producer}.{bad.output} failed its sha256 check")
        if bad.fingerprint:
            self.cache.drop_entry(bad.fingerprint)
        event = {"op": bad.producer, "output": bad.output, "object": bad.sha,
                 "action": "quarantined; the op ran again"}
        self.progress(f"warning: the cached {bad.output} of {bad.producer} failed its sha256 check: "
                      f"quarantined, {bad.producer} runs again")
        return event

    def _run_once(self, plan: Plan) -> Execution:
        """Run the plan's ops as their inputs become ready, up to `max_jobs()` at a time.

        A toolchain worker's compile (a separate process) and host ops such as the PyTorch
        reference run side by side; ops in this interpreter run one at a time (see ready_to_start),
        the numpy/Pillow ones in a child process of their own (engine.child). After a failure
        or an interrupt nothing new starts; ops already running finish (or stop with their
        worker) and every finished op stays cached."""
        records = {op.id: OpRecord(op) for op in plan.ops}
        produced: dict[str, OpRecord] = {}
        pending = start_order(plan)
        running: dict[Future, Op] = {}
        error: YolobuildError | None = None
        interrupted = False
        jobs = max_jobs()
        self._t0 = time.perf_counter()
        blas = one_blas_thread()
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="yolobuild-op")
        try:
            while pending or running:
                if error is None and not interrupted:
                    for op in ready_to_start(pending, list(running.values()), set(produced), jobs):
                        pending.remove(op)
                        running[pool.submit(self._run_one, op, records[op.id], dict(produced))] = op
                if not running:
                    break
                try:
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    interrupted = True
                    continue
                for future in done:
                    op = running.pop(future)
                    exc = future.exception()
                    if exc is None:
                        produced[op.id] = records[op.id]
                    elif isinstance(exc, KeyboardInterrupt):
                        interrupted = True
                    elif isinstance(exc, YolobuildError):
                        error = error or exc
                    else:
                        raise exc
        except KeyboardInterrupt:   # a second Ctrl-C while ops were finishing
            interrupted = True
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            blas.restore_original_limits()
            from .child import stop as stop_child

            stop_child()
        started = [records[op.id] for op in plan.ops if records[op.id].status != "pending"]
        if interrupted:
            return Execution(started, interrupted=True)
        return Execution(started, error=error)

    def _run_one(self, op: Op, rec: OpRecord, produced: dict[str, OpRecord]) -> None:
        """One op: fingerprint, cache lookup under the entry's lock, run on a miss."""
        try:
            rec.status = "running"
            rec.started = round(time.perf_counter() - self._t0, 3)
            rec.key = self.key_for(op, produced)
            rec.fingerprint = fingerprint(rec.key)
            entry = self.cache.lookup(rec.fingerprint)
            ran = False
            if entry is None:
                self.cache.ensure_writable()
                with self.cache.lock(rec.fingerprint):
                    # a concurrent build may have made it; else cache.remote may hold it
                    entry = self.cache.lookup(rec.fingerprint) or self.cache.pull(rec.fingerprint)
                    if entry is None:
                        rec.reason = explain(rec.key, self.previous.get(op.id))
                        entry = self._execute(op, rec, produced)
                        rec.status, ran = ("handoff" if op.kind == "handoff" else "ran"), True
                if ran:
                    self.cache.push(entry)   # to cache.remote, if one is set
            if not ran:
                rec.status = "cached"
                rec.reason = "pulled from cache.remote" if entry.origin == "remote" else "fingerprint found in cache"
                rec.seconds = entry.record.get("seconds", 0.0)
            rec.outputs, rec.results = entry.outputs, entry.record.get("results", {})
        except KeyboardInterrupt:
            rec.status, rec.reason = "failed", "interrupted"
            self._report(rec)
            raise
        except CorruptObject:
            rec.status = "pending"   # not this op's failure: run() repairs the cache and runs it again
            raise
        except YolobuildError as exc:
            rec.status, rec.reason = "failed", str(exc)
            self._report(rec)
            raise
        self._report(rec)

    def _report(self, rec: OpRecord) -> None:
        with self._report_lock:
            self.on_op(rec)

    def _event(self, kind: str, rec: OpRecord) -> None:
        if self.on_event is None:
            return
        try:
            with self._report_lock:
                self.on_event(kind, rec)
        except Exception:   # a view that fails to draw must never fail the build
            pass

    def _progress_to(self, rec: OpRecord) -> Callable[[int, int, str], None]:
        """The op's ctx.progress: the figures go on its record and out as a "progress" event (nobody
        listening: progress.ignore, and an op in another process is handed no progress file to write)."""
        if self.on_event is None:
            return ignore

        def progress(done: int, total: int, what: str) -> None:
            rec.progress = {"done": int(done), "total": int(total), "what": str(what), "at": time.time()}
            self._event("progress", rec)

        return progress

    def _execute(self, op: Op, rec: OpRecord, produced: dict[str, OpRecord]) -> Entry:
        from ..ops import OpContext

        tmp = self.cache.new_tmp(rec.fingerprint)
        try:
            out_dir = tmp / "out"
            out_dir.mkdir()
            ctx = OpContext(op_id=op.id, kind=op.kind, params=json.loads(json.dumps(op.params)),
                            inputs={k: self._input_path(r, produced, tmp / "inputs" / k) for k, r in op.inputs.items()},
                            outputs={name: out_dir / name for name in op.outputs},
                            scratch=tmp / "scratch",
                            log_file=self.cache.root / "logs" / f"{op.id}-{rec.fingerprint[:16]}.log",
                            progress=self._progress_to(rec))
            ctx.scratch.mkdir()
            rec.log = ctx.log_file
            rec.began = time.time()
            self._event("start", rec)
            start = time.perf_counter()
            try:
                implementation(op)(ctx)
            except YolobuildError:
                rec.results = ctx.results
                raise
            except (KeyboardInterrupt, MemoryError):
                raise
            except OSError as exc:
                raise machine_error(exc, f"while {op.id} ran") or ToolchainError(
                    f"{op.id}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # a crash inside an op or a tool: exit 3, with what crashed
                rec.results = ctx.results
                raise ToolchainError(f"{op.id}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
            rec.seconds = round(time.perf_counter() - start, 3)
            missing = [n for n, p in ctx.outputs.items() if not p.exists()]
            if missing:
                raise ToolchainError(f"{op.id}: op finished without writing {', '.join(missing)}")
            return self.cache.store(rec.fingerprint, ctx.outputs,
                                    {"kind": op.kind, "key": rec.key, "results": ctx.results, "seconds": rec.seconds})
        finally:
            self.cache.clean_tmp(tmp)
