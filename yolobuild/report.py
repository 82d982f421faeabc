"""report.md for a build: what ran and why, the parity figures, the accuracy figures."""
from __future__ import annotations

from typing import Any

from . import accuracy_figures


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


def accuracy_md(m: dict[str, Any]) -> list[str]:
    """mAP fp32 vs built against labels, or agreement with PyTorch fp32 where the eval images have none."""
    fig = accuracy_figures.accuracy({"metrics": m.get("metrics")})
    if not fig:
        return []
    images = (m.get("metrics") or {}).get("images", "?")
    if fig["kind"] == "agreement":
        conf = m["metrics"].get("agreement_conf")
        return ["", f"## Agreement with PyTorch fp32 on {images} evaluation images (no labels)", "",
                f"The evaluation images have no annotations: the fp32 PyTorch model's detections scored >= {conf} "
                f"({m['metrics'].get('reference_boxes', '?')} boxes) are the ground truth, and each model's mAP against "
                f"them is its agreement (PyTorch's own is what a perfect build reaches). Delta: "
                f"{_fmt(fig['delta'], 2)} agreement points.", "", _table(
                    ["model", "agreement mAP50-95", "agreement mAP50"],
                    [["PyTorch fp32 (itself)", _fmt(fig["fp32"], 4), _fmt(fig["fp32_50"], 4)],
                     [f"built ({m['precision']})", _fmt(fig["built"], 4), _fmt(fig["built_50"], 4)]])]
    return ["", f"## Accuracy on {images} evaluation images", "", _table(
        ["model", "mAP50-95", "mAP50"],
        [["PyTorch fp32", _fmt(fig["fp32"], 4), _fmt(fig["fp32_50"], 4)],
         [f"built ({m['precision']})", _fmt(fig["built"], 4), _fmt(fig["built_50"], 4)]])]


def calibration_checks(m: dict[str, Any]) -> list[dict]:
    """The calibrate op's checks of the calibration set (ops.inputs.calibrate), [] when it did not run."""
    return next(((o.get("results") or {}).get("checks") or [] for o in m.get("ops", []) if o["kind"] == "calibrate"), [])


def calibration_md(m: dict[str, Any]) -> list[str]:
    checks = calibration_checks(m)
    if not checks:
        return []
    bad = sum(not c["ok"] for c in checks)
    return ["", "## Calibration set", "", f"{bad} warning(s)." if bad else "Every check passed.", "",
            _table(["check", "result", "detail"], [[c["check"], "ok" if c["ok"] else "**warning**", c["detail"]]
                                                   for c in checks])]


def side_by_side_results(m: dict[str, Any]) -> dict | None:
    """The compare_detections op's pairs (ops.side_by_side), None when the build drew none."""
    return next(((o.get("results") or {}).get("side_by_side") for o in m.get("ops", [])
                 if o["kind"] == "compare_detections"), None)


def side_by_side_md(m: dict[str, Any]) -> list[str]:
    sbs = side_by_side_results(m)
    if not sbs or not sbs.get("images"):
        return []
    parts = ["", "## PyTorch fp32 and built detections, side by side", "",
             f"Left PyTorch fp32, right {sbs['built']}, on the first evaluation images (score above "
             f"{sbs['conf_threshold']}; `{sbs['folder']}/detections.json` lists the boxes).", ""]
    for im in sbs["images"]:
        parts.append(f"![{im['source']}: fp32 {im['fp32']} / built {im['built']} detections]"
                     f"({sbs['folder']}/{im['file']})")
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
    parts += calibration_md(m)
    parts += accuracy_md(m)
    parts += side_by_side_md(m)
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
            fig = accuracy_figures.accuracy({"ops": [o]})
            if fig:
                ref_row = "PyTorch fp32 (itself)" if fig["basis"] == "agreement" else "PyTorch fp32"
                parts += ["", *([f"Agreement with PyTorch fp32's detections (the evaluation images have no labels)."]
                                if fig["basis"] == "agreement" else []),
                          _table(["model", "mAP50-95", "mAP50"],
                                 [[ref_row, _fmt(fig["fp32"], 4), _fmt(fig["fp32_50"], 4)],
                                  ["int8 preview", _fmt(fig["built"], 4), _fmt(fig["built_50"], 4)]])]
    parts += ["", "## Tools", "", _table(["tool", "version"], [[k, v] for k, v in m["tools"].items()]), ""]
    return "\n".join(parts)
