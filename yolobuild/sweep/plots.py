"""The sweep report's plots, as inline SVG (yolobuild.sweep.svg): the page needs no network."""
from __future__ import annotations

from .rows import FIELDS
from .svg import PALETTE, Chart


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller (x) and at least as accurate (y)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _size(r: dict) -> str:
    return f"{r['input']['height']}x{r['input']['width']}" if r.get("input") else ""


def accuracy_vs_size(rows: list[dict]) -> str | None:
    """Built mAP50-95 against artifact size, one colour per target × precision, the Pareto front drawn."""
    return _accuracy_against(rows, lambda r: r["artifact_bytes"] / 1e6 if r.get("artifact_bytes") else None,
                             "accuracy against artifact size", "artifact size (MB)")


def accuracy_vs_latency(rows: list[dict]) -> str | None:
    """Built mAP50-95 against the benchmark's p50 latency (jobs whose build ran one: host runtimes)."""
    return _accuracy_against(rows, lambda r: r.get("latency_ms"), "accuracy against latency",
                             "p50 latency, batch 1 (ms, this machine)")


def _accuracy_against(rows: list[dict], cost, title: str, x_label: str) -> str | None:
    """Built mAP50-95 against a cost (smaller is better), one colour per target × precision, and the
    Pareto front: the jobs no other job beats on both."""
    measured = [r for r in rows if r.get("map_built") is not None and cost(r)]
    # one kind of figure per plot: mAP against labels, else agreement with PyTorch fp32; never a preview
    kind = "labels" if any(r.get("accuracy_kind", "labels") == "labels" for r in measured) else "agreement"
    usable = [r for r in measured if r.get("accuracy_kind", "labels") == kind]
    if not usable:
        return None
    xs = [cost(r) for r in usable]
    ys = [r["map_built"] for r in usable]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.1 or 0.5, (max(ys) - min(ys)) * 0.15 or 0.01
    chart = Chart(900, 420, (max(0.0, min(xs) - pad_x), max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y),
                  title, x_label, "built mAP50-95" if kind == "labels" else "built agreement mAP50-95 with fp32")
    groups = sorted({(r["target"], r["precision"]) for r in usable})
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    front = set(pareto_front(list(zip(xs, ys))))
    ordered = sorted(front, key=lambda i: xs[i])
    if ordered:
        steps = []
        for a, b in zip(ordered, ordered[1:]):
            steps += [(xs[a], ys[a]), (xs[b], ys[a])]
        steps.append((xs[ordered[-1]], ys[ordered[-1]]))
        chart.polyline(steps)
    for i, r in enumerate(usable):
        g = (r["target"], r["precision"])
        tip = f"job {r['job']}: {' '.join(r['overrides'])}"
        chart.point(xs[i], ys[i], colour[g], tip=tip)
        if i in front:
            chart.point(xs[i], ys[i], "#000", r=9, hollow=True, tip=f"on the Pareto front: {tip}")
        chart.label(xs[i], ys[i], f"#{r['job']} {_size(r)}")
    for g in groups:
        chart.key(f"{g[0]} · {g[1]}", colour[g])
    chart.key("Pareto front (circled)", "#000", "dash")
    return chart.render()


def parity_bars(rows: list[dict]) -> str | None:
    """1 − cosine per output field and job (log scale: lower is closer to PyTorch)."""
    usable = [r for r in rows if any(v is not None for v in (r.get("parity") or {}).values())]
    if not usable:
        return None
    floor = 1e-9
    gaps = [max(floor, 1 - v) for r in usable for v in r["parity"].values() if v is not None]
    names = [f"#{r['job']} {r['target']}\n{r['precision']} {_size(r)}" for r in usable]
    chart = Chart(max(700, 110 * len(usable) + 300), 380, (-0.6, len(usable) - 0.4), (floor, max(gaps) * 10),
                  "parity with PyTorch, per output field", "", "1 − cosine (log; lower is closer)", log_y=True,
                  categories=names, bottom=60)
    width = 0.8 / len(FIELDS)
    for k, field in enumerate(FIELDS):
        chart.key(field, PALETTE[k])
        for i, r in enumerate(usable):
            v = r["parity"].get(field)
            if v is None:
                continue
            chart.rect(i - 0.4 + k * width, floor, width * 0.95, max(floor, 1 - v), PALETTE[k],
                       tip=f"job {r['job']} {field}: cosine {v:.8f}")
    return chart.render()


def op_timeline(rows: list[dict]) -> str | None:
    """Ops across jobs against wall time: a bar where an op ran (black outline: ran once, other jobs
    reused it), a tick where a job reused an op another build ran."""
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
    end = max((r["started_at"] - t0 + (op.get("started") or 0) + (op["seconds"] if op["status"] != "cached" else 0))
              for r in rows if r.get("started_at") for op in r["ops"])
    height = 36 * len(rows) + 90
    names = [f"#{r.get('job')} {r.get('target')} {r.get('precision')} {_size(r)}" for r in rows]
    chart = Chart(900, height + 15 * len(kinds) // 3, (0, max(end, 1.0) * 1.02), (len(rows) - 0.5, -0.5),
                  "ops across jobs: bar = ran (black outline: ran once, reused by other jobs), tick = reused",
                  "seconds since the sweep's first job started", "", left=200, y_ticks=False, right=20)
    for y, (r, name) in enumerate(zip(rows, names)):
        chart.body.append(f'<text x="194" y="{chart.y(y) + 4:.1f}" font-size="10" text-anchor="end">{name}</text>')
        if not r.get("started_at"):
            continue
        base = r["started_at"] - t0
        for op in r["ops"]:
            if op.get("started") is None:
                continue
            x = base + op["started"]
            tip = f"job {r['job']} {op['id']} {op['status']} {op['seconds']:.2f}s {str(op.get('fingerprint'))[:12]}"
            if op["status"] == "cached":
                chart.tick_mark(x, y, 12, colour[op["kind"]], tip=tip)
            else:
                shared = users.get(op.get("fingerprint"), 0) > 1
                chart.rect(x, y + 0.3, op["seconds"], y - 0.3, colour[op["kind"]],
                           outline="#000" if shared else None, tip=tip)
    svg = chart.render()
    legend = "".join(f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;'
                     f'width:12px;height:10px;background:{colour[k]}"></span> {k}</span>' for k in kinds)
    return f'{svg}<div style="font-size:11px;max-width:900px">{legend}</div>'
