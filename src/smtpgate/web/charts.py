"""Charts as inline SVG, drawn here on the server: no script and nothing fetched.

Every label goes through ``markupsafe.escape``; numbers are formatted by us. Each
shape carries a ``<title>`` (the browser's tooltip) and a ``data-`` attribute with
its value, which the browser tests read.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from smtpgate.web.authlog_view import Bucket

OK = "#2e7d32"
BAD = "#c62828"
LIMIT = "#455a64"


def timeline(buckets: Sequence[Bucket], *, label: str, width: int = 760,
             height: int = 200) -> Markup:
    """Stacked bars: successes (green) under failures (red), one bar per bucket."""
    top = max([b.successes + b.failures for b in buckets] + [1])
    left, bottom = 40, 24
    plot_w, plot_h = width - left - 8, height - bottom - 8
    bar = plot_w / max(1, len(buckets))
    parts = [
        (f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
         f'height="{height}" aria-label="{escape(label)}" data-chart="timeline">'),
        f"<title>{escape(label)}</title>",
        f'<line x1="{left}" y1="{8 + plot_h}" x2="{width - 8}" y2="{8 + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="14" text-anchor="end" font-size="10">{top}</text>',
        f'<text x="{left - 4}" y="{8 + plot_h}" text-anchor="end" font-size="10">0</text>',
    ]
    total_bad = total_ok = 0
    for i, b in enumerate(buckets):
        x = left + i * bar
        ok_h = plot_h * b.successes / top
        bad_h = plot_h * b.failures / top
        stamp = b.start.strftime("%Y-%m-%d %H:%M")
        total_ok += b.successes
        total_bad += b.failures
        if b.successes:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{8 + plot_h - ok_h:.1f}" width="{bar * 0.8:.1f}" '
                f'height="{ok_h:.1f}" fill="{OK}" data-successes="{b.successes}">'
                f"<title>{stamp} UTC: {b.successes} successes</title></rect>")
        if b.failures:
            parts.append(
                f'<rect class="fail" x="{x:.1f}" y="{8 + plot_h - ok_h - bad_h:.1f}" '
                f'width="{bar * 0.8:.1f}" height="{bad_h:.1f}" fill="{BAD}" '
                f'data-failures="{b.failures}"><title>{stamp} UTC: {b.failures} failures</title>'
                "</rect>")
    if buckets:
        for i in (0, len(buckets) // 2):
            parts.append(
                f'<text x="{left + i * bar:.1f}" y="{height - 6}" font-size="10">'
                f'{buckets[i].start.strftime("%m-%d %H:%M")}</text>')
        parts.append(f'<text x="{width - 8}" y="{height - 6}" font-size="10" '
                     'text-anchor="end">now (UTC)</text>')
    parts.append("</svg>")
    svg = "".join(parts).replace('data-chart="timeline"',
                                 f'data-chart="timeline" data-total-failures="{total_bad}" '
                                 f'data-total-successes="{total_ok}"', 1)
    return Markup(svg)


def bars(rows: Sequence[tuple[str, int, int | None]], *, label: str, width: int = 760,
         colour: str = BAD) -> Markup:
    """Horizontal bars, one per (label, value, limit or None); a limit is a dark tick."""
    if not rows:
        return Markup(f'<p class="empty">{escape(label)}: nothing to show.</p>')
    row_h, name_w = 22, width // 3
    height = row_h * len(rows) + 8
    top = max([max(v, lim or 0) for _, v, lim in rows] + [1])
    plot_w = width - name_w - 60
    parts = [
        (f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
         f'height="{height}" aria-label="{escape(label)}" data-chart="bars">'),
        f"<title>{escape(label)}</title>",
    ]
    for i, (name, value, limit) in enumerate(rows):
        y = 4 + i * row_h
        w = plot_w * value / top
        parts.append(
            f'<text x="{name_w - 6}" y="{y + 14}" text-anchor="end" font-size="11">'
            f"{escape(name[:48])}</text>"
            f'<rect x="{name_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{colour}" data-label="{escape(name)}" data-value="{value}">'
            f"<title>{escape(name)}: {value}</title></rect>"
            f'<text x="{name_w + w + 4:.1f}" y="{y + 14}" font-size="11">{value}'
            f'{"" if limit is None else f" / {limit}"}</text>')
        if limit is not None:
            lx = name_w + plot_w * limit / top
            parts.append(f'<line x1="{lx:.1f}" y1="{y + 1}" x2="{lx:.1f}" y2="{y + row_h - 3}" '
                         f'stroke="{LIMIT}" stroke-width="2"><title>limit {limit}</title></line>')
    parts.append("</svg>")
    return Markup("".join(parts))
