"""cache.remote: a local miss is pulled from any fsspec URL (each object checked by sha256), a new entry
pushed; a corrupt remote object is refused and its op reruns; an unreachable remote is one warning and a
local build; credentials never reach a file.

The engine's mechanics run on tiny test op kinds against a file:// remote (the fast suite); the builds run
the demo for real against moto's S3 server on 127.0.0.1 (s3fs, the `remote` extra; `pytest -m reliability`)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yolobuild.engine.cache import Cache, sha256_file
from yolobuild.engine.remote import RemoteCache
from yolobuild.engine.runner import Runner

from .conftest import built_folder
from .test_engine import counter, make_plan, test_kinds  # noqa: F401 (fixtures)


def _cache(root: Path, remote_url: str, warnings: list | None = None) -> Cache:
    cache = Cache(root)
    cache.remote = RemoteCache(remote_url, {}, cache.note, (warnings.append if warnings is not None else print))
    return cache


def _remote_objects(remote: Path) -> list[Path]:
    return sorted(p for p in (remote / "objects").rglob("*") if p.is_file())


def test_a_second_cache_pulls_every_op_and_runs_none(tmp_path, counter):   # noqa: F811
    remote = tmp_path / "remote"
    ex1 = Runner(_cache(tmp_path / "c1", f"file://{remote}")).run(make_plan(tail="t_folder"))
    assert [r.status for r in ex1.records] == ["ran", "ran"]
    assert len(list((remote / "entries").rglob("*.json"))) == 2
    assert [p.suffix for p in _remote_objects(remote)].count(".tar") == 1      # the folder output, as a tar
    ex2 = Runner(_cache(tmp_path / "c2", f"file://{remote}")).run(make_plan(tail="t_folder"))
    assert [(r.status, r.reason) for r in ex2.records] == [("cached", "pulled from cache.remote")] * 2
    assert counter() == ["first", "second"]                                   # nothing ran the second time
    assert [r.outputs for r in ex2.records] == [r.outputs for r in ex1.records]
    c2 = Cache(tmp_path / "c2")
    folder = ex2.records[1].outputs["dir"]["sha256"]
    assert c2.object_intact(folder) and (c2.object_path(folder) / "sub" / "a.txt").read_text() == "hello"
    ex3 = Runner(Cache(tmp_path / "c2")).run(make_plan(tail="t_folder"))      # now local hits, no remote
    assert [(r.status, r.reason) for r in ex3.records] == [("cached", "fingerprint found in cache")] * 2


def test_a_flipped_byte_in_a_remote_object_is_refused_and_that_op_reruns(tmp_path, counter):   # noqa: F811
    remote = tmp_path / "remote"
    ex1 = Runner(_cache(tmp_path / "c1", f"file://{remote}")).run(make_plan())
    sha = ex1.records[1].outputs["out.txt"]["sha256"]
    obj = remote / "objects" / sha[:2] / sha
    obj.write_bytes(b"J" + obj.read_bytes()[1:])                             # HELLO -> JELLO on the remote
    warnings: list[str] = []
    c2 = _cache(tmp_path / "c2", f"file://{remote}", warnings)
    ex2 = Runner(c2).run(make_plan())
    assert [r.status for r in ex2.records] == ["cached", "ran"]
    assert counter() == ["first", "second", "second"]
    assert (c2.object_path(sha)).read_text() == "HELLO"                      # the right bytes, made here
    assert [e["action"] for e in c2.events] == ["remote object failed its sha256 check: refused; the op ran"]
    assert c2.events[0]["object"] == sha and len(warnings) == 1 and "sha256" in warnings[0]
    assert sha256_file(obj) == sha                                           # the push put the right bytes back


def test_an_unreachable_remote_is_one_warning_and_a_local_build(tmp_path, counter):   # noqa: F811
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote's folders should be")
    warnings: list[str] = []
    cache = _cache(tmp_path / "c1", f"file://{blocker}/cache", warnings)
    ex = Runner(cache).run(make_plan())
    assert ex.error is None and [r.status for r in ex.records] == ["ran", "ran"]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "local cache only" in warnings[0]
    assert [e["action"] for e in cache.events] == ["unreachable: built with the local cache only"]


def test_credentials_in_the_url_or_the_options_never_reach_a_file(tmp_path, monkeypatch):
    from types import MappingProxyType as frozen

    from yolobuild import redaction
    from yolobuild.storage import write_atomic

    monkeypatch.setattr(redaction, "_secrets", {})
    settings = frozen({"dir": str(tmp_path / "c"), "remote": "https://builder:pa55word-77@cache.example/team",
                       "remote_options": frozen({"secret": "s3cret-value-1", "endpoint_url": "https://cache.example",
                                                 "client_kwargs": frozen({"aws_session_token": "tok-value-2"})})})
    cache = Cache.configured(settings)                  # the validated config's read-only mappings
    assert cache.remote.options["client_kwargs"] == {"aws_session_token": "tok-value-2"}   # fsspec gets the real ones
    write_atomic(tmp_path / "out.json", json.dumps({"remote": settings["remote"], "options": cache.remote.options}))
    text = (tmp_path / "out.json").read_text()
    assert "pa55word-77" not in text and "s3cret-value-1" not in text and "tok-value-2" not in text
    assert "<cache.remote_options.secret>" in text and "https://cache.example" in text   # the rest stays as it is


# -- real builds against moto's S3 server (a minute or two: marked reliability, which CI runs) -------------

ARGS = ("dataset.generator.calib_count=8", "dataset.calib.count=8", "dataset.generator.eval_count=8",
        "check.parity_images=2", "benchmark.enabled=false")
ARTIFACTS = ("model.onnx", "model.ort.onnx", "parity.json", "metrics.json", "model.json")
KEY_ID, SECRET = "AKIAFAKE7Q2W9E4R1T6Y", "fake-secret-9f3b27c1d0e84a6b"           # what moto accepts
OPTION_KEY, OPTION_SECRET = "AKIAOPTION3X8C5V2B7N", "option-secret-51d7e0a9c4b2f836"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs", reason='cache.remote on S3 needs the remote extra: pip install "yolobuild[remote]"')
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    port = _free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    client.create_bucket(Bucket="builds")
    yield endpoint, client
    server.stop()


def _env(endpoint: str | None) -> dict[str, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    if endpoint:
        env["FSSPEC_S3_ENDPOINT_URL"] = endpoint     # fsspec's own configuration from the environment (s3fs reads it)
    return env


def _build(tmp: Path, name: str, *extra: str, env: dict) -> tuple[Path, dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-m", "yolobuild", *ARGS, f"workspace.path={tmp / ('ws-' + name)}",
                           f"cache.dir={tmp / ('cache-' + name)}", *extra],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = built_folder(tmp / f"ws-{name}", proc.stdout)
    return folder, json.loads((folder / "manifest.json").read_text()), proc


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="builds", Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _files_holding(roots, needles) -> list[str]:
    hits = []
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                hits += [f"{p}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.reliability
def test_s3_push_then_pull_into_an_empty_cache_runs_no_op_and_ships_the_same_bytes(tmp_path, s3):
    endpoint, client = s3
    remote = "cache.remote=s3://builds/team-a"
    a, manifest_a, _ = _build(tmp_path, "a", remote, env=_env(endpoint))
    assert all(op["status"] == "ran" for op in manifest_a["ops"]) and not manifest_a["cache_events"]
    entries = _keys(client, "team-a/entries/")
    assert len(entries) == len(manifest_a["ops"])
    # build B: another machine's empty cache, the endpoint and keys as fsspec options on the command line
    b, manifest_b, proc = _build(tmp_path, "b", remote, f"cache.remote_options.endpoint_url={endpoint}",
                                 f"cache.remote_options.key={OPTION_KEY}", f"cache.remote_options.secret={OPTION_SECRET}",
                                 env={k: v for k, v in _env(None).items() if not k.startswith("AWS_")})
    assert [(op["status"], op["reason"]) for op in manifest_b["ops"]] == \
        [("cached", "pulled from cache.remote")] * len(manifest_a["ops"])
    assert [op["fingerprint"] for op in manifest_b["ops"]] == [op["fingerprint"] for op in manifest_a["ops"]]
    for name in ARTIFACTS:
        assert sha256_file(b / name) == sha256_file(a / name), name
    assert Cache(tmp_path / "cache-b").entry_fingerprints() == sorted(Path(k).stem for k in entries)
    # the composition memo (a copy of the whole config) is kept for A; B's, holding credentials, is not written
    assert list((tmp_path / "cache-a" / "compose").glob("*.json")) and not (tmp_path / "cache-b" / "compose").exists()
    bucket = tmp_path / "bucket"
    for key in _keys(client, "team-a/"):
        (bucket / key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file("builds", key, str(bucket / key))
    assert not _files_holding([tmp_path / "ws-a", tmp_path / "ws-b", tmp_path / "cache-a", tmp_path / "cache-b", bucket],
                              [KEY_ID, SECRET, OPTION_KEY, OPTION_SECRET])


@pytest.mark.reliability
def test_s3_a_flipped_byte_is_detected_on_pull_and_that_op_reruns(tmp_path, s3):
    endpoint, client = s3
    remote = "cache.remote=s3://builds/team-b"
    a, manifest_a, _ = _build(tmp_path, "a", remote, env=_env(endpoint))
    onnx = next(op for op in manifest_a["ops"] if "model.onnx" in op["outputs"] and op["outputs"]["model.onnx"]["in"] == "build")
    sha = onnx["outputs"]["model.onnx"]["sha256"]
    key = f"team-b/objects/{sha[:2]}/{sha}"
    body = bytearray(client.get_object(Bucket="builds", Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket="builds", Key=key, Body=bytes(body))
    b, manifest_b, proc = _build(tmp_path, "b", remote, env=_env(endpoint))
    status = {op["id"]: op["status"] for op in manifest_b["ops"]}
    assert status[onnx["id"]] == "ran"
    assert [e["object"] for e in manifest_b["cache_events"]] == [sha]
    assert "failed its sha256 check" in manifest_b["cache_events"][0]["action"]
    assert "failed its sha256 check" in proc.stdout
    assert sha256_file(b / "model.onnx") == sha256_file(a / "model.onnx") == sha
    fixed = client.get_object(Bucket="builds", Key=key)["Body"].read()       # the rerun's push replaced it
    import hashlib

    assert hashlib.sha256(fixed).hexdigest() == sha


@pytest.mark.reliability
def test_s3_unreachable_is_one_warning_and_a_good_build(tmp_path, s3):
    closed = f"http://127.0.0.1:{_free_port()}"                            # nothing listens there
    t0 = time.monotonic()
    a, manifest, proc = _build(tmp_path, "a", "cache.remote=s3://builds/team-c",
                               "cache.remote_options.config_kwargs.connect_timeout=2",
                               "cache.remote_options.config_kwargs.retries.max_attempts=1", env=_env(closed))
    seconds = time.monotonic() - t0
    assert manifest["status"] == "compiled" and all(op["status"] == "ran" for op in manifest["ops"])
    warnings = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "cache.remote" in line]
    assert len(warnings) == 1 and "unreachable" in warnings[0], warnings
    assert [e["action"] for e in manifest["cache_events"]] == ["unreachable: built with the local cache only"]
    assert seconds < 300
