"""An inline SVG chart of one endpoint's latency sample: no JavaScript, no external files."""

from __future__ import annotations

from html import escape

from checks.evidence import Series

WIDTH, HEIGHT, PAD = 420, 160, 34


def latency_svg(series: Series) -> str:
    """Bars per request in order, with dashed warn (amber) and alert (red) lines and the p95."""
    values = series.values_ms or (0.0,)
    top = max(max(values), series.alert_ms) * 1.1
    plot_w, plot_h = WIDTH - PAD - 8, HEIGHT - 2 * 16

    def y(ms: float) -> float:
        return 16 + plot_h - (ms / top) * plot_h

    bar_w = plot_w / len(values)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family="sans-serif" font-size="10">',
        f"<title>{escape(series.name)}: latency of {len(series.values_ms)} requests</title>",
        f'<rect x="{PAD}" y="16" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for i, ms in enumerate(values):
        colour = "#c0392b" if ms > series.alert_ms else "#e67e22" if ms > series.warn_ms else "#2e86c1"
        top_y = y(ms)
        parts.append(
            f'<rect x="{PAD + i * bar_w + 1:.1f}" y="{top_y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{16 + plot_h - top_y:.1f}" fill="{colour}"><title>#{i + 1}: {ms:.0f} ms'
            "</title></rect>"
        )
    for label, ms, colour in (("warn", series.warn_ms, "#e67e22"), ("alert", series.alert_ms, "#c0392b")):
        parts.append(
            f'<line x1="{PAD}" x2="{PAD + plot_w}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" '
            f'stroke="{colour}" stroke-dasharray="4 3"/>'
            f'<text x="2" y="{y(ms) + 3:.1f}" fill="{colour}">{label}</text>'
        )
    if series.p95_ms is not None:
        parts.append(
            f'<line x1="{PAD}" x2="{PAD + plot_w}" y1="{y(series.p95_ms):.1f}" '
            f'y2="{y(series.p95_ms):.1f}" stroke="#333"/>'
        )
    p95 = f"p95 {series.p95_ms:.0f} ms" if series.p95_ms is not None else "no p95"
    parts.append(
        f'<text x="{PAD}" y="11">{escape(series.name)}: {p95} over {len(series.values_ms)} '
        f"requests (warn {series.warn_ms:g}, alert {series.alert_ms:g} ms)</text>"
    )
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 3}">requests in order; 0 ms at the axis</text>')
    parts.append("</svg>")
    return "".join(parts)
