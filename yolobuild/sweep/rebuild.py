"""`yolobuild report DIR`: the sweep's view rebuilt from its jobs' manifests (each job.json names its
build folder; the figures are read again from that folder's manifest.json)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EXIT_OK, UserError
from .folder import REPORT_HTML, SUMMARY_JSON, write_summaries
from .job import JOB_FILE
from .rows import row_from_manifest


def _refreshed(row: dict) -> dict:
    folder = Path(row["build_dir"]) if row.get("build_dir") else None
    if folder is None or not (folder / "manifest.json").is_file():
        return row
    manifest = json.loads((folder / "manifest.json").read_text())
    fresh = row_from_manifest(row["overrides"], row.get("exit_code", 0), manifest, folder, None)
    return {**fresh, "job": row.get("job"), "started_at": row.get("started_at"), "seconds": row.get("seconds")}


def report_command(argv: list[str], out) -> int:
    from .html import write_report

    if len(argv) != 1 or argv[0].startswith("-"):
        raise UserError("report: say `yolobuild report DIR` (a sweep folder, e.g. yolobuild-out/sweeps/latest) "
                        "(command line)")
    sweep_dir = Path(argv[0]).expanduser()
    job_files = sorted((sweep_dir / "jobs").glob(f"*/{JOB_FILE}"), key=lambda p: int(p.parent.name)
                       if p.parent.name.isdigit() else 0)
    if not job_files:
        raise UserError(f"report: {sweep_dir} holds no sweep jobs (jobs/*/{JOB_FILE}) (command line)")
    try:
        old = json.loads((sweep_dir / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        old = {}
    rows = [_refreshed(json.loads(p.read_text())) for p in job_files]
    summary = {"dir": str(sweep_dir.resolve()), "overrides": old.get("overrides", []),
               "launcher": old.get("launcher", "?"), "started_at": old.get("started_at"),
               "seconds": old.get("seconds", 0.0), "jobs": rows}
    write_summaries(sweep_dir, summary)
    write_report(sweep_dir / REPORT_HTML, summary)
    out.say(f"wrote {sweep_dir / SUMMARY_JSON}, summary.csv and {sweep_dir / REPORT_HTML} ({len(rows)} jobs)")
    return EXIT_OK
