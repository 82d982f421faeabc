"""report.md for a build: what ran and why, the parity figures, the accuracy figures."""
from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x: Any, digits: int = 6) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _layers_section(m: dict[str, Any]) -> list[str]:
    from . import layers_view

    acc = m.get("accuracy") or {}
    if not acc:
        return []
    parts = ["", "## Per-layer error (quantized vs float)", "", layers_view.summary_line(acc)]
    if acc.get("tries"):
        parts += ["", "### Accuracy search", "", _table(layers_view.TRIES_HEADER, layers_view.tries_rows(acc))]
    if acc.get("layers"):
        worst = set(layers_view.worst_names(acc))
        rows = [[*r[:1], f"**{r[1]}**" if r[1] in worst else r[1], *r[2:]] for r in layers_view.rows(acc)]
        parts += ["", "Worst layers in bold.", "", _table(layers_view.HEADER, rows)]
    return parts


def render_report(m: dict[str, Any]) -> str:
    parts = [f"# {m['build']}", "",
             f"Status: **{m['status']}** — recipe `{m['recipe']}`, target `{m['target']}`, precision `{m['precision']}`, "
             f"input {m['input']['height']}x{m['input']['width']}, head `{m['head']}`."]
    if m.get("random_weights"):
        parts += ["", "**Random weights**: this build checks the pipeline, not a trained detector."]
    if m.get("error"):
        parts += ["", f"Error: `{m['error']}`"]
    parts += ["", "## Ops", "", _table(
        ["op", "status", "seconds", "why"],
        [[o["id"], o["status"], _fmt(o["seconds"], 2), o["reason"]] for o in m["ops"]])]
    if m.get("parity"):
        parts += ["", "## Parity with PyTorch (per output field)", "", _table(
            ["field", "cosine", "max_abs"],
            [[k, _fmt(v["cosine"]), _fmt(v["max_abs"])] for k, v in m["parity"].items()])]
    metrics = m.get("metrics") or {}
    if metrics.get("built"):
        ref, got = metrics["pytorch_fp32"], metrics["built"]
        parts += ["", f"## Accuracy on {metrics.get('images', '?')} evaluation images", "", _table(
            ["model", "mAP50-95", "mAP50"],
            [["PyTorch fp32", _fmt(ref["mAP50_95"], 4), _fmt(ref["mAP50"], 4)],
             [f"built ({m['precision']})", _fmt(got["mAP50_95"], 4), _fmt(got["mAP50"], 4)]])]
    parts += _layers_section(m)
    for o in m["ops"]:  # a hand-off build: the bundle's files, and the host int8 preview (labelled)
        res = o.get("results") or {}
        if res.get("bundle"):
            where = next(iter(o["outputs"].values()), {}).get("path", "")
            parts += ["", f"## Hand-off bundle (`{where}`)", "", f"Next: {m.get('next') or res.get('next')}", "",
                      *[f"- `{f}`" for f in res["bundle"]["files"]]]
        if res.get("preview"):
            pv = res["preview"]
            parts += ["", f"## Int8 {pv['label']}", "", pv["method"], "", _table(
                ["field", "cosine", "max_abs"],
                [[k, _fmt(v["cosine"]), _fmt(v["max_abs"])] for k, v in pv["parity"].items()])]
            if pv.get("metrics"):
                pm = pv["metrics"]
                parts += ["", _table(["model", "mAP50-95", "mAP50"],
                                     [["PyTorch fp32", _fmt(pm["pytorch_fp32"]["mAP50_95"], 4),
                                       _fmt(pm["pytorch_fp32"]["mAP50"], 4)],
                                      ["int8 preview", _fmt(pm["preview_int8"]["mAP50_95"], 4),
                                       _fmt(pm["preview_int8"]["mAP50"], 4)]])]
    parts += ["", "## Tools", "", _table(["tool", "version"], [[k, v] for k, v in m["tools"].items()]), ""]
    return "\n".join(parts)
