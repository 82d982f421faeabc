"""The per-layer error as both reports show it: rows in graph order, the worst layers marked, the search's
tries, and an inline SVG plot (SQNR and cosine per layer). Data in, text out: no numpy, no matplotlib."""
from __future__ import annotations

import math
from html import escape
from typing import Any

WORST_SHOWN = 5
EXACT = 200.0
OWN_SHOWN_BELOW = 60.0   # dB: own SQNR at or above it means the layer adds no noise worth a dot


def worst_names(acc: dict) -> list[str]:
    return list(acc.get("worst") or [])[:WORST_SHOWN]


def _key(layer: dict) -> float | None:
    """What the ranking sorted by (runtime.layer_error.rank_key): the layer alone where measured, else its own."""
    value = layer.get("local_sqnr_db", layer.get("own_sqnr_db"))
    return float(value) if isinstance(value, (int, float)) else None


def rows(acc: dict) -> list[list[Any]]:
    """[index, name, op, cosine, SQNR, SQNR of the layer alone, in float] per layer, graph order."""
    kept = set(acc.get("kept_float") or ())
    local = any("local_sqnr_db" in layer for layer in acc.get("layers") or [])
    out = []
    for i, layer in enumerate(acc.get("layers") or []):
        own = layer.get("local_sqnr_db", "-") if local else layer.get("own_sqnr_db")
        in_float = "yes" if (layer["name"] in kept or layer.get("quantized") is False) else ""
        out.append([i, layer["name"], layer.get("op", ""), f"{layer['cosine']:.6f}", f"{layer['sqnr_db']:.2f}",
                    f"{own:.2f}" if isinstance(own, (int, float)) else "", in_float])
    return out


HEADER = ["#", "layer", "op", "cosine", "SQNR dB", "alone SQNR dB", "in float"]


def tries_rows(acc: dict) -> list[list[Any]]:
    out = []
    for t in acc.get("tries") or []:
        delta = f"{t['delta']:+.2f}" if t.get("delta") is not None else "-"
        out.append([t["try"], t.get("calibration") or "", t.get("kept", 0), delta, t.get("against", ""),
                    f"{t.get('seconds', 0):.1f}", "yes" if t.get("cached") else "", t.get("status", ""),
                    t.get("reason", "")])
    return out


TRIES_HEADER = ["try", "calibration", "layers kept in float", "delta AP points", "against", "seconds", "all cached",
                "status", "reason"]


def summary_line(acc: dict) -> str:
    parts = []
    if acc.get("method"):
        parts.append(f"Measured with {acc['method']} on {acc.get('images', '?')} image(s), {len(acc.get('layers') or [])} "
                     "layers in graph order. SQNR = 10 log10(sum ref^2 / sum (ref - quantized)^2) of each layer's "
                     "output, the error it inherits included; alone SQNR is the layer by itself, float against "
                     "quantized on the same inputs, in its worst channel (or, where that is not measured, the "
                     "noise it adds over its inputs): the ranking's key, lowest first.")
    if acc.get("worst"):
        parts.append("Worst layers: " + ", ".join(worst_names(acc)) + ".")
    if acc.get("kept_float"):
        parts.append(f"{len(acc['kept_float'])} layer(s) kept in float"
                     + (f" (listed in {acc['kept_float_file']})" if acc.get("kept_float_file") else "") + ".")
    if "within_bound" in acc:
        if acc["within_bound"]:
            parts.append(f"Within accuracy.max_drop={acc['max_drop']:g}.")
        else:
            reached = acc.get("reached")
            parts.append(f"Not within accuracy.max_drop={acc['max_drop']:g}: best reached "
                         f"{reached:+.2f} AP points; {acc.get('why', '')}" if reached is not None else
                         f"Not within accuracy.max_drop={acc['max_drop']:g}: {acc.get('why', '')}")
    return " ".join(parts)


def plot_svg(acc: dict, width: int = 940) -> str:
    """Two panels over the layers in graph order: SQNR (line) with own SQNR (dots; the worst in red), and
    -log10(1 - cosine). Layers kept in float are drawn grey."""
    layers = acc.get("layers") or []
    if not layers:
        return ""
    worst = set(worst_names(acc))
    kept = set(acc.get("kept_float") or ())
    left, right, panel, gap, top = 56, 16, 150, 34, 20
    height = top + 2 * panel + gap + 30
    n = len(layers)
    plot_w = width - left - right

    def x(i: int) -> float:
        return left + (i + 0.5) * plot_w / n

    def panel_svg(y0: int, values: list[float], extra: list[float] | None, label: str, unit: str) -> list[str]:
        finite = [v for v in values + (extra or []) if math.isfinite(v)]
        hi = max(finite + [1.0])
        hi = min(hi, 80.0) if unit == "dB" else hi
        lo = min(finite + [0.0])
        lo = max(lo, -10.0)

        def y(v: float) -> float:
            v = min(max(v, lo), hi)
            return y0 + panel - (v - lo) / ((hi - lo) or 1.0) * panel

        out = [f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel}" fill="none" stroke="#ccc"/>',
               f'<text x="{left - 6}" y="{y0 + 10}" text-anchor="end">{hi:.0f}</text>',
               f'<text x="{left - 6}" y="{y0 + panel}" text-anchor="end">{lo:.0f}</text>',
               f'<text x="{left + 4}" y="{y0 - 5}">{escape(label)}</text>']
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline points="{points}" fill="none" stroke="#2b7bb9" stroke-width="1.2"/>')
        for i, layer in enumerate(layers):
            v = (extra or values)[i]
            if v >= OWN_SHOWN_BELOW and extra is not None:
                continue   # a layer that adds no noise of its own: no dot
            colour = "#c0392b" if layer["name"] in worst else (
                "#aaaaaa" if layer["name"] in kept or layer.get("quantized") is False else "#e67e22")
            r = 3.2 if layer["name"] in worst else 1.8
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{r}" fill="{colour}"><title>{i} '
                       f'{escape(layer["name"])}: {v:.2f} {unit}</title></circle>')
        return out

    sqnr = [float(layer["sqnr_db"]) for layer in layers]
    own = [_key(layer) if _key(layer) is not None else EXACT for layer in layers]
    nines = [(-math.log10(max(1.0 - float(layer["cosine"]), 1e-9))) for layer in layers]
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="per-layer error">']
    parts += panel_svg(top, sqnr, own, "SQNR dB per layer (line: output; dots: the layer alone, red = worst, grey = in float)", "dB")
    parts += panel_svg(top + panel + gap, nines, None, "cosine as -log10(1 - cosine) (3 = 0.999)", "nines")
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">layer, graph order '
                 f'(0 .. {n - 1})</text>')
    return "".join(parts) + "</svg>"
