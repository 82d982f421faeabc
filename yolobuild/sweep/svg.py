"""A small SVG chart: axes with ticks, points, bars, lines, a legend. Written by hand because the report
is rewritten at the end of every sweep, and a fully cached sweep must stay far below an `import torch`
(importing and drawing with matplotlib alone took longer than that)."""
from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / count))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= count:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:g}"


class Chart:
    """Data coordinates in, SVG out; `log_y` for values spanning decades (1 − cosine)."""

    def __init__(self, width: int, height: int, x_range, y_range, title: str, x_label: str, y_label: str,
                 log_y: bool = False, left: int = 70, bottom: int = 50, categories: list[str] | None = None,
                 y_ticks: bool = True, right: int = 210):
        self.w, self.h, self.title, self.xl, self.yl, self.log_y = width, height, title, x_label, y_label, log_y
        self.left, self.right, self.top, self.bottom = left, right, 34, bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = (math.log10(y_range[0]), math.log10(y_range[1])) if log_y else y_range
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 1, self.y1 + 1
        self.categories, self.y_ticks = categories, y_ticks
        self.body: list[str] = []
        self.legend: list[tuple[str, str, str]] = []   # (label, colour, shape)

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        v = math.log10(max(v, 10 ** self.y0)) if self.log_y else v
        return self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def point(self, x, y, colour, r=5, hollow=False, tip=""):
        fill = "none" if hollow else colour
        self.body.append(f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="{r}" fill="{fill}" '
                         f'stroke="{colour}" stroke-width="1.5"><title>{html.escape(tip)}</title></circle>')

    def label(self, x, y, text, dx=6, dy=-6, size=10):
        self.body.append(f'<text x="{self.x(x) + dx:.1f}" y="{self.y(y) + dy:.1f}" font-size="{size}">'
                         f'{html.escape(text)}</text>')

    def polyline(self, points, colour="#000", dash="5,4"):
        pts = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in points)
        self.body.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-dasharray="{dash}"/>')

    def rect(self, x, y_low, width, y_high, colour, outline=None, tip=""):
        """A box from (x, y_low) to (x + width, y_high) in data coordinates."""
        left, right = self.x(x), self.x(x + width)
        top, low = self.y(y_high), self.y(y_low)
        stroke = f' stroke="{outline}" stroke-width="1.5"' if outline else ""
        self.body.append(f'<rect x="{left:.1f}" y="{min(top, low):.1f}" width="{max(right - left, 1.5):.1f}" '
                         f'height="{abs(low - top):.1f}" fill="{colour}"{stroke}><title>{html.escape(tip)}</title></rect>')

    def tick_mark(self, x, y, half_height, colour, tip=""):
        self.body.append(f'<line x1="{self.x(x):.1f}" x2="{self.x(x):.1f}" y1="{self.y(y) - half_height:.1f}" '
                         f'y2="{self.y(y) + half_height:.1f}" stroke="{colour}" stroke-width="2">'
                         f'<title>{html.escape(tip)}</title></line>')

    def key(self, label, colour, shape="box"):
        self.legend.append((label, colour, shape))

    def _axes(self) -> list[str]:
        out = []
        x_lo, x_hi, y_lo, y_hi = self.left, self.w - self.right, self.h - self.bottom, self.top
        out.append(f'<rect x="{x_lo}" y="{y_hi}" width="{x_hi - x_lo}" height="{y_lo - y_hi}" fill="#fff" stroke="#333"/>')
        if self.categories is None:
            for t in _nice_ticks(self.x0, self.x1):
                px = self.x(t)
                out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y_hi}" y2="{y_lo}" stroke="#ddd"/>'
                           f'<text x="{px:.1f}" y="{y_lo + 15}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
        else:
            for i, name in enumerate(self.categories):
                px = self.x(i)
                for n, part in enumerate(name.split("\n")):
                    out.append(f'<text x="{px:.1f}" y="{y_lo + 14 + 11 * n}" font-size="9" text-anchor="middle">'
                               f'{html.escape(part)}</text>')
        ticks = range(math.floor(self.y0), math.ceil(self.y1) + 1) if self.log_y else _nice_ticks(self.y0, self.y1)
        ticks = ticks if self.y_ticks else []
        for t in ticks:
            if not self.y0 - 1e-9 <= t <= self.y1 + 1e-9:
                continue
            py = self.y(10 ** t if self.log_y else t)
            text = f"1e{t}" if self.log_y else _fmt(t)
            out.append(f'<line x1="{x_lo}" x2="{x_hi}" y1="{py:.1f}" y2="{py:.1f}" stroke="#ddd"/>'
                       f'<text x="{x_lo - 5}" y="{py + 3:.1f}" font-size="10" text-anchor="end">{text}</text>')
        out.append(f'<text x="{(x_lo + x_hi) / 2:.1f}" y="18" font-size="13" text-anchor="middle" '
                   f'font-weight="bold">{html.escape(self.title)}</text>')
        out.append(f'<text x="{(x_lo + x_hi) / 2:.1f}" y="{self.h - 6}" font-size="11" text-anchor="middle">'
                   f'{html.escape(self.xl)}</text>')
        out.append(f'<text transform="translate(14 {(y_lo + y_hi) / 2:.1f}) rotate(-90)" font-size="11" '
                   f'text-anchor="middle">{html.escape(self.yl)}</text>')
        return out

    def _legend(self) -> list[str]:
        out = []
        for i, (label, colour, shape) in enumerate(self.legend):
            lx, ly = self.w - self.right + 16, self.top + 10 + 15 * i
            mark = (f'<line x1="{lx}" x2="{lx + 14}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-dasharray="4,3"/>'
                    if shape == "dash" else f'<rect x="{lx}" y="{ly - 5}" width="12" height="10" fill="{colour}"/>')
            out.append(f'{mark}<text x="{lx + 18}" y="{ly + 4}" font-size="10">{html.escape(label)}</text>')
        if out:
            h = 15 * len(self.legend) + 8
            out.insert(0, f'<rect x="{self.w - self.right + 10}" y="{self.top + 2}" width="192" height="{h}" '
                          f'fill="#fff" fill-opacity="0.85" stroke="#bbb"/>')
        return out

    def render(self) -> str:
        parts = [f'<svg viewBox="0 0 {self.w} {self.h}" width="{self.w}" height="{self.h}" role="img" '
                 f'font-family="sans-serif">', *self._axes(), *self.body, *self._legend(), "</svg>"]
        return "\n".join(parts)
