"""The cached engine: fingerprints, explanations, atomic entries, locking, early cut-off.

Uses tiny test-only op kinds (registered into the op table for the test) so the cache
mechanics are checked without torch in the loop.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from yolobuild.engine.cache import Cache
from yolobuild.engine.runner import Runner
from yolobuild.errors import CheckFailed
from yolobuild.ops import OP_KINDS, OpKind
from yolobuild.plan.ir import Op, Plan, Ref

COUNTER_ENV = "YOLOBUILD_TEST_COUNTER"


def _count(name: str) -> None:
    path = os.environ.get(COUNTER_ENV)
    if path:
        with open(path, "a") as f:
            f.write(name + "\n")


def op_write(ctx):
    """Writes params['text'] (ignores params['noise'], so outputs can stay identical)."""
    _count(ctx.op_id)
    time.sleep(ctx.params.get("sleep", 0))
    ctx.outputs["out.txt"].write_text(ctx.params["text"])


def op_upper(ctx):
    _count(ctx.op_id)
    ctx.outputs["out.txt"].write_text(ctx.inputs["src"].read_text().upper())
    ctx.results["length"] = len(ctx.inputs["src"].read_text())


def op_folder(ctx):
    _count(ctx.op_id)
    d = ctx.outputs["dir"]
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.txt").write_text(ctx.inputs["src"].read_text())


def op_interrupt(ctx):
    ctx.outputs["out.txt"].write_text("half")
    raise KeyboardInterrupt


def op_fail(ctx):
    _count(ctx.op_id)
    ctx.results["parity"] = {"boxes": {"cosine": 0.5, "max_abs": 3.0}}
    raise CheckFailed("parity: boxes cosine 0.5 < 0.99")


def op_crash(ctx):
    raise RuntimeError("segfault-like crash in a tool")


def op_blas(ctx):
    """Writes the thread counts of the BLAS libraries loaded in the op's process, as threadpoolctl reads them."""
    from threadpoolctl import threadpool_info

    ctx.outputs["out.txt"].write_text(json.dumps([i["num_threads"] for i in threadpool_info()
                                                  if i["user_api"] == "blas"]))


TEST_KINDS = {
    "t_write": op_write, "t_upper": op_upper, "t_folder": op_folder,
    "t_interrupt": op_interrupt, "t_fail": op_fail, "t_crash": op_crash, "t_blas": op_blas,
}


@pytest.fixture(autouse=True)
def test_kinds(monkeypatch):
    for kind in TEST_KINDS:
        monkeypatch.setitem(OP_KINDS, kind, OpKind(f"{__name__}:op_{kind[2:]}", 1, ("numpy",)))


@pytest.fixture
def counter(tmp_path, monkeypatch):
    path = tmp_path / "ran.txt"
    monkeypatch.setenv(COUNTER_ENV, str(path))
    return lambda: path.read_text().split() if path.exists() else []


def make_plan(text="hello", noise=0, tail="t_upper", sleep=0.0):
    return Plan("test", (
        Op("first", "t_write", {"text": text, "noise": noise, "sleep": sleep}, {}, ("out.txt",), tools=("numpy",)),
        Op("second", tail, {}, {"src": Ref("first", "out.txt")}, ("out.txt",) if tail != "t_folder" else ("dir",),
           tools=("numpy",)),
    ), "compiled")


def test_rebuild_runs_nothing_and_reuses_outputs(tmp_path, counter):
    cache = Cache(tmp_path / "c")
    ex1 = Runner(cache).run(make_plan())
    assert [r.status for r in ex1.records] == ["ran", "ran"]
    ex2 = Runner(cache).run(make_plan())
    assert [r.status for r in ex2.records] == ["cached", "cached"]
    assert counter() == ["first", "second"]
    out = cache.object_path(ex2.records[1].outputs["out.txt"]["sha256"])
    assert out.read_text() == "HELLO"
    assert ex2.records[1].results == {"length": 5}  # figures come back from the cache too


def test_fingerprint_uses_full_sha256_and_tool_versions(tmp_path):
    cache = Cache(tmp_path / "c")
    ex = Runner(cache).run(make_plan())
    rec = ex.records[0]
    assert len(rec.fingerprint) == 64
    import numpy
    assert rec.key["tools"]["numpy"] == numpy.__version__


