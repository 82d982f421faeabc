"""The sweep's table in the terminal: one row per job, a failed job's reason on its own row, cached ops
as the time they saved."""
from __future__ import annotations


def _min_cosine(row: dict) -> str:
    values = [v for v in (row.get("parity") or {}).values() if v is not None]
    return f"{min(values):.6f}" if values else "-"


def accuracy_suffix(row: dict) -> str:
    """' (agreement)', ' (preview)': what a figure that is not a mAP against labels is."""
    kind = row.get("accuracy_kind")
    if not kind or kind == "labels":
        return ""
    return " (preview)" if kind == "preview (labels)" else f" ({kind.replace(' (', ', ').rstrip(')')})"


def _accuracy(row: dict) -> str:
    if row.get("map_built") is None or row.get("map_fp32") is None:
        return "-"
    return f"{row['map_fp32']:.4f} → {row['map_built']:.4f}{accuracy_suffix(row)}"


def varying(rows: list[dict]) -> list[list[str]]:
    """Each job's overrides less those every job shares (the table shows what tells jobs apart)."""
    if len(rows) < 2:
        return [r["overrides"] for r in rows]
    common = set.intersection(*(set(r["overrides"]) for r in rows))
    return [[o for o in r["overrides"] if o not in common] or r["overrides"] for r in rows]


def print_table(summary: dict, out) -> None:
    from rich.table import Table

    from ..live import saved

    table = Table(title=f"yolobuild sweep: {len(summary['jobs'])} jobs, {summary['seconds']:.1f}s "
                        f"({summary['launcher']} launcher)", title_justify="left")
    for col in ("job", "overrides", "status", "ops ran/cached", "time saved", "parity (min cosine)",
                "mAP50-95 torch→built", "seconds", "reason / output"):
        table.add_column(col)
    for row, shown in zip(summary["jobs"], varying(summary["jobs"])):
        failed = row["status"] == "failed"
        table.add_row(str(row.get("job", "?")), " ".join(shown),
                      f"[red]{row['status']}[/red]" if failed else row["status"],
                      f"{row.get('ops_ran', 0)}/{row.get('ops_cached', 0)}",
                      saved(row.get("seconds_saved") or 0.0) if row.get("ops_cached") else "-", _min_cosine(row), _accuracy(row),
                      f"{row.get('seconds', 0.0):.1f}", (row.get("reason") or "") if failed else (row.get("build_dir") or ""))
    out.table(table)
    out.say(f"sweep: {summary['dir']}")
