"""Line charts as inline SVG, drawn in Python: the report must open anywhere, offline, with no
script and nothing fetched from the network."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Mark", "Series", "downsample", "line_chart", "nice_ticks"]

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")

Point = tuple[float, float | None]
"""(x, y); a y of None breaks the line (e.g. the gap between a stop and a resume)."""


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    colour: str = PALETTE[0]
    dash: str | None = None
    """An SVG stroke-dasharray, so lines that coincide stay distinguishable."""
    width: float = 1.8
    """The line's stroke width: a wide pale line under a narrow one shows both where they coincide."""
    opacity: float = 1.0


@dataclass(frozen=True)
class Mark:
    """A moment worth seeing on the time axis (a pause, a resume, a stop): a dashed vertical line."""

    x: float
    label: str
    kind: str = "control"
    """``resume`` marks are drawn solid and coloured (a new segment of the run starts there)."""


def _stroke(series: Series) -> str:
    dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
    opacity = f' stroke-opacity="{series.opacity:g}"' if series.opacity < 1 else ""
    return f' fill="none" stroke="{series.colour}" stroke-width="{series.width:g}"{dash}{opacity}'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: 1, 2 or 5 times a power of ten apart."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < high - step * 1e-9:  # the last tick is at or above ``high``: nothing overflows
        ticks.append(round(start + len(ticks) * step, 10))
    return ticks if len(ticks) >= 2 else [start, start + step]


def downsample(points: Sequence[Point], limit: int = 600) -> list[Point]:
    """At most about ``limit`` points, keeping each bucket's largest value (peaks stay visible) and
    every line break."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / limit)
    kept: list[Point] = []
    for index in range(0, len(points), size):
        bucket = points[index : index + size]
        if any(y is None for _, y in bucket):
            kept.extend(p for p in bucket if p[1] is None)
        valued = [p for p in bucket if p[1] is not None]
        if valued:
            kept.append(max(valued, key=lambda p: p[1] or 0.0))
    return kept


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def _fmt_time(seconds: float, span: float) -> str:
    """Short runs in seconds (``7.5s``), longer ones as m:ss, very long ones as h:mm."""
    if span < 120:
        return f"{seconds:g}s"
    whole = round(seconds)
    if span >= 3 * 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"


def _draw_series(
    parts: list[str],
    series: Sequence[Series],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    left: int,
    top: int,
) -> None:
    """Each series' polylines (a lone point: a dot) and its legend entry, in drawing order; the
    legend sits between the title and the plot, where no line can run over it."""
    legend_x = left + 8
    for item in series:
        segments: list[list[str]] = [[]]
        for px, py in downsample(item.points):
            if py is None:
                segments.append([])
            else:
                segments[-1].append(f"{sx(px):.1f},{sy(py):.1f}")
        for segment in segments:
            if len(segment) == 1:
                cx, cy = segment[0].split(",")
                parts.append(
                    f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{item.colour}" '
                    f'data-series="{escape(item.name)}"/>'
                )
            elif segment:
                parts.append(
                    f"<polyline{_stroke(item)} "
                    f'data-series="{escape(item.name)}" points="{" ".join(segment)}"/>'
                )
        parts.append(
            f'<line x1="{legend_x}" y1="{top - 10}" x2="{legend_x + 22}" y2="{top - 10}"{_stroke(item)}/>'
            f'<text x="{legend_x + 26}" y="{top - 6}" class="legend">{escape(item.name)}</text>'
        )
        legend_x += 36 + 7 * len(item.name)


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    y_label: str,
    width: int = 900,
    height: int = 260,
    x_is_time: bool = True,
    x_range: tuple[float, float] | None = None,
    marks: Sequence[Mark] = (),
    note: str | None = None,
) -> str:
    """An SVG line chart; each series is a polyline (split at breaks) with a legend entry that
    shows its line (colour, dashes, width). ``x_range`` lets several charts share one time axis;
    ``note`` is a line under the title (e.g. which lines coincide)."""
    left, right, top, bottom = 64, 16, 50, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [(x, y) for s in series for x, y in s.points if y is not None]
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="20" class="chart-title">{escape(title)}</text>',
    ]
    if not values:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="no-data">'
            "no data recorded</text></svg>"
        )
        return "".join(parts)
    x_low, x_high = x_range or (min(x for x, _ in values), max(x for x, _ in values))
    if x_high <= x_low:
        x_high = x_low + 1.0
    y_ticks = nice_ticks(0.0, max(y for _, y in values if y is not None) or 1.0)
    y_high = y_ticks[-1]
    x_ticks = [t for t in nice_ticks(x_low, x_high, 6) if x_low <= t <= x_high]

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y / y_high) * plot_h if y_high else top + plot_h

    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>'
        )
    for tick in x_ticks:
        x = sx(tick)
        label = _fmt_time(tick, x_high - x_low) if x_is_time else _fmt(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class="grid"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">{label}</text>'
        )
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    last_x, lift = -1e9, 0
    for mark in sorted(marks, key=lambda m: m.x):
        if x_low <= mark.x <= x_high:
            x = sx(mark.x)
            lift = lift + 12 if x - last_x < 60 else 0  # labels of close marks are stacked, not overlaid
            last_x = x
            kind = escape(mark.kind)
            near_end = x + 6 * len(mark.label) > left + plot_w  # its label goes left of the line
            anchor = f'x="{x - 3:.1f}" text-anchor="end"' if near_end else f'x="{x + 3:.1f}"'
            parts.append(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class="mark {kind}"/>'
                f'<text {anchor} y="{top + plot_h - 4 - lift}" class="mark-label {kind}">'
                f"{escape(mark.label)}</text>"
            )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" class="axis" transform="rotate(-90 14 '
        f'{top + plot_h / 2:.1f})" text-anchor="middle">{escape(y_label)}</text>'
    )
    x_name = "time since the run started" if x_is_time else ""
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="axis" text-anchor="middle">'
        f"{x_name}</text>"
    )
    _draw_series(parts, series, sx, sy, left, top)
    if note:
        parts.append(f'<text x="{left + plot_w}" y="20" text-anchor="end" class="note">{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)
