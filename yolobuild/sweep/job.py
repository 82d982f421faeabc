"""One job of a sweep, as a launcher runs it: compose + validate + lower + build exactly as a single
build does (the CLI's own functions), and leave the job's row (`job.json`) in its Hydra output folder,
beside the status file the sweep's live view reads while the job runs (yolobuild.sweep.status).

A module-level function with plain-data settings: joblib, Ray and submitit pickle it into their
workers. It never raises: a failing job is a row with its reason, and the other jobs go on."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .rows import failed_row, row_from_manifest
from .status import JobStatus

JOB_FILE = "job.json"


class JobOutput:
    """The CLI's output, each line prefixed with the job's number: jobs running at once share a terminal.

    `quiet`: the sweep shows a live view in the terminal, which these lines would tear; the job then
    speaks through its status file only (the view prints each job's outcome)."""

    def __init__(self, prefix: str, status: JobStatus, quiet: bool = False):
        self.stream, self.prefix, self.status, self.quiet = sys.stdout, prefix, status, quiet

    def say(self, text: str) -> None:
        if self.quiet:
            return
        for line in text.splitlines() or [""]:
            print(f"{self.prefix}{line}", file=self.stream, flush=True)

    def error(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{text}", file=sys.stderr, flush=True)

    def watch(self, name: str, ops: int) -> "JobView":
        from ..live import BuildView
        from ..progress import shown

        self.status.begin(name, ops)
        return JobView(self.status, BuildView(self.say, name, ops, progress_lines=shown() and not self.quiet))


class JobView:
    """A job's build seen twice: its status file, and the plain lines the job prints."""

    def __init__(self, status: JobStatus, lines):
        self.status, self.lines = status, lines

    @property
    def listener(self):
        from ..progress import shown

        return self.on_event if shown() else None

    def on_op(self, rec) -> None:
        self.status.on_op(rec)
        self.lines.on_op(rec)

    def on_event(self, kind: str, rec) -> None:
        self.status.on_event(kind, rec)
        self.lines.on_event(kind, rec)

    def __enter__(self) -> "JobView":
        self.lines.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.lines.__exit__(*exc)


def _build(overrides: list[str], settings: dict, out: JobOutput) -> dict:
    import io
    from contextlib import redirect_stderr

    from .. import cli
    from ..errors import UserError, YolobuildError, machine_error

    started = time.time()
    errors = io.StringIO()
    try:
        with redirect_stderr(errors):
            config, plan = cli._prepare(list(settings.get("repo_defaults") or []) + list(overrides),
                                        settings["config_dirs"], settings["allow_env"])
            code, manifest = cli._cmd_build(config, plan, out)
    except UserError as err:
        return failed_row(overrides, 2, err.lines[0] if err.lines else str(err), started)
    except YolobuildError as err:
        return failed_row(overrides, err.exit_code, str(err), started)
    except OSError as exc:
        err = machine_error(exc, "writing the build")
        return failed_row(overrides, err.exit_code if err else 4, str(err or exc), started)
    except KeyboardInterrupt:
        return failed_row(overrides, 130, "interrupted: finished ops stay cached", started)
    except Exception as exc:   # a bug must not stop the other jobs; its row says what it was
        return failed_row(overrides, 1, f"internal error: {type(exc).__name__}: {exc}", started)
    finally:
        for line in errors.getvalue().splitlines():
            out.error(line)
    if not manifest:
        reason = errors.getvalue().strip().splitlines()
        return failed_row(overrides, code, reason[-1] if reason else "no manifest", started)
    return row_from_manifest(overrides, code, manifest, Path(manifest["_dir"]), started)


def _plain_start_method() -> None:
    """A loky (joblib) worker sets its own start method, and a helper process the build spawns inherits
    that name and cannot start without loky: the build's helpers start as plain spawned processes."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)


def run_job(settings: dict, cfg) -> dict:
    """Hydra's task function (bound to settings with functools.partial)."""
    from hydra.core.hydra_config import HydraConfig

    _plain_start_method()
    hc = HydraConfig.get()
    overrides = [str(o) for o in hc.overrides.task]
    if settings.get("cwd"):
        os.chdir(settings["cwd"])   # a Ray or SLURM worker starts elsewhere; relative paths are the user's
    num = hc.job.get("num", 0)
    folder = Path(hc.runtime.output_dir)
    status = JobStatus(folder, num, overrides)
    out = JobOutput(f"[{num}] ", status, quiet=bool(settings.get("live")))
    out.say(f"job: {' '.join(overrides)}")
    row = {"job": num, **_build(overrides, settings, out)}
    if row["status"] == "failed" and not row.get("build_dir"):
        out.error(f"error: {row['reason']}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JOB_FILE).write_text(json.dumps(row, indent=2))
    status.finish(row)
    if "optuna" in str(hc.sweeper.get("_target_", "")).lower():
        return float(row.get("map_built") or 0.0)   # an optuna search maximises the built mAP50-95
    return row
