"""Progress of per-image work while a build runs: the ops report it (in this interpreter, in the
helper process, in a toolchain worker and the processes it starts), the engine turns it into events,
the terminal shows a live view (plain lines when not a terminal), sweep jobs leave status files the
sweep's view reads, and none of it reaches a fingerprint, a cached output or the manifest."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from yolobuild import live
from yolobuild.sweep.status import JobStatus, read_statuses
from yolobuild.sweep.watch import SweepView, outcome_line

from .conftest import cli_in_process

SMALL = ("recipe=demo", "target=onnxruntime", "precision=int8", "input.height=96", "input.width=96",
         "dataset.generator.eval_count=8", "dataset.generator.calib_count=8", "dataset.calib.count=8",
         "check.parity_images=2", "benchmark.enabled=false")
EVAL_IMAGES = 8     # dataset.generator.eval_count above: every generated eval image is evaluated


def _build(root: Path, name: str, *extra: str):
    return cli_in_process(*SMALL, *extra, f"workspace.path={root / name / 'ws'}", f"cache.dir={root / name / 'cache'}")


def _manifest(root: Path, name: str) -> dict:
    return json.loads(next((root / name / "ws").glob("demo_onnxruntime_int8_96x96*/manifest.json")).read_text())


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """One small build with progress shown (its events recorded, a progress line for every report),
    the same build with YOLOBUILD_PROGRESS=0, each in a cache of its own so every op runs in both."""
    root = tmp_path_factory.mktemp("progress")
    events: list[tuple[str, str, dict | None]] = []
    real = live.BuildView.on_event

    def recording(self, kind, rec):
        events.append((kind, rec.op.id, dict(rec.progress) if rec.progress else None))
        real(self, kind, rec)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(live.BuildView, "on_event", recording)
        mp.setattr(live, "PLAIN_INTERVAL", 0.0)   # a line for every report: these ops take seconds
        mp.delenv("YOLOBUILD_PROGRESS", raising=False)
        shown = _build(root, "shown")
        mp.setenv("YOLOBUILD_PROGRESS", "0")
        off_events = len(events)
        off = _build(root, "off")
        assert len(events) == off_events, "YOLOBUILD_PROGRESS=0: no op reports progress"
    return root, events, shown, off


def test_evaluate_reports_every_eval_image(two_builds):
    root, events, (code, _, err), _ = two_builds
    assert code == 0, err
    evaluate = [p for kind, op, p in events if op == "evaluate" and kind == "progress"]
    built = [p for p in evaluate if p["what"] == "eval images, built"]
    assert built[-1]["done"] == built[-1]["total"] == EVAL_IMAGES
    assert [p["done"] for p in built] == sorted(p["done"] for p in built)   # counts up, never back
    assert _manifest(root, "shown")["metrics"]["images"] == EVAL_IMAGES
    last = {op: p for kind, op, p in events if kind == "progress"}
    # the helper process (letterboxing) and the host ops report through their own channels too
    assert last["calibrate"] == {**last["calibrate"], "done": 8, "total": 8, "what": "calibration images letterboxed"}
    assert (last["quantize"]["what"], last["quantize"]["done"]) == ("calibration images", 8)
    assert (last["simulate"]["what"], last["simulate"]["done"], last["simulate"]["total"]) == ("probe images", 8, 8)
    starts = [op for kind, op, _ in events if kind == "start"]
    assert len(starts) == len(set(starts)) and "evaluate" in starts


def test_plain_output_carries_progress_lines(two_builds):
    _, _, (_, out, _), (_, off_out, _) = two_builds
    lines = [line for line in out.splitlines() if "running" in line]
    assert any(line.split()[0] == "evaluate" and f"eval images, built {EVAL_IMAGES}/{EVAL_IMAGES}" in line
               for line in lines), out
    assert "\x1b[" not in out                      # not a terminal: no live view, no escape codes
    assert not [line for line in off_out.splitlines() if " running " in line]   # YOLOBUILD_PROGRESS=0


def test_progress_changes_no_fingerprint_output_or_manifest(two_builds):
    root, _, _, (code, _, err) = two_builds
    assert code == 0, err
    shown, off = _manifest(root, "shown"), _manifest(root, "off")
    assert all(op["status"] == "ran" for op in shown["ops"] + off["ops"])
    fingerprints = lambda m: {op["id"]: op["fingerprint"] for op in m["ops"]}   # noqa: E731
    outputs = lambda m: {op["id"]: {k: v["sha256"] for k, v in op["outputs"].items()} for op in m["ops"]}  # noqa: E731
    assert fingerprints(shown) == fingerprints(off) and outputs(shown) == outputs(off)
    text = json.dumps(shown)
    assert "eval images" not in text and '"progress"' not in text


# --------------------------------------------------------------------------- the worker protocol

def test_a_worker_and_the_process_it_starts_report_while_running(tmp_path, monkeypatch):
    from .test_toolchain_env import FAKE, WORKER, ctx_for, declare
    from yolobuild.toolchains import envs

    monkeypatch.setenv("YOLOBUILD_TOOLCHAINS", str(tmp_path / "toolchains"))
    declare(monkeypatch, FAKE)
    envs.install(FAKE, progress=lambda m: None)
    heard: list[tuple[int, int, str, float]] = []
    ctx = ctx_for(tmp_path)
    ctx.progress = lambda done, total, what: heard.append((done, total, what, time.time()))
    started = time.time()
    result = envs.call_in_env(ctx, "fake-env", f"{WORKER}:slow_loop", {"images": 6, "pause": 0.6})
    ended = time.time()
    assert result["images"] == 6
    assert heard[-1][:3] == (6, 6, "simulator images")          # from the grandchild process
    assert [h[0] for h in heard] == sorted(h[0] for h in heard)
    assert len(heard) >= 3 and heard[0][3] < ended - 1.0           # heard while the worker still ran
    assert started <= heard[0][3]


# --------------------------------------------------------------------------- the terminal

def _rec(op_id: str, began: float, progress=None, status="ran", seconds=0.0, reason="no cache entry"):
    return SimpleNamespace(op=SimpleNamespace(id=op_id), began=began, progress=progress, status=status,
                           seconds=seconds, reason=reason)


def _terminal():
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=110, color_system=None), buf


def test_live_view_shows_the_running_op_its_images_and_an_eta():
    console, buf = _terminal()
    now = [100.0]
    view = live.BuildView(lambda text: None, "demo_onnxruntime_int8_320x320", 17, console=console, clock=lambda: now[0])
    rec = _rec("simulate", began=100.0)
    view.on_event("start", rec)
    rec.progress = {"done": 10, "total": 100, "what": "simulator images", "at": 110.0}
    now[0] = 110.0
    view.on_event("progress", rec)
    rec.progress = {"done": 37, "total": 100, "what": "simulator images", "at": 137.0}
    now[0] = 137.0
    view.on_event("progress", rec)
    console.print(view.render())
    shown = buf.getvalue()
    # 27 images in 27 s since the first report: 63 images left, 63 s
    assert "simulator images 37/100, ETA 1m03s" in shown and "simulate" in shown and "37s" in shown
    assert "0 of 17 ops done, 1 running" in shown
    now[0] = 147.0   # ten seconds later, no new report: the ETA counts down
    console.print(view.render())
    assert "ETA 53s" in buf.getvalue()


def test_live_view_runs_on_a_terminal_and_prints_finished_ops_above_it():
    console, buf = _terminal()
    view = live.BuildView(lambda text: None, "demo", 2, console=console)
    with view:
        rec = _rec("evaluate", began=time.time(), progress={"done": 3, "total": 8, "what": "eval images", "at": time.time()})
        view.on_event("start", rec)
        view.on_event("progress", rec)
        time.sleep(0.6)   # a few refreshes of the live region
        view.on_op(_rec("evaluate", time.time(), status="ran", seconds=1.5))
        view.on_op(_rec("export_onnx", time.time(), status="cached", seconds=41.2))
    text = buf.getvalue()
    assert "eval images 3/8" in text and "evaluate           ran" in text
    assert "export_onnx        cached   saved 41.2 s" in text   # a cached op: the time it saved


def test_a_pipe_gets_no_live_view(monkeypatch):
    assert live.terminal_console(io.StringIO()) is None
    tty = SimpleNamespace(isatty=lambda: True, write=lambda s: None, flush=lambda: None)
    monkeypatch.setenv("YOLOBUILD_PROGRESS", "0")
    assert live.terminal_console(tty) is None


def test_plain_lines_at_most_once_per_interval():
    said: list[str] = []
    now = [0.0]
    view = live.BuildView(said.append, "demo", 3, clock=lambda: now[0])
    rec = _rec("calibrate", began=0.0)
    view.on_event("start", rec)
    for i in range(1, 101):      # a report every 0.5 s for 50 s
        now[0] = i * 0.5
        rec.progress = {"done": i, "total": 100, "what": "calibration images", "at": now[0]}
        view.on_event("progress", rec)
    progress_lines = [s for s in said if "calibration images" in s]
    assert 4 <= len(progress_lines) <= 5, said          # 50 s at one line per 10 s
    assert progress_lines[0].split()[:2] == ["calibrate", "running"]


# --------------------------------------------------------------------------- sweeps

def test_sweep_status_files_are_written_and_read_back_by_the_view(tmp_path):
    sweep = tmp_path / "sweep"
    done = JobStatus(sweep / "jobs" / "0", 0, ["precision=fp32"])
    done.begin("demo_onnxruntime_fp32_96x96", 2)
    done.on_op(_rec("export_onnx", 1.0, status="cached"))
    done.on_op(_rec("compile", 1.0, status="ran"))
    done.finish({"status": "compiled", "seconds": 12.0, "build_dir": "ws/demo_onnxruntime_fp32_96x96"})
    running = JobStatus(sweep / "jobs" / "1", 1, ["precision=int8"])
    running.begin("demo_onnxruntime_int8_96x96", 17)
    now = time.time()
    rec = _rec("simulate", began=now - 30, progress={"done": 4, "total": 10, "what": "simulator images", "at": now})
    running.on_event("start", rec)
    running.write(force=True)
    failed = JobStatus(sweep / "jobs" / "2", 2, ["target=mlu220", "precision=fp32"])
    failed.finish({"status": "failed", "reason": "precision.name: 'fp32' is not supported by target mlu220"})

    statuses = read_statuses(sweep)
    assert [s["state"] for s in statuses] == ["done", "running", "failed"]
    assert statuses[0]["ran"] == 1 and statuses[0]["cached"] == 1 and statuses[1]["running"]["simulate"]["progress"]["done"] == 4
    console, buf = _terminal()
    view = SweepView(sweep, console, jobs=4)
    with view:
        time.sleep(0.3)
    text = buf.getvalue()
    assert "1 done, 1 running, 1 failed of 4" in text
    assert "[1] precision=int8  0/17 ops  simulate 30s simulator images 4/10, ETA" in text
    assert outcome_line(statuses[2]) in text and "[0] precision=fp32: compiled" in text


def test_a_sweep_leaves_a_status_file_per_job(two_builds):
    """A real sweep (the basic launcher, in this process) over the cache the shown build filled."""
    root = two_builds[0]
    code, out, err = cli_in_process("--multirun", *SMALL[:2], "precision=fp32,int8", *SMALL[3:],
                                    f"workspace.path={root / 'shown' / 'ws'}", f"cache.dir={root / 'shown' / 'cache'}")
    assert code == 0, err
    sweep = root / "shown" / "ws" / "sweeps" / "latest"
    statuses = read_statuses(sweep)
    assert [s["state"] for s in statuses] == ["done", "done"]
    for status in statuses:
        manifest = json.loads((Path(status["build_dir"]) / "manifest.json").read_text())
        assert status["build"] == manifest["build"] and status["ops"] == status["done"] == len(manifest["ops"])
        assert status["cached"] == sum(op["status"] == "cached" for op in manifest["ops"])
    assert statuses[1]["ran"] == 0   # the int8 job is the shown build: every op cached
    console, buf = _terminal()
    with SweepView(sweep, console, jobs=2):
        pass
    assert "2 done, 0 running, 0 failed of 2" in buf.getvalue()