def test_reason_names_the_changed_param(tmp_path):
    cache = Cache(tmp_path / "c")
    first = Runner(cache).run(make_plan(text="a"))
    previous = {r.op.id: r.key for r in first.records}
    ex = Runner(cache, previous).run(make_plan(text="b"))
    assert ex.records[0].reason == 'param text changed: "a" -> "b"'
    assert ex.records[1].reason.startswith("input src changed:")


def test_early_cutoff_when_upstream_output_is_unchanged(tmp_path, counter):
    cache = Cache(tmp_path / "c")
    Runner(cache).run(make_plan(noise=0))
    ex = Runner(cache).run(make_plan(noise=1))  # first reruns, writes the same bytes
    assert [r.status for r in ex.records] == ["ran", "cached"]
    assert counter() == ["first", "second", "first"]


def test_folder_outputs_are_content_addressed(tmp_path):
    cache = Cache(tmp_path / "c")
    ex = Runner(cache).run(make_plan(tail="t_folder"))
    obj = cache.object_path(ex.records[1].outputs["dir"]["sha256"])
    assert (obj / "sub" / "a.txt").read_text() == "hello"
    assert ex.records[1].outputs["dir"]["kind"] == "dir"


def test_interrupt_leaves_no_entry_and_no_temp(tmp_path):
    cache = Cache(tmp_path / "c")
    ex = Runner(cache).run(make_plan(tail="t_interrupt"))
    assert ex.interrupted
    assert ex.records[0].status == "ran" and ex.records[1].status == "failed"
    entries = list((cache.root / "entries").rglob("*.json"))
    assert len(entries) == 1  # only the finished op
    assert list((cache.root / "tmp").iterdir()) == []
    # the finished op is reused next time
    ex2 = Runner(cache).run(make_plan())
    assert ex2.records[0].status == "cached"


def test_failures_are_never_cached(tmp_path, counter):
    cache = Cache(tmp_path / "c")
    for _ in range(2):
        ex = Runner(cache).run(make_plan(tail="t_fail"))
        assert isinstance(ex.error, CheckFailed)
        assert ex.records[1].results["parity"]["boxes"]["cosine"] == 0.5
    assert counter().count("second") == 2


def test_a_crashing_op_becomes_a_toolchain_error(tmp_path):
    from yolobuild.errors import ToolchainError

    ex = Runner(Cache(tmp_path / "c")).run(make_plan(tail="t_crash"))
    assert isinstance(ex.error, ToolchainError)
    assert "RuntimeError: segfault-like crash in a tool" in str(ex.error)


def test_corrupted_cache_object_is_a_miss(tmp_path, counter):
    cache = Cache(tmp_path / "c")
    ex = Runner(cache).run(make_plan())
    obj = cache.object_path(ex.records[1].outputs["out.txt"]["sha256"])
    obj.unlink()
    ex2 = Runner(cache).run(make_plan())
    assert [r.status for r in ex2.records] == ["cached", "ran"]


def _build_in_process(cache_root: str, counter_path: str) -> None:
    os.environ[COUNTER_ENV] = counter_path
    for kind in TEST_KINDS:
        OP_KINDS[kind] = OpKind(f"{__name__}:op_{kind[2:]}", 1, ("numpy",))
    Runner(Cache(Path(cache_root))).run(make_plan(text="shared", sleep=1.0))


def test_concurrent_builds_share_the_cache_and_run_each_op_once(tmp_path):
    counter_path = tmp_path / "ran.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path / "c"), str(counter_path))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(counter_path.read_text().split()) == ["first", "second"]


def test_external_file_hash_is_memoised_by_stat(tmp_path):
    cache = Cache(tmp_path / "c")
    cache.ensure_writable()
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    first = cache.hash_file(f)
    assert first == cache.hash_file(f)
    f.write_bytes(b"abcd")
    assert cache.hash_file(f) != first


def test_entry_files_are_complete_json(tmp_path):
    cache = Cache(tmp_path / "c")
    Runner(cache).run(make_plan())
    for entry in (cache.root / "entries").rglob("*.json"):
        body = json.loads(entry.read_text())
        assert body["outputs"] and body["key"]["kind"] in ("t_write", "t_upper")


