"""The sweep report's plots, drawn by matplotlib (Agg) as inline SVG: the page needs no network."""
from __future__ import annotations

import io
import re

from .rows import FIELDS

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"     # text stays text: smaller, selectable
    matplotlib.rcParams["svg.hashsalt"] = "yolobuild"  # the same sweep draws the same bytes
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]                                      # no XML prologue or DOCTYPE
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)    # no RDF links
    # inline SVG in HTML needs no namespace declarations (xlink:href still works): the page names no URL
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller (x) and at least as accurate (y)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_size(rows: list[dict]) -> str | None:
    """Built mAP50-95 against artifact size, one colour per target × precision, the Pareto front drawn."""
    usable = [r for r in rows if r.get("map_built") is not None and r.get("artifact_bytes")]
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = sorted({(r["target"], r["precision"]) for r in usable})
    for n, group in enumerate(groups):
        members = [r for r in usable if (r["target"], r["precision"]) == group]
        ax.scatter([r["artifact_bytes"] / 1e6 for r in members], [r["map_built"] for r in members], s=60,
                   color=PALETTE[n % len(PALETTE)], label=f"{group[0]} · {group[1]}", zorder=3)
        for r in members:
            size = f"{r['input']['height']}x{r['input']['width']}" if r.get("input") else ""
            ax.annotate(f"#{r['job']} {size}", (r["artifact_bytes"] / 1e6, r["map_built"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    points = [(r["artifact_bytes"] / 1e6, r["map_built"]) for r in usable]
    front = [points[i] for i in pareto_front(points)]
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle="--",
            linewidth=1, label="Pareto front", zorder=2)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none", edgecolors="black", zorder=4)
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("built mAP50-95")
    ax.set_title("accuracy against artifact size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def parity_bars(rows: list[dict]) -> str | None:
    """1 − cosine per output field and job (log scale: lower is closer to PyTorch)."""
    usable = [r for r in rows if any(v is not None for v in (r.get("parity") or {}).values())]
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(usable) + 2), 3.8))
    width = 0.8 / len(FIELDS)
    for k, field in enumerate(FIELDS):
        xs = [i + (k - 1) * width for i in range(len(usable))]
        ys = [max(1e-9, 1 - r["parity"][field]) if r["parity"].get(field) is not None else 0 for r in usable]
        ax.bar(xs, ys, width=width, label=field, color=PALETTE[k])
    ax.set_yscale("log")
    ax.set_xticks(range(len(usable)), [f"#{r['job']} {r['target']}\n{r['precision']} "
                                       f"{r['input']['height']}x{r['input']['width']}" for r in usable], fontsize=7)
    ax.set_ylabel("1 − cosine (log)")
    ax.set_title("parity with PyTorch, per output field")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def op_timeline(rows: list[dict]) -> str | None:
    """Ops across jobs against wall time: solid where an op ran, a hollow tick where a job reused it;
    ops that ran once and were shared with other jobs are outlined in black."""
    starts = [r["started_at"] for r in rows if r.get("started_at") and r.get("ops")]
    if not starts:
        return None
    t0 = min(starts)
    users: dict[str, int] = {}
    for r in rows:
        for op in r["ops"]:
            if op.get("fingerprint"):
                users[op["fingerprint"]] = users.get(op["fingerprint"], 0) + 1
    kinds = sorted({op["kind"] for r in rows for op in r["ops"]})
    colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.8))
    for y, r in enumerate(rows):
        if not r.get("started_at"):
            continue
        base = r["started_at"] - t0
        for op in r["ops"]:
            if op.get("started") is None:
                continue
            x = base + op["started"]
            if op["status"] == "cached":
                ax.plot([x], [y], marker="|", markersize=14, color=colour[op["kind"]], alpha=0.6)
            else:
                shared = users.get(op.get("fingerprint"), 0) > 1
                ax.barh(y, max(op["seconds"], 0.02), left=x, height=0.6, color=colour[op["kind"]],
                        edgecolor="black" if shared else "none", linewidth=1.2)
    from matplotlib.patches import Patch

    handles = [Patch(color=colour[k], label=k) for k in kinds]
    ax.set_yticks(range(len(rows)), [f"#{r.get('job')} {r.get('target')} {r.get('precision')}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the sweep's first job started")
    ax.set_title("ops across jobs (bar: ran; black outline: ran once, reused by other jobs; tick: reused)")
    ax.legend(handles=handles, fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)
