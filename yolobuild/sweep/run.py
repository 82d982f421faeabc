"""`yolobuild --multirun ...`: pick the sweep's folder, hand the jobs to Hydra, gather what they left."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..errors import EXIT_INTERRUPTED, EXIT_OK, UserError
from .folder import REPORT_HTML, new_sweep_dir, point_latest, write_summaries
from .hydra_app import is_hydra_override
from .job import JOB_FILE
from .rows import failed_row


def _workspace(task_overrides: list[str], config_dirs, allow_env: bool) -> Path:
    """The first job's workspace.path (every job of one sweep shares its sweep folder)."""
    from ..cli import _prepare
    from ..compose import expand_sweep

    try:
        config, _ = _prepare(expand_sweep(task_overrides)[0], config_dirs, allow_env)
        return Path(config["workspace"]["path"]).expanduser()
    except UserError:
        given = [o.split("=", 1)[1] for o in task_overrides if o.startswith("workspace.path=")]
        return Path(given[-1] if given else "yolobuild-out").expanduser()


def _launcher(overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra/launcher=")]
    return chosen[-1] if chosen else "basic"


def gather_rows(sweep_dir: Path, returns) -> list[dict]:
    """Each job's job.json; a job that left none (its worker died) is a failed row from Hydra's record."""
    rows = {}
    for path in (sweep_dir / "jobs").glob(f"*/{JOB_FILE}"):
        row = json.loads(path.read_text())
        rows[int(row.get("job", path.parent.name))] = row
    for batch in returns or []:
        for ret in batch or []:
            num = ret.hydra_cfg.hydra.job.num if ret.hydra_cfg is not None else len(rows)
            if num not in rows:
                why = getattr(ret, "_return_value", None)
                rows[num] = {"job": num, **failed_row(ret.overrides or [], 1, f"the job left no result ({why})", time.time())}
    return [rows[k] for k in sorted(rows)]


def _stop_launcher_workers() -> None:
    """Launchers leave their workers running for a next batch: joblib's loky processes (idle for minutes,
    holding the terminal's output open), the Ray cluster it started. The CLI ends with os._exit (no
    atexit), so they would outlive the sweep: they are stopped here."""
    import sys

    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(reusable, "_executor", None)
    if executor is not None:   # joblib's MemmappingExecutor also removes its temporary folder on terminate
        (executor.terminate if hasattr(executor, "terminate") else executor.shutdown)()
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()


def _job_count(task: list[str], overrides: list[str]) -> int | None:
    """How many jobs the sweep has, when the overrides say (not when a sweeper such as optuna decides)."""
    if any(o.lstrip("+").startswith("hydra/sweeper=") for o in overrides):
        return None
    from ..compose import expand_sweep

    try:
        return len(expand_sweep(task))
    except Exception:   # the jobs themselves report a bad override, one line each
        return None


def _watching(sweep_dir: Path, task: list[str], overrides: list[str], out):
    """The sweep's live view in a terminal (yolobuild.sweep.watch); elsewhere the jobs' own lines."""
    from contextlib import nullcontext

    from ..live import terminal_console

    console = terminal_console(getattr(out, "stream", None))
    if console is None:
        return None, nullcontext()
    from ..cli import _has_sweep
    from .watch import SweepView

    common = [o for o in task if not _has_sweep(o) and "(" not in o]   # every job's, as Hydra hands them on
    return console, SweepView(sweep_dir, console, _job_count(task, overrides), common)


def run_sweep(overrides: list[str], config_dirs, allow_env: bool, out) -> int:
    from .hydra_app import multirun
    from .terminal import print_table

    from ..compose import REPO_DEFAULT

    repo_defaults = [o for o in overrides if o.startswith(REPO_DEFAULT)]   # yolobuild.yaml's: every job's, never swept
    overrides = [o for o in overrides if not o.startswith(REPO_DEFAULT)]
    task = [o for o in overrides if not is_hydra_override(o)]
    sweep_dir = new_sweep_dir(_workspace(repo_defaults + task, config_dirs, allow_env).resolve())
    settings = {"config_dirs": [str(Path(d).resolve()) for d in config_dirs], "allow_env": allow_env,
                "cwd": os.getcwd(), "repo_defaults": repo_defaults}
    out.say(f"sweep: {sweep_dir} ({_launcher(overrides)} launcher)")
    console, view = _watching(sweep_dir, task, overrides, out)
    settings["live"] = console is not None   # the jobs then speak through their status files only
    t0 = time.time()
    interrupted = False
    try:
        with view:
            returns = multirun(overrides, settings, sweep_dir)
    except KeyboardInterrupt:
        returns, interrupted = [], True
    except UserError:   # no job started (a launcher not installed, say): no sweep folder is left
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    _stop_launcher_workers()
    rows = gather_rows(sweep_dir, returns)
    summary = {"dir": str(sweep_dir), "overrides": list(overrides), "launcher": _launcher(overrides),
               "started_at": t0, "seconds": round(time.time() - t0, 3), "jobs": rows}
    write_summaries(sweep_dir, summary)
    from .html import write_report

    write_report(sweep_dir / REPORT_HTML, summary)
    point_latest(sweep_dir)
    print_table(summary, out)
    if interrupted:
        return EXIT_INTERRUPTED
    return max((r.get("exit_code") or 0 for r in rows), default=EXIT_OK) if rows else 1