# --------------------------------------------------------------------------- scheduling

def op_pid(ctx):
    """Writes the id of the process it ran in."""
    ctx.outputs["out.txt"].write_text(str(os.getpid()))
    ctx.results["pid"] = os.getpid()


def op_refuse(ctx):
    from yolobuild.errors import UserError

    raise UserError("dataset.calib.path: /nowhere holds no images", ["dataset.calib.path: empty", "second line"])


def test_numpy_ops_run_in_a_child_process_and_their_user_errors_come_back_whole(tmp_path, monkeypatch):
    from yolobuild.errors import UserError

    monkeypatch.setitem(OP_KINDS, "t_pid", OpKind(f"{__name__}:op_pid", 1, ("numpy",), own_process=True))
    monkeypatch.setitem(OP_KINDS, "t_refuse", OpKind(f"{__name__}:op_refuse", 1, ("numpy",), own_process=True))
    ex = Runner(Cache(tmp_path / "c")).run(Plan("t", (Op("a", "t_pid", {}, {}, ("out.txt",)),), "compiled"))
    assert ex.error is None and ex.records[0].status == "ran"
    assert ex.records[0].results["pid"] != os.getpid()
    ex = Runner(Cache(tmp_path / "c")).run(Plan("t", (Op("b", "t_refuse", {}, {}, ("out.txt",)),), "compiled"))
    assert isinstance(ex.error, UserError) and ex.error.exit_code == 2
    assert ex.error.lines == ["dataset.calib.path: empty", "second line"]


def _op(op_id, kind="t_write", env="host", needs=()):
    return Op(op_id, kind, {}, {n: Ref(n, "out.txt") for n in needs}, ("out.txt",), env=env)


def test_the_worker_op_starts_before_host_checks_and_host_ops_take_turns(monkeypatch):
    from yolobuild.engine.runner import ready_to_start, start_order

    monkeypatch.setitem(OP_KINDS, "t_pid", OpKind(f"{__name__}:op_pid", 1, ("numpy",), own_process=True))
    export, data = _op("export"), _op("data", kind="t_pid")
    check = _op("check", needs=("export",))                       # reads export, feeds no worker
    compile_ = _op("compile", kind="compile", env="rknn-toolkit2", needs=("export", "data"))
    order = start_order(Plan("t", (export, data, check, compile_), "compiled"))
    assert [op.id for op in order] == ["compile", "export", "data", "check"]
    # at the start: the in-interpreter export and the child-process data op together
    assert [op.id for op in ready_to_start(order, [], set(), jobs=2)] == ["export", "data"]
    # both done: the compile goes first, and the check beside it
    assert [op.id for op in ready_to_start([compile_, check], [], {"export", "data"}, jobs=2)] == ["compile", "check"]
    # two in-interpreter ops never run at once, even with slots free
    other = _op("other")
    assert [op.id for op in ready_to_start([check, other], [export], {"export"}, jobs=4)] == []
    assert [op.id for op in ready_to_start([check, other], [], {"export"}, jobs=4)] == ["check"]
    # a hand-off op is host code (torch serialization in this interpreter): it takes its turn too
    handoff = _op("handoff", kind="handoff", env="handoff", needs=("export",))
    assert [op.id for op in ready_to_start([handoff], [check], {"export"}, jobs=4)] == []


def test_ops_see_one_blas_thread_and_the_limit_ends_with_the_run(tmp_path):
    """numpy's OpenBLAS called from two op threads at once can spin for good: while a build's ops run, every
    BLAS library loaded is held to one thread; after the run the caller's own setting is back."""
    import numpy  # noqa: F401  (its OpenBLAS loaded, as in any build)
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert before, "numpy brought no BLAS library threadpoolctl can see"
    plan = Plan("test", (Op("blas", "t_blas", {}, {}, ("out.txt",), tools=("numpy",)),), "compiled")
    cache = Cache(tmp_path / "c")
    ex = Runner(cache).run(plan)
    seen = json.loads(cache.object_path(ex.records[0].outputs["out.txt"]["sha256"]).read_text())
    assert seen == [1] * len(before)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
