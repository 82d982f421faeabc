"""report.html: the build at a glance, one self-contained file (inline SVG plots, images as data: URIs).

No script, no stylesheet or font from anywhere: it opens the same on a machine with no network.
report.md stays the text for terminals and diffs.
"""
from __future__ import annotations

import base64
import io
import json
import math
from html import escape
from pathlib import Path
from typing import Any

STATUS_COLOURS = {"ran": "#2b7bb9", "cached": "#9db8cf", "handoff": "#d98c1f", "failed": "#c0392b",
                  "pending": "#cccccc"}
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.warn{background:#fff3cd;padding:6px 10px}.bad{color:#c0392b}
figure{display:inline-block;margin:6px}figcaption{font-size:12px;color:#555}svg text{font:11px sans-serif}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def timeline_svg(ops: list[dict]) -> str:
    """One bar per op from its start to its end (seconds after the build began), coloured by status."""
    rows = [(o["id"], o.get("started") or 0.0, o.get("seconds") or 0.0, o["status"]) for o in ops]
    end = max([s + d for _, s, d, _ in rows] + [0.001])
    left, width, row_h = 130, 600, 18
    height = row_h * len(rows) + 30
    parts = [f'<svg width="{left + width + 80}" height="{height}" role="img" aria-label="ops timeline">']
    for i, (name, start, dur, status) in enumerate(rows):
        y = i * row_h + 4
        x0 = left + start / end * width
        w = max(dur / end * width, 1.5)
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(name)}</text>'
                     f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 5}" '
                     f'fill="{STATUS_COLOURS.get(status, "#888")}"><title>{escape(name)}: {escape(status)}, '
                     f'{dur:.2f} s</title></rect>'
                     f'<text x="{x0 + w + 4:.1f}" y="{y + 12}">{dur:.2f} s {escape(status)}</text>')
    axis_y = len(rows) * row_h + 8
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#999"/>')
    for k in range(6):
        t = end * k / 5
        x = left + width * k / 5
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{t:.1f} s</text>')
    return "".join(parts) + "</svg>"


def bars_svg(groups: list[tuple[str, list[tuple[str, float]]]], unit: str, label: str,
             threshold: float | None = None, threshold_label: str = "") -> str:
    """Horizontal bars, one group per row label; an optional threshold line."""
    values = [v for _, items in groups for _, v in items if v is not None and math.isfinite(v)]
    top = max(values + [threshold or 0.0, 1e-9]) * 1.1
    left, width, bar_h = 160, 480, 16
    n = sum(len(items) for _, items in groups)
    height = n * (bar_h + 4) + len(groups) * 8 + 30
    colours = ["#2b7bb9", "#e67e22", "#27ae60", "#8e44ad"]
    parts = [f'<svg width="{left + width + 120}" height="{height}" role="img" aria-label="{escape(label)}">']
    y = 4
    for name, items in groups:
        for k, (series, v) in enumerate(items):
            v = 0.0 if v is None or not math.isfinite(v) else v
            w = max(v / top * width, 1.0)
            parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(name)} {escape(series)}</text>'
                         f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colours[k % 4]}"/>'
                         f'<text x="{left + w + 4:.1f}" y="{y + 12}">{v:.4g} {escape(unit)}</text>')
            y += bar_h + 4
        y += 8
    if threshold is not None:
        x = left + threshold / top * width
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{y}" stroke="#c0392b" stroke-dasharray="4 3"/>'
                     f'<text x="{x + 3:.1f}" y="{y + 12}" fill="#c0392b">{escape(threshold_label)}</text>')
    return "".join(parts) + "</svg>"


def _nines(cosine: float) -> float:
    """-log10(1 - cosine): 5 means cosine 0.99999; readable where every cosine starts with 0.99."""
    return 9.0 if cosine >= 1.0 - 1e-9 else -math.log10(max(1.0 - cosine, 1e-9))


def parity_section(m: dict) -> str:
    parity = m.get("parity") or {}
    if not parity:
        return ""
    threshold = next((o["results"].get("parity_threshold") for o in m["ops"]
                      if (o.get("results") or {}).get("parity_threshold") is not None), None)
    plot = bars_svg([(k, [("", _nines(v["cosine"]))]) for k, v in parity.items()], "nines of cosine",
                    "parity per field", _nines(threshold) if threshold else None,
                    f"target {threshold}" if threshold else "")
    rows = [[k, _fmt(v["cosine"], 6), _fmt(v["max_abs"], 6)] for k, v in parity.items()]
    return ("<h2>Parity with PyTorch, per output field</h2><p>Bar length: -log10(1 - cosine), so 5 reads "
            "cosine 0.99999; the dashed line is the target's threshold.</p>" + plot
            + _table(["field", "cosine", "max_abs"], rows))


