"""Inline SVG charts drawn on the server: no script, no external file, nothing fetched.

Only presentation attributes are used (``fill=``, ``stroke=``), never ``style=``, so the
dashboard's Content-Security-Policy needs no 'unsafe-inline'. Every text that reaches an
SVG goes through ``escape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
INK, MUTED, GRID = "#1f2933", "#7b8794", "#d9e2ec"
BLUE, BLUE_LIGHT, GREEN, RED = "#2f6fde", "#a9c4f5", "#1f9d55", "#d64545"


def pct(value: float | None, digits: int = 1) -> str:
    """0.5 -> '50%', 0.3333 -> '33.3%', None -> '–'."""
    if value is None:
        return "–"
    text = f"{value * 100:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value * 100:.0f}"
    return f"{text}%"


def pp(value: float | None) -> str:
    """A change of a rate, in percentage points with its sign."""
    if value is None:
        return "–"
    text = f"{abs(value) * 100:.1f}".rstrip("0").rstrip(".")
    return ("+" if value > 0 else "−" if value < 0 else "±") + f"{text} pp"


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}" font-family="{FONT}" font-size="12">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def trend(points: Sequence[tuple[str, float | None]], *, label: str, rate: bool = True, width: int = 168, height: int = 44) -> Markup:
    """A bar sparkline, oldest first; the last bar (this week) is the dark one; gaps for no data."""
    values = [v for _, v in points if v is not None]
    top = 1.0 if rate else max(values or [1]) or 1
    n = max(1, len(points))
    gap = 4
    bar_w = (width - gap * (n - 1)) / n
    body = [f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="{GRID}"/>']
    for i, (week, value) in enumerate(points):
        x = i * (bar_w + gap)
        shown = pct(value) if rate else ("–" if value is None else _f(value))
        if value is None:
            body.append(f'<rect x="{_f(x)}" y="{height - 2}" width="{_f(bar_w)}" height="2" fill="{GRID}">'
                        f"<title>{escape(week)}: no data</title></rect>")
            continue
        h = max(1.5, (height - 4) * min(1.0, max(0.0, value / top)))
        fill = BLUE if i == n - 1 else BLUE_LIGHT
        body.append(f'<rect x="{_f(x)}" y="{_f(height - 1 - h)}" width="{_f(bar_w)}" height="{_f(h)}" fill="{fill}" rx="1.5">'
                    f"<title>{escape(week)}: {escape(shown)}</title></rect>")
    return _svg(width, height, body, label)


def funnel(steps: Sequence[tuple[str, int]], *, label: str, width: int = 460) -> Markup:
    """Horizontal bars, each step's count and its share of the step before."""
    row, label_w, value_w = 30, 150, 110
    bar_space = width - label_w - value_w
    top = max([c for _, c in steps] + [1])
    body = []
    for i, (name, count) in enumerate(steps):
        y = i * row
        w = bar_space * count / top
        body.append(f'<text x="0" y="{y + 19}" fill="{INK}">{escape(name)}</text>')
        body.append(f'<rect x="{label_w}" y="{y + 5}" width="{bar_space}" height="20" fill="#f0f4f8" rx="3"/>')
        if count:
            body.append(f'<rect x="{label_w}" y="{y + 5}" width="{_f(max(w, 2))}" height="20" fill="{BLUE}" rx="3"/>')
        share = ""
        if i:
            before = steps[i - 1][1]
            share = f" ({pct(count / before, 0)})" if before else ""
        body.append(f'<text x="{label_w + bar_space + 8}" y="{y + 19}" fill="{INK}">{count}'
                    f'<tspan fill="{MUTED}">{escape(share)}</tspan></text>')
    return _svg(width, row * len(steps), body, label)


def interval(result: dict[str, Any], *, label: str, width: int = 460, height: int = 80) -> Markup:
    """Treated minus control conversion: the point and its 95% interval, against zero."""
    lift, ci = result.get("lift"), result.get("ci95")
    if lift is None or not ci:
        return _svg(width, 24, [f'<text x="0" y="16" fill="{MUTED}">no holdout to compare against</text>'], label)
    lo, hi = ci
    widest = max(abs(lo), abs(hi), abs(lift)) * 1.08
    span = next((s for s in (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0) if s >= widest), widest)  # a round axis
    left, right = 40, width - 40
    x = lambda v: left + (v + span) / (2 * span) * (right - left)  # noqa: E731
    colour = (GREEN if lo > 0 else RED if hi < 0 else MUTED) if result.get("significant") else MUTED  # too few to tell: not coloured
    axis_y, y = height - 22, 32
    body = [
        f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="{GRID}"/>',
        f'<line x1="{_f(x(0))}" y1="6" x2="{_f(x(0))}" y2="{axis_y}" stroke="{MUTED}" stroke-dasharray="3 3"/>',
    ]
    for tick in (-span, -span / 2, 0.0, span / 2, span):
        body.append(f'<line x1="{_f(x(tick))}" y1="{axis_y}" x2="{_f(x(tick))}" y2="{axis_y + 4}" stroke="{MUTED}"/>'
                    f'<text x="{_f(x(tick))}" y="{height - 6}" fill="{MUTED}" text-anchor="middle" font-size="11">'
                    f"{escape(pp(tick) if tick else '0')}</text>")
    body.append(f'<text x="{left}" y="12" fill="{MUTED}" font-size="11">holdout did better</text>'
                f'<text x="{right}" y="12" fill="{MUTED}" font-size="11" text-anchor="end">messages did better</text>')
    body += [
        f'<line x1="{_f(x(lo))}" y1="{y}" x2="{_f(x(hi))}" y2="{y}" stroke="{colour}" stroke-width="3"/>',
        f'<line x1="{_f(x(lo))}" y1="{y - 7}" x2="{_f(x(lo))}" y2="{y + 7}" stroke="{colour}" stroke-width="2"/>',
        f'<line x1="{_f(x(hi))}" y1="{y - 7}" x2="{_f(x(hi))}" y2="{y + 7}" stroke="{colour}" stroke-width="2"/>',
        f'<circle cx="{_f(x(lift))}" cy="{y}" r="6" fill="{colour}"><title>lift {escape(pp(lift))}, 95% interval '
        f"{escape(pp(lo))} to {escape(pp(hi))}</title></circle>",
        f'<text x="{_f(x(lift))}" y="{y - 12}" fill="{INK}" text-anchor="middle">{escape(pp(lift))}</text>',
    ]
    return _svg(width, height, body, label)
