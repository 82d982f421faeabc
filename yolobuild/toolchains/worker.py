"""The host <-> toolchain-environment protocol: a JSON request in, a JSON result and files out.

Host side: `call()` writes request.json, runs `<env python> -m yolobuild.toolchains.worker
request.json result.json` with a minimal environment and a timeout, captures the worker's log,
and turns a failure into one line with the tool's own last error lines and the log's path.
Environment side: `main()` imports the named function, runs it on the request, writes the result.
Progress: the worker (or a process it starts) calls `yolobuild.progress.report(done, total, what)`,
which writes the file YOLOBUILD_PROGRESS_FILE names; `call()` polls it and hands it to `progress`.
Only the standard library is imported at the top: this module runs inside vendor venvs too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ..lifetime import die_with_parent_preexec
from ..progress import FILE_ENV, FileWatcher, ignore

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the yolobuild package itself


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def error_lines(log_text: str, n: int = 3) -> list[str]:
    """The tool's own last error lines (rknn logs 'E ...'; Python tracebacks end in 'XError: ...')."""
    lines = [strip_ansi(line).strip() for line in log_text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("$ ")]  # our own command echo
    marked = [line for line in lines if re.match(r"^(E |E\[|ERROR|Error|\w+Error:|\w+Exception:|FATAL)", line)
              and not line.endswith("Traceback (most recent call last):")]
    return (marked or lines)[-n:]


def _package_only_path(workdir: Path) -> Path:
    """A folder holding nothing but a link to the yolobuild package: putting the package's real parent on
    PYTHONPATH would, in an installed copy, hand the host's whole site-packages (numpy 2, new onnx) to a
    vendor environment that pins older ones."""
    root = workdir / ".yolobuild-path"
    link = root / "yolobuild"
    if not (link.is_symlink() and link.resolve() == PACKAGE_DIR):
        root.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(PACKAGE_DIR, target_is_directory=True)
    return root


def _wait(proc: subprocess.Popen, timeout: float, watcher: FileWatcher | None) -> None:
    """Wait for the worker, passing its progress on twice a second; TimeoutExpired after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            if watcher:
                watcher.poll()
            return
        except subprocess.TimeoutExpired:
            if watcher:
                watcher.poll()
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                raise


def call(python: Path, function: str, request: dict, workdir: Path, log: Path, timeout: float,
         env: dict[str, str], progress=None) -> dict:
    """Run `function` (a "module:name" in the yolobuild package) inside the environment of `python`;
    `progress(done, total, what)` hears what the worker reports while it runs."""
    from ..errors import ToolchainError

    workdir.mkdir(parents=True, exist_ok=True)
    req_path, res_path = workdir / "request.json", workdir / "result.json"
    req_path.write_text(json.dumps({**request, "call": function}, indent=1))
    import_path = ":".join(filter(None, [str(_package_only_path(workdir)), env.get("PYTHONPATH")]))
    watcher = FileWatcher(workdir / "progress.json", progress) if progress not in (None, ignore) else None
    child_env = {**env, "PYTHONPATH": import_path, "PYTHONUNBUFFERED": "1",
                 "PATH": f"{python.parent}:{env.get('PATH', '/usr/bin:/bin')}"}
    if watcher:
        child_env[FILE_ENV] = str(watcher.path)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"$ {python} -m yolobuild.toolchains.worker {req_path} ({function})\n")
        f.flush()
        proc = subprocess.Popen([str(python), "-m", "yolobuild.toolchains.worker", str(req_path), str(res_path)],
                                cwd=workdir, stdout=f, stderr=subprocess.STDOUT, env=child_env,
                                preexec_fn=die_with_parent_preexec)
        try:
            _wait(proc, timeout, watcher)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"{function}: no answer after {timeout:.0f} s; log: {log}") from None
        except BaseException:   # an interrupt: the worker goes with the build
            proc.kill()
            proc.wait()
            raise
    text = log.read_text(errors="replace")
    log.write_text(strip_ansi(text))
    result = None
    if res_path.exists():
        try:
            result = json.loads(res_path.read_text())
        except ValueError:
            result = None
    if proc.returncode != 0 or not result or not result.get("ok"):
        tool_said = error_lines(text, 2)
        detail = (result or {}).get("error") or f"worker exited with code {proc.returncode}"
        said = " | ".join(dict.fromkeys(tool_said)) if tool_said else detail
        raise ToolchainError(f"{function.split(':')[-1]} failed: {said[-600:]}; full log: {log}")
    out = result.get("result") or {}
    end = time.time()
    out.setdefault("_seconds", round(end - start, 3))
    out["_window"] = [round(start, 3), round(end, 3)]   # wall-clock span, for overlap-aware accounting
    return out


def main(argv: list[str]) -> int:
    import importlib
    import traceback

    req_path, res_path = Path(argv[0]), Path(argv[1])
    request = json.loads(req_path.read_text())
    module, name = request["call"].split(":")
    try:
        result = getattr(importlib.import_module(module), name)(request)
        payload = {"ok": True, "result": result}
    except Exception as exc:  # the host turns this into a ToolchainError with the log's tail
        traceback.print_exc()
        payload = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
    res_path.write_text(json.dumps(payload))
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    # os._exit once the result file is written and the log flushed: a vendor toolkit's interpreter
    # teardown (torch, onnxruntime and its own modules loaded) costs ~0.5 s that the host would wait for
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