def accuracy_section(m: dict) -> str:
    """mAP against labels, agreement with PyTorch fp32 (no labels), or a hand-off build's int8 preview."""
    from .accuracy_figures import accuracy

    fig = accuracy(m)
    if not fig:
        return ""
    metrics = (m.get("metrics") or {}) if fig["kind"] != "preview" else next(
        o["results"]["preview"]["metrics"] for o in m["ops"] if ((o.get("results") or {}).get("preview") or {}).get("metrics"))
    agreement = fig["basis"] == "agreement"
    ref_name = "PyTorch fp32 (itself)" if agreement else "PyTorch fp32"
    got_name = "int8 preview" if fig["kind"] == "preview" else f"built {m['precision']}"
    prefix = "agreement " if agreement else ""
    plot = bars_svg([(f"{prefix}mAP50-95", [(ref_name, fig["fp32"]), (got_name, fig["built"])]),
                     (f"{prefix}mAP50", [(ref_name, fig["fp32_50"]), (got_name, fig["built_50"])])], "", "accuracy")
    images = escape(str(metrics.get("images", "?")))
    title = (f"Agreement with PyTorch fp32 on {images} evaluation images (no labels)" if agreement
             else f"Accuracy on {images} evaluation images")
    if fig["kind"] == "preview":
        title += ": host int8 preview, not the vendor compiler"
    note = ""
    if agreement:
        note = (f"<p>The evaluation images have no annotations: the fp32 PyTorch model's detections scored &ge; "
                f"{escape(str(metrics.get('agreement_conf')))} ({escape(str(metrics.get('reference_boxes', '?')))} boxes) "
                "are the ground truth, and each model's mAP against them is its agreement (PyTorch's own is what a "
                f"perfect build reaches). Delta: {_fmt(fig['delta'], 2)} agreement points.</p>")
    return (f"<h2>{title}</h2>{note}" + plot
            + _table(["model", f"{prefix}mAP50-95", f"{prefix}mAP50"],
                     [[ref_name, _fmt(fig["fp32"]), _fmt(fig["fp32_50"])],
                      [got_name, _fmt(fig["built"]), _fmt(fig["built_50"])]]))


def calibration_section(m: dict) -> str:
    from .report import calibration_checks

    checks = calibration_checks(m)
    if not checks:
        return ""
    warn = ' class="warn"'
    rows = "".join(f"<tr{'' if c['ok'] else warn}><td>{escape(c['check'])}</td>"
                   f"<td>{'ok' if c['ok'] else '<b>warning</b>'}</td><td>{escape(c['detail'])}</td></tr>" for c in checks)
    return ("<h2>Calibration set</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>"
            + rows + "</table>")


def benchmark_section(m: dict, build_dir: Path) -> str:
    bench = m.get("benchmark") or {}
    runs = {k: v for k, v in (bench.get("runtimes") or {}).items() if "p50_ms" in v}
    if not runs:
        if (build_dir / "deploy" / "benchmark.sh").is_file():
            return ("<h2>Benchmark</h2><p>This artifact runs only on its board: copy <code>deploy/</code> there and "
                    "run <code>sh deploy/benchmark.sh</code> (p50 / p90 latency and throughput, batch 1).</p>")
        return ""
    plot = bars_svg([(k, [("p50", v["p50_ms"]), ("p90", v["p90_ms"])]) for k, v in runs.items()], "ms", "latency")
    machine = bench.get("machine") or {}
    against = any("vs_float" in v for v in runs.values())
    rows = [[k, v["p50_ms"], v["p90_ms"], v["throughput_ips"], v["threads"], v["batch"], v["runs"], v["runtime"]]
            + ([f"{v['vs_float']:.2f}x ({v['float']['p50_ms']} ms)" if "vs_float" in v else "-"] if against else [])
            for k, v in runs.items()]
    note = (" The float model it was quantized from ran beside it, in blocks of calls taken in turn (same input and threads): "
            "\"vs float\" is the p50 ratio." if against else "")
    return (f"<h2>Benchmark on this machine</h2><p>{escape(str(machine.get('cpu', '')))}, "
            f"{escape(str(machine.get('cores', '?')))} cores; batch 1, after warm-up.{note}</p>" + plot
            + _table(["runtime", "p50 ms", "p90 ms", "images/s", "threads", "batch", "runs", "version"]
                     + (["vs float (p50)"] if against else []), rows))


def _drawn_jpeg(image: Path, detections: list[dict]) -> str:
    from .deploy.drawing import draw_detections

    buf = io.BytesIO()
    draw_detections(image, detections).save(buf, format="JPEG", quality=85)   # photos: a tenth of a PNG's size
    return base64.b64encode(buf.getvalue()).decode()


