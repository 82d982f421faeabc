"""The sweep's folder: `<workspace.path>/sweeps/<time>/`, with `sweeps/latest` pointing at the newest,
and the files written there (summary.json, summary.csv; report.html by yolobuild.sweep.html)."""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from ..storage import write_atomic
from .rows import FIELDS

SUMMARY_JSON, SUMMARY_CSV, REPORT_HTML = "summary.json", "summary.csv", "report.html"
CSV_COLUMNS = ("job", "overrides", "recipe", "target", "precision", "input", "status", "exit_code", "reason",
               *(f"parity_{f}" for f in FIELDS), "map_fp32", "map_built", "accuracy_kind", "artifact_bytes",
               "latency_ms", "latency_runtime", "seconds",
               "ops_ran", "ops_cached", "seconds_saved", "build_dir")


def new_sweep_dir(workspace: Path) -> Path:
    """A fresh folder named by the local time (a suffix when two sweeps start in one second)."""
    root = workspace / "sweeps"
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(root / stamp)


def point_latest(sweep_dir: Path) -> None:
    """`sweeps/latest` -> this sweep, replaced in one step (a relative link: the workspace may move)."""
    link = sweep_dir.parent / "latest"
    tmp = sweep_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(sweep_dir.name)
    os.replace(tmp, link)


def _csv_value(row: dict, column: str):
    if column.startswith("parity_"):
        return (row.get("parity") or {}).get(column[len("parity_"):])
    value = row.get(column)
    if column == "overrides":
        return " ".join(value or [])
    if column == "input":
        return f"{value['height']}x{value['width']}" if value else ""
    return "" if value is None else value


def write_summaries(sweep_dir: Path, summary: dict) -> None:
    write_atomic(sweep_dir / SUMMARY_JSON, json.dumps(summary, indent=2))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for row in summary["jobs"]:
        writer.writerow([_csv_value(row, c) for c in CSV_COLUMNS])
    write_atomic(sweep_dir / SUMMARY_CSV, buf.getvalue())
