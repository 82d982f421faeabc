"""Builds that are killed, run side by side, or read a damaged cache lose nothing and serve nothing wrong.

Marked `reliability` (slow: many real builds); CI runs them with `pytest -m reliability`.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yolobuild.engine.cache import sha256_file

from .conftest import build_dir

pytestmark = pytest.mark.reliability

BUILD = "demo_onnxruntime_int8_320x320"
ARGS = ("precision=int8", "dataset.generator.calib_count=8", "dataset.calib.count=8",
        "dataset.generator.eval_count=8", "check.parity_images=2")
ARTIFACTS = ("model.onnx", "model.ort.onnx", "parity.json", "metrics.json", "model.json")


def _start(tmp: Path, cache: Path, ws: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "yolobuild", *ARGS, f"workspace.path={ws}", f"cache.dir={cache}"],
                            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _group_alive(pgid: int) -> list[int]:
    """pids still in the build's process group (helper processes included)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    alive.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return alive


def _verify(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yolobuild", "cache", "verify", f"cache.dir={cache}"],
                          capture_output=True, text=True, timeout=300)


def _artifacts(build: Path) -> dict[str, str]:
    return {name: sha256_file(build / name) for name in ARTIFACTS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The same build, never interrupted, in a cache of its own."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = _start(tmp, tmp / "cache", tmp / "ws")
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()
    return _artifacts(build_dir(tmp / "ws", BUILD))


def test_ten_sigkills_at_random_points_then_resume_byte_identical(tmp_path, reference):
    rng = random.Random(7)
    cache, ws = tmp_path / "cache", tmp_path / "ws"
    kills = 0
    for trial in range(10):
        proc = _start(tmp_path, cache, ws)
        time.sleep(rng.uniform(0.3, 6.0))
        if proc.poll() is not None:      # finished (everything cached by now): start over from a clean cache
            continue
        os.kill(proc.pid, signal.SIGKILL)     # the build's own process only: its helpers must follow it
        proc.wait()
        kills += 1
        time.sleep(2.0)
        left = _group_alive(proc.pid)
        for pid in left:                   # leave nothing running for the next trial, then fail
            os.kill(pid, signal.SIGKILL)
        assert not left, f"trial {trial}: helper processes outlived the killed build"
        r = _verify(cache)
        assert r.returncode == 0 and r.stdout.strip().endswith("clean"), r.stdout + r.stderr
    assert kills >= 5
    proc = _start(tmp_path, cache, ws)
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()
    assert _artifacts(build_dir(ws, BUILD)) == reference
    assert not list((cache / "tmp").glob("*"))                 # what killed builds left was cleaned
    assert not [p for p in ws.iterdir() if p.name.startswith(".")]


def test_four_concurrent_builds_share_one_cache(tmp_path, reference):
    cache = tmp_path / "cache"
    procs = [_start(tmp_path, cache, tmp_path / f"ws{i}") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=1200) == 0, p.stderr.read().decode()
    manifests = [json.loads((build_dir(tmp_path / f"ws{i}", BUILD) / "manifest.json").read_text()) for i in range(4)]
    ran: dict[str, int] = {}
    for m in manifests:
        for op in m["ops"]:
            ran[op["fingerprint"]] = ran.get(op["fingerprint"], 0) + (op["status"] == "ran")
    assert set(ran.values()) == {1}, ran                      # each op ran once; the others reused it
    for i in range(4):
        assert _artifacts(build_dir(tmp_path / f"ws{i}", BUILD)) == reference
    assert _verify(cache).returncode == 0


def test_verify_finds_a_flipped_byte_and_repair_makes_the_op_run_again(tmp_path, reference):
    cache, ws = tmp_path / "cache", tmp_path / "ws"
    assert _start(tmp_path, cache, ws).wait(timeout=900) == 0
    m = json.loads((build_dir(ws, BUILD) / "manifest.json").read_text())
    quantize = next(o for o in m["ops"] if o["id"] == "quantize")
    sha = quantize["outputs"]["model.onnx"]["sha256"]
    obj = cache / "objects" / sha[:2] / sha
    data = bytearray(obj.read_bytes())
    data[100] ^= 0xFF
    obj.write_bytes(bytes(data))
    r = _verify(cache)
    assert r.returncode == 3 and f"bad object {sha}" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "yolobuild", "cache", "verify", "--repair", f"cache.dir={cache}"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "repaired" in r.stdout, r.stdout
    assert _verify(cache).returncode == 0
    assert _start(tmp_path, cache, ws).wait(timeout=900) == 0
    m = json.loads((build_dir(ws, BUILD) / "manifest.json").read_text())
    assert next(o for o in m["ops"] if o["id"] == "quantize")["status"] == "ran"
    assert _artifacts(build_dir(ws, BUILD)) == reference


def test_gc_removes_what_no_build_reads_and_keeps_the_budget(tmp_path):
    from yolobuild.engine import upkeep
    from yolobuild.engine.cache import Cache

    cache_dir, ws = tmp_path / "cache", tmp_path / "ws"
    assert _start(tmp_path, cache_dir, ws).wait(timeout=900) == 0
    cache = Cache(cache_dir)
    (cache_dir / "tmp" / "deadbeef.otherhost.1.x").mkdir(parents=True)     # another host's, a day old
    os.utime(cache_dir / "tmp" / "deadbeef.otherhost.1.x", (0, 0))
    stray = cache_dir / "objects" / "ff" / ("f" * 64)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"nobody names me")
    os.utime(stray, (0, 0))
    r = upkeep.gc(cache)
    assert r.tmp_removed == 1 and r.objects_removed == 1 and not stray.exists()
    assert upkeep.verify(cache).clean
    before = r.size_after
    r = upkeep.gc(cache, max_size=before // 2)
    assert r.entries_evicted >= 1 and r.size_after <= before // 2, r
    assert upkeep.verify(cache).clean
    assert _start(tmp_path, cache_dir, ws).wait(timeout=900) == 0   # evicted ops simply run again