def samples_section(build_dir: Path) -> str:
    expected_path = build_dir / "deploy" / "samples" / "expected.json"
    try:
        expected = json.loads(expected_path.read_text())
    except (OSError, ValueError):
        return ""
    figures = []
    for item in expected["images"]:
        path = expected_path.parent / item["file"]
        if not path.is_file():
            continue
        png = _drawn_jpeg(path, item["detections"])
        figures.append(f'<figure><img alt="{escape(item["file"])}" src="data:image/jpeg;base64,{png}">'
                       f'<figcaption>{escape(item["file"])}: {len(item["detections"])} detections</figcaption></figure>')
    return ("<h2>Sample detections</h2><p>The golden samples in <code>deploy/samples/</code>, drawn with the detections "
            f"yolobuild checked (score above {expected['conf_threshold']}); <code>python deploy/infer.py --check</code> "
            "reruns them.</p>" + "".join(figures))


def layers_section(m: dict) -> str:
    from . import layers_view

    acc = m.get("accuracy") or {}
    if not acc:
        return ""
    parts = ["<h2>Per-layer error, quantized vs float</h2>", f"<p>{escape(layers_view.summary_line(acc))}</p>"]
    if acc.get("tries"):
        parts += ["<h3>Accuracy search</h3>", _table(layers_view.TRIES_HEADER, layers_view.tries_rows(acc))]
    if acc.get("layers"):
        worst = set(layers_view.worst_names(acc))
        head = "".join(f"<th>{escape(h)}</th>" for h in layers_view.HEADER)
        marked = {True: '<tr class="bad">', False: "<tr>"}
        body = "".join(marked[r[1] in worst] + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                       for r in layers_view.rows(acc))
        worst_rows = [r for r in layers_view.rows(acc) if r[1] in worst]
        worst_rows.sort(key=lambda r: layers_view.worst_names(acc).index(r[1]))
        parts += [layers_view.plot_svg(acc), "<p>The worst layers, worst first:</p>",
                  _table(layers_view.HEADER, worst_rows),
                  "<details><summary>every layer (graph order; the worst in red)</summary>"
                  f"<table><tr>{head}</tr>{body}</table></details>"]
    return "".join(parts)


def side_by_side_section(m: dict, build_dir: Path) -> str:
    """PyTorch fp32 and built detections on the same images (the compare_detections op's PNGs, inlined)."""
    from .report import side_by_side_results

    sbs = side_by_side_results(m)
    figures = []
    for im in (sbs or {}).get("images") or []:
        path = build_dir / sbs["folder"] / im["file"]
        if not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        figures.append(f'<figure><img alt="{escape(im["source"])}" src="data:image/png;base64,{data}">'
                       f'<figcaption>{escape(im["source"])}: {im["fp32"]} detections fp32, {im["built"]} built'
                       '</figcaption></figure>')
    if not figures:
        return ""
    return (f"<h2>PyTorch fp32 and built detections, side by side</h2><p>Left PyTorch fp32, right "
            f"{escape(sbs['built'])}, on the first evaluation images (score above {sbs['conf_threshold']}; "
            f"<code>{escape(sbs['folder'])}/detections.json</code> lists the boxes).</p>" + "".join(figures))


def render_html(m: dict[str, Any], build_dir: Path) -> str:
    title = escape(m["build"])
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style>"
             f"</head><body><h1>{title}</h1>",
             f"<p>Status: <b>{escape(m['status'])}</b>; recipe <code>{escape(str(m['recipe']))}</code>, target "
             f"<code>{escape(m['target'])}</code>, precision <code>{escape(m['precision'])}</code>, input "
             f"{m['input']['height']}x{m['input']['width']}, head <code>{escape(m['head'])}</code>.</p>"]
    if m.get("random_weights"):
        parts.append('<p class="warn"><b>Random weights</b>: this build checks the pipeline, not a trained detector.</p>')
    if m.get("error"):
        parts.append(f'<p class="bad">Error: {escape(str(m["error"]))}</p>')
    parts += ["<h2>Ops</h2>", timeline_svg(m["ops"]),
              _table(["op", "status", "seconds", "why"],
                     [[o["id"], o["status"], _fmt(o["seconds"] or 0.0, 2), o["reason"]] for o in m["ops"]])]
    parts += [parity_section(m), calibration_section(m), accuracy_section(m), layers_section(m),
              side_by_side_section(m, build_dir), benchmark_section(m, build_dir), samples_section(build_dir)]
    parts += ["<h2>Tools</h2>", _table(["tool", "version"], [[k, v] for k, v in m["tools"].items()]), "</body></html>"]
    return "".join(parts) + "\n"
