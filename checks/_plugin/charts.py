"""An inline SVG chart of one endpoint's latency sample: no JavaScript, no external files.

Bars are the requests in the order they were sent; the y axis is response time in ms with
numbered ticks; dashed lines mark the warn (amber) and alert (red) limits and a solid one the
p95, each labelled with its value at the right.
"""

from __future__ import annotations

import math
from html import escape

from checks.evidence import Series

WIDTH, HEIGHT = 600, 230
LEFT, RIGHT, TOP, BOTTOM = 58, 96, 26, 42
WARN, ALERT, OK, INK = "#b9770e", "#c0392b", "#2e86c1", "#333"


def ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `top` (1, 2 or 5 times a power of ten apart)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def latency_svg(series: Series) -> str:
    """The chart of one endpoint's sample, with labelled axes and its warn, alert and p95 lines."""
    values = series.values_ms
    marks = ticks(max(*values, series.alert_ms, 1.0) if values else series.alert_ms)
    top = marks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = len(values)

    def y(ms: float) -> float:
        return TOP + plot_h - (min(ms, top) / top) * plot_h

    p95 = f"p95 {series.p95_ms:.0f} ms" if series.p95_ms is not None else "no p95"
    title = (f"{series.name}: {p95} over {count} requests "
             f"(warn {series.warn_ms:g}, alert {series.alert_ms:g} ms)")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="latency-chart" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="15" font-weight="bold">{escape(series.name)}</text>',
        f'<text x="{LEFT + plot_w}" y="15" text-anchor="end">{escape(p95)} over {count} requests</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for mark in marks:  # the y axis: ms, numbered
        parts.append(
            f'<line x1="{LEFT - 4}" x2="{LEFT + plot_w}" y1="{y(mark):.1f}" y2="{y(mark):.1f}" '
            f'stroke="#e4e4e4"/><text x="{LEFT - 7}" y="{y(mark) + 4:.1f}" text-anchor="end">'
            f"{mark:g}</text>"
        )
    parts.append(
        f'<text transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
        "response time (ms)</text>"
    )
    bar_w = plot_w / max(count, 1)
    for i, ms in enumerate(values):
        colour = ALERT if ms > series.alert_ms else WARN if ms > series.warn_ms else OK
        top_y = y(ms)
        parts.append(
            f'<rect x="{LEFT + i * bar_w + 1:.1f}" y="{top_y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{TOP + plot_h - top_y:.1f}" fill="{colour}"><title>request {i + 1}: {ms:.0f} ms'
            "</title></rect>"
        )
    for i in sorted({0, count // 2, count - 1} if count else set()):  # the x axis: request numbers
        parts.append(f'<text x="{LEFT + (i + 0.5) * bar_w:.1f}" y="{TOP + plot_h + 14}" '
                     f'text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle">'
                 "request, in the order sent</text>")
    lines = [("warn", series.warn_ms, WARN, "5 3"), ("alert", series.alert_ms, ALERT, "5 3")]
    if series.p95_ms is not None:
        lines.append(("p95", series.p95_ms, INK, ""))
    for label, ms, colour, dash in lines:
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" '
            f'stroke="{colour}" stroke-width="1.5"{dashes}/>'
            f'<text x="{LEFT + plot_w + 6}" y="{y(ms) + 4:.1f}" fill="{colour}">{label} {ms:.0f} ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
