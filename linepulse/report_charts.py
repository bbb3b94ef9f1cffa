"""The shift report's charts, as images for mail: where the time went (a waterfall from
planned to fully productive time) and the unplanned downtime by reason (a Pareto).

The report page shows its figures as tables with bars made of table cells, which every
mail client draws. A chart says more at a glance (a waterfall steps down, a Pareto ranks),
but mail clients draw no SVG and fetch no image: so each chart is drawn here as SVG from
the report's JSON, turned into a PNG by the headless Chromium that prints the PDF
(`Printer.png`), and sent inside the mail (a `cid:` image of a multipart/related part).
Pure: text in, text out.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from linepulse.report_page import LOSS_LABELS, duration, heading, money

WIDTH: Final = 640
ROW: Final = 26  # px a bar's row
TOP: Final = 34  # px above the first row (the chart's title)
LABEL: Final = 170  # px of the label column
BARS: Final = 300  # px of the bar area
MAX_REASONS: Final = 8  # reasons drawn; the rest summed as "other"
FONT: Final = "font-family:Arial,Helvetica,sans-serif"
COLOURS: Final = {"planned": "#3498db", "loss": "#e74c3c", "kept": "#2ecc71", "reason": "#e67e22"}
CID_DOMAIN: Final = "linepulse"


@dataclass(frozen=True)
class Chart:
    """One chart: `name` (its file and content id), what it shows in words (`alt`, also
    what a mail client shows without images), its size and its SVG."""

    name: str
    alt: str
    width: int
    height: int
    svg: str

    @property
    def cid(self) -> str:
        return f"{self.name}@{CID_DOMAIN}"


@dataclass(frozen=True)
class _Bar:
    label: str
    start: float  # where the bar begins, in the chart's unit
    length: float
    colour: str
    value: str  # the figure written right of the bar


def _svg(title: str, bars: Sequence[_Bar], scale: float) -> tuple[int, str]:
    """Horizontal bars under a title; `scale` is the unit that spans the bar area."""
    e = html.escape
    height = TOP + ROW * len(bars) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="0" y="20" style="{FONT};font-size:15px;font-weight:bold" fill="#222">'
        f"{e(title)}</text>",
    ]
    unit = BARS / scale if scale > 0 else 0.0
    for i, bar in enumerate(bars):
        y = TOP + i * ROW
        x = LABEL + max(0.0, bar.start) * unit
        width = max(1.0, bar.length * unit) if bar.length > 0 else 0.0
        parts += [
            f'<text x="0" y="{y + 17}" style="{FONT};font-size:13px" fill="#222">'
            f"{e(bar.label)}</text>",
            f'<rect x="{x:.1f}" y="{y + 4}" width="{width:.1f}" height="{ROW - 8}" '
            f'fill="{bar.colour}"/>',
            f'<text x="{LABEL + BARS + 8}" y="{y + 17}" style="{FONT};font-size:13px" '
            f'fill="#222">{e(bar.value)}</text>',
        ]
    parts.append("</svg>")
    return height, "".join(parts)


def losses_chart(report: Mapping[str, Any]) -> Chart | None:
    """The waterfall: planned time, each loss stepping down from what was left, and the
    fully productive time that remains. None without planned time."""
    planned = report["planned_s"] or 0.0
    if planned <= 0:
        return None
    cur = report["currency"]
    bars = [_Bar("Planned time", 0.0, planned, COLOURS["planned"], duration(planned))]
    left = planned
    for step in report["losses"]:
        seconds = step["seconds"] or 0.0
        left -= seconds
        cost = money(step["cost"], cur)
        value = f"{duration(seconds)} · {cost}" if cost else duration(seconds)
        label = LOSS_LABELS[f"{step['loss']}_s"]
        bars.append(_Bar(label, left, seconds, COLOURS["loss"], value))
    productive = report["fully_productive_s"] or 0.0
    share = f"{round(100 * productive / planned)} %"
    bars.append(_Bar("Fully productive", 0.0, productive, COLOURS["kept"], share))
    height, svg = _svg("Where the time went", bars, planned)
    words = ", ".join(f"{b.label} {b.value}" for b in bars)
    return Chart("losses", f"Where the time went: {words}", WIDTH, height, svg)


def downtime_chart(report: Mapping[str, Any]) -> Chart | None:
    """The unplanned downtime by reason, longest first, with the share of the downtime
    each reaches together with those before it (a Pareto). None without downtime."""
    reasons = sorted(report["downtime"]["unplanned"], key=lambda r: (-r["seconds"], r["reason"]))
    total = sum(r["seconds"] for r in reasons)
    if total <= 0:
        return None
    shown = reasons[:MAX_REASONS]
    rest = sum(r["seconds"] for r in reasons[MAX_REASONS:])
    rows = [(str(r["reason"]), float(r["seconds"])) for r in shown]
    if rest > 0:
        rows.append((f"other ({len(reasons) - MAX_REASONS})", rest))
    bars, reached = [], 0.0
    for reason, seconds in rows:
        reached += seconds
        value = f"{duration(seconds)} · {round(100 * reached / total)} % so far"
        bars.append(_Bar(reason, 0.0, seconds, COLOURS["reason"], value))
    height, svg = _svg("Unplanned downtime by reason", bars, rows[0][1])
    words = ", ".join(f"{b.label} {b.value}" for b in bars)
    return Chart("downtime", f"Unplanned downtime by reason: {words}", WIDTH, height, svg)


def shift_charts(report: Mapping[str, Any]) -> list[Chart]:
    """The charts of a shift report that has something to draw."""
    return [c for c in (losses_chart(report), downtime_chart(report)) if c is not None]


def chart_page(chart: Chart) -> str:
    """A page that is the chart and nothing else, for the browser to photograph at the
    chart's size."""
    return (
        '<!doctype html><html><head><meta charset="utf-8"></head>'
        '<body style="margin:0;background:#ffffff;overflow:hidden">'
        f"{chart.svg}</body></html>"
    )


def charts_html(charts: Sequence[Chart]) -> str:
    """The mail page's charts section: each chart as a `cid:` image of the mail."""
    e = html.escape
    images = "".join(
        f'<p style="margin:0 0 12px 0;"><img src="cid:{e(c.cid)}" width="{c.width}" '
        f'height="{c.height}" alt="{e(c.alt)}" style="display:block;max-width:100%;'
        f'height:auto;"></p>'
        for c in charts
    )
    return heading("Charts") + images if charts else ""
