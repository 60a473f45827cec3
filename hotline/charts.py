"""Server-side SVG charts for the supervisors' dashboard: no CDN, no script library.

The console's CSP allows only same-origin scripts and styles, so charts are plain inline ``<svg>`` markup
coloured with presentation attributes (``fill=``, ``stroke=``), which CSP does not treat as styles.
Every label comes from data (department and street names) and is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Colour per rate, the same in the trend lines and the ranking bars.
RATE_SERIES = (("response_rate", "响应率", "#1565c0"), ("resolution_rate", "解决率", "#2e7d32"),
               ("satisfaction_rate", "满意率", "#ef6c00"))


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[float | None]  # 0..1 per label; None where there was nothing to rate


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def line_chart(labels: Sequence[str], series: Sequence[Series], *, width: int = 720, height: int = 280,
               chart_id: str = "trend") -> Markup:
    """Trend lines of rates (0–100 %) over ``labels`` (weeks); a gap where a value is None."""
    left, right, top, bottom = 48, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(1.0, v)))

    out = [f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-label="三率周趋势">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        ty = y(tick)
        out.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" stroke="#e0e3e8"/>')
        out.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" text-anchor="end" fill="#667">'
                   f'{int(tick * 100)}%</text>')
    for i, label in enumerate(labels):
        out.append(f'<text x="{x(i):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle" '
                   f'fill="#667">{escape(label)}</text>')
    if not n:
        out.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" fill="#667">暂无数据</text>')
    for s_i, s in enumerate(series):
        # Consecutive known points form one polyline; a None breaks the line instead of faking a zero.
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values[:n]):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
            out.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{s.colour}">'
                       f'<title>{escape(s.name)} {escape(labels[i])}: {_pct(v)}</title></circle>')
        if run:
            runs.append(run)
        for r in runs:
            out.append(f'<polyline class="series" data-series="{escape(s.name)}" fill="none" stroke="{s.colour}" '
                       f'stroke-width="2" points="{" ".join(r)}"/>')
        lx = left + s_i * 90
        out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{s.colour}"/>'
                   f'<text x="{lx + 16}" y="16" font-size="12" fill="#222">{escape(s.name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(items: Sequence[tuple[str, float | None]], *, title: str, width: int = 720, bar_h: int = 20,
              colour: str = "#1565c0", chart_id: str = "ranking") -> Markup:
    """Horizontal ranking bars (0–100 %), best first as given; a unit without a value gets no bar."""
    label_w, right, gap, top = 150, 60, 6, 8
    plot_w = width - label_w - right
    height = top * 2 + max(1, len(items)) * (bar_h + gap)
    out = [f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-label="{escape(title)}">']
    if not items:
        out.append(f'<text x="{width / 2:.0f}" y="{height / 2 + 4:.0f}" text-anchor="middle" fill="#667">'
                   "暂无数据</text>")
    for i, (label, value) in enumerate(items):
        by = top + i * (bar_h + gap)
        short = label if len(label) <= 10 else label[:9] + "…"
        out.append(f'<text x="{label_w - 8}" y="{by + bar_h - 5}" font-size="12" text-anchor="end" fill="#222">'
                   f"{i + 1}. {escape(short)}<title>{escape(label)}</title></text>")
        if value is None:
            out.append(f'<text x="{label_w}" y="{by + bar_h - 5}" font-size="12" fill="#667">—</text>')
            continue
        w = max(1.0, plot_w * max(0.0, min(1.0, value)))
        out.append(f'<rect class="bar" data-key="{escape(label)}" x="{label_w}" y="{by}" width="{w:.1f}" '
                   f'height="{bar_h}" fill="{colour}"><title>{escape(label)}: {_pct(value)}</title></rect>')
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 5}" font-size="12" fill="#222">'
                   f"{_pct(value)}</text>")
    out.append("</svg>")
    return Markup("".join(out))
