"""report.html of a sweep: one self-contained page (inline CSS and SVG, no script, no network)."""
from __future__ import annotations

import html
from pathlib import Path

from ..storage import write_atomic

STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}.failed{color:#b00020}
figure{margin:18px 0}svg{max-width:100%;height:auto}code{font-size:12px}"""


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}" if value < 1.0001 else f"{value:.2f}"
    return html.escape(str(value))


def _jobs_table(rows: list[dict]) -> str:
    head = ("job", "overrides (those not shared by every job)", "status", "reason", "boxes", "objectness", "class scores", "mAP fp32",
            "mAP built", "artifact MB", "p50 ms", "seconds", "ops ran/cached", "time saved")
    from ..live import saved
    from .terminal import accuracy_suffix, varying

    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r, shown in zip(rows, varying(rows)):
        p = r.get("parity") or {}
        size = r["artifact_bytes"] / 1e6 if r.get("artifact_bytes") else None
        cells = (r.get("job"), " ".join(shown), r["status"], r.get("reason"), p.get("boxes"),
                 p.get("objectness"), p.get("class_scores"), r.get("map_fp32"),
                 None if r.get("map_built") is None else f"{r['map_built']:.6f}{accuracy_suffix(r)}",
                 None if size is None else f"{size:.2f}",
                 None if r.get("latency_ms") is None else f"{r['latency_ms']:.2f} ({r.get('latency_runtime')})",
                 f"{r.get('seconds') or 0.0:.1f}", f"{r.get('ops_ran', 0)}/{r.get('ops_cached', 0)}",
                 saved(r.get("seconds_saved") or 0.0))
        cls = ' class="failed"' if r["status"] == "failed" else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _shared_table(rows: list[dict]) -> str:
    """Each op fingerprint used by more than one job: which job ran it, which reused it."""
    seen: dict[str, dict] = {}
    for r in rows:
        for op in r.get("ops", []):
            fp = op.get("fingerprint")
            if fp:
                entry = seen.setdefault(fp, {"kind": op["kind"], "ran": [], "cached": [], "seconds": 0.0})
                entry["ran" if op["status"] != "cached" else "cached"].append(r.get("job"))
                entry["seconds"] = max(entry["seconds"], op.get("seconds") or 0.0)
    shared = {fp: e for fp, e in seen.items() if len(e["ran"]) + len(e["cached"]) > 1}
    if not shared:
        return "<p>No op was shared between jobs.</p>"
    out = ["<table><tr><th>op</th><th>fingerprint</th><th>ran in job</th><th>reused by jobs</th>"
           "<th>seconds saved</th></tr>"]
    for fp, e in sorted(shared.items(), key=lambda kv: kv[1]["kind"]):
        out.append(f"<tr><td>{html.escape(e['kind'])}</td><td><code>{fp[:16]}</code></td>"
                   f"<td>{', '.join(map(str, e['ran'])) or '(an earlier build)'}</td>"
                   f"<td>{', '.join(map(str, e['cached']))}</td><td>{e['seconds'] * len(e['cached']):.1f}</td></tr>")
    return "\n".join(out + ["</table>"])


def _plots(rows: list[dict]) -> list[tuple[str, str | None]]:
    from . import plots

    return [("Accuracy against artifact size (per target × precision, Pareto front dashed)", plots.accuracy_vs_size(rows)),
            ("Accuracy against latency (the benchmark's p50 where the build ran one; Pareto front dashed)",
             plots.accuracy_vs_latency(rows)),
            ("Parity per output field", plots.parity_bars(rows)),
            ("Ops across jobs: what ran once and was shared", plots.op_timeline(rows))]


def render(summary: dict) -> str:
    rows = summary["jobs"]
    failed = sum(r["status"] == "failed" for r in rows)
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>yolobuild sweep</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>yolobuild sweep</h1><p><code>{html.escape(' '.join(summary.get('overrides', [])))}</code></p>",
             f"<p>{len(rows)} jobs, {failed} failed, {summary.get('seconds', 0):.1f} s on the "
             f"{html.escape(str(summary.get('launcher', '?')))} launcher. Folder: <code>{html.escape(summary['dir'])}</code></p>",
             "<h2>Jobs</h2>", _jobs_table(rows)]
    for title, svg in _plots(rows):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(f"<figure>{svg}</figure>" if svg else "<p>Nothing to plot (no job has these figures).</p>")
    parts += ["<h2>Shared ops</h2>", _shared_table(rows), "</body></html>"]
    return "\n".join(parts)


def write_report(path: Path, summary: dict) -> None:
    write_atomic(path, render(summary))
