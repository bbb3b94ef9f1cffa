"""The building blocks of the reports' pages (services/kpi/shift_report.py,
services/kpi/plant_report.py, and the alerts section services/alerts/reports.py adds to
a mailed report): one look for every report a manager gets by mail.

Mail clients show only what is inline: tables, attributes and `style` attributes, no
script, no stylesheet link, no image to fetch. Bars are table cells of fixed pixel
widths. The one `<style>` element is for print only (linepulse/pdf.py: A4, a heading kept
with its table, background colours printed); mail clients ignore it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from linepulse.figures import percent

CELL: Final = "padding:4px 8px;border-bottom:1px solid #ddd;"
NUM: Final = CELL + "text-align:right;white-space:nowrap;"
BAR_PX: Final = 160
LOSS_LABELS: Final = {
    "equipment_failure_s": "Equipment failure",
    "setup_s": "Setup",
    "small_stops_s": "Small stops",
    "slow_cycles_s": "Slow cycles",
    "startup_rejects_s": "Start-up rejects",
    "production_rejects_s": "Production rejects",
    "no_data_s": "No data",
}


def pdf_name(kind: str, slug: str) -> str:
    """`shift-report_line-1_2026-11-02_early.pdf`: the file a report's PDF is named, the
    same from the API (Content-Disposition) and in the mail."""
    return f"{kind}-report_{slug}.pdf"


def clock(utc: str, zone: ZoneInfo) -> str:
    """`HH:MM` in the plant's zone of an RFC 3339 UTC time."""
    return datetime.fromisoformat(utc).astimezone(zone).strftime("%H:%M")


def duration(seconds: float | None) -> str:
    """`47 min`, `5 h 14 min`; `–` for unknown."""
    if seconds is None:
        return "–"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def money(value: float | None, currency: str | None) -> str:
    """`1,880 EUR`; empty where no rate is configured."""
    return "" if value is None or currency is None else f"{value:,.0f} {html.escape(currency)}"


def bar(share: float, colour: str) -> str:
    """A bar of `share` of `BAR_PX` px: cells of fixed pixel widths (an empty cell of 0 %
    is drawn wide by some engines, so a cell of no width is left out)."""
    filled = max(0, min(BAR_PX, round(share * BAR_PX)))
    cells = [(filled, colour), (BAR_PX - filled, "#eee")]
    tds = "".join(
        f'<td width="{px}" style="background:{bg};height:10px;width:{px}px;"></td>'
        for px, bg in cells
        if px
    )
    return (
        f'<table role="presentation" width="{BAR_PX}" cellpadding="0" cellspacing="0" '
        f'style="border-collapse:collapse;width:{BAR_PX}px;"><tr>{tds}</tr></table>'
    )


def table(head: Sequence[str], rows: Iterable[Sequence[str]], numbers: Sequence[int] = ()) -> str:
    """A table; the columns at `numbers` (indices) are right-aligned figures."""
    cells = "".join(
        f'<th style="{NUM if i in numbers else CELL}text-align:'
        f'{"right" if i in numbers else "left"};">{h}</th>'
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{NUM if i in numbers else CELL}">{c}</td>' for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<table cellpadding="0" cellspacing="0" style="border-collapse:collapse;'
        f'font-size:14px;margin:4px 0 16px 0;"><tr>{cells}</tr>{body}</table>'
    )


def losses_table(
    planned_s: float,
    losses: Iterable[Mapping[str, Any]],
    currency: str | None,
    after: Iterable[Sequence[str]] = (),
) -> str:
    """Where the time went: the planned time, then each loss (`loss`, `seconds`, `cost`)
    as a bar of its share, its time, share and cost; `after`: rows to close with."""

    def share(seconds: float | None) -> float:
        return (seconds or 0.0) / planned_s if planned_s else 0.0

    return table(
        ["", "", "time", "share", "cost"],
        [
            ["Planned time", bar(1.0, "#3498db"), duration(planned_s), "100 %", ""],
            *(
                [
                    LOSS_LABELS[f"{step['loss']}_s"],
                    bar(share(step["seconds"]), "#e74c3c"),
                    duration(step["seconds"]),
                    percent(share(step["seconds"]) if planned_s else None),
                    money(step["cost"], currency),
                ]
                for step in losses
            ),
            *after,
        ],
        numbers=(2, 3, 4),
    )


def heading(text: str) -> str:
    return f'<h2 style="font-size:16px;">{text}</h2>'


# Where a mailed page gets its charts (linepulse/report_charts.py): an HTML comment, so
# the page read in a browser or printed shows nothing there.
CHARTS_MARK: Final = "<!--charts-->"


def page(title: str, subtitle: str, parts: Iterable[str]) -> str:
    """One whole document: `title` (escaped by the caller) as the title and the heading,
    `subtitle` under it, the place of the mail's charts, then `parts`."""
    return "".join(
        [
            '<!doctype html><html><head><meta charset="utf-8">'
            "<style>@page{size:A4;margin:12mm}h2{break-after:avoid}table{break-inside:avoid}"
            "</style>"
            f"<title>{title}</title></head>"
            '<body style="font-family:Arial,Helvetica,sans-serif;color:#222;max-width:720px;'
            '-webkit-print-color-adjust:exact;print-color-adjust:exact;">',
            f'<h1 style="font-size:20px;margin:0 0 4px 0;">{title}</h1>',
            f'<p style="color:#666;margin:0 0 16px 0;">{subtitle}</p>',
            CHARTS_MARK,
            *parts,
            "</body></html>",
        ]
    )


def process_control_html(charts: Sequence[Mapping[str, Any]]) -> str:
    """A shift report's process control section: each control chart of the line over
    the shift (linepulse/spc_stream.py `chart_summary`); nothing without charts."""
    if not charts:
        return ""

    def fig(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    rows = [
        [
            html.escape(chart["chart"]),
            str(chart["subgroups"]),
            html.escape(", ".join(f"{rule} ×{n}" for rule, n in chart["broken"].items())) or "none",
            fig(None if chart["capability"] is None else chart["capability"]["cpk"]),
            fig(None if chart["capability"] is None else chart["capability"]["ppk"]),
        ]
        for chart in charts
    ]
    head = ["chart", "subgroups", "rules broken", "Cpk", "Ppk"]
    return heading("Process control") + table(head, rows, numbers=(1, 3, 4))


def process_control_text(charts: Sequence[Mapping[str, Any]]) -> str:
    """The process control section as lines of the mail's text part."""
    lines = []
    for chart in charts:
        broken = ", ".join(f"{rule} x{n}" for rule, n in chart["broken"].items()) or "none"
        cap = chart["capability"]
        cpk = "" if cap is None or cap["cpk"] is None else f"; Cpk {cap['cpk']:.2f}"
        lines.append(f"spc {chart['chart']}: {chart['subgroups']} subgroups, broken: {broken}{cpk}")
    return "".join(line + "\n" for line in lines)


def notes_html(notes: list[dict[str, Any]]) -> str:
    """The report page's notes section (linepulse/report_page), or nothing without notes."""
    if not notes:
        return ""
    e = html.escape
    rows = [[e(note["by"]), e(note["text"]).replace("\n", "<br>")] for note in notes]
    return heading("Notes") + table(["by", "note"], rows)


def notes_text(notes: list[dict[str, Any]]) -> str:
    """The notes as lines of the mail's text part (a note's further lines indented)."""
    return "".join(
        f"note by {note['by']}: " + "\n  ".join(note["text"].splitlines()) + "\n" for note in notes
    )


def alerts_html(raised: dict[str, Any]) -> str:
    """The report page's alerts section, in the page's own style (linepulse/report_page)."""
    e = html.escape
    summary = (
        f"{raised['raised']} raised, {raised['acknowledged']} acknowledged "
        f"(mean {minutes(raised['mean_time_to_ack_s'])}), {raised['resolved']} resolved"
    )
    listed = (
        table(
            ["alert", "severity", "acknowledged by", "after", "now"],
            [
                [
                    e(a["summary"]),
                    e(a["severity"]),
                    e(a["acked_by"] or "–"),
                    minutes(a["time_to_ack_s"]),
                    "resolved" if a["resolved_at"] else "open",
                ]
                for a in raised["list"]
            ],
            numbers=(3,),
        )
        if raised["list"]
        else ""
    )
    return f'{heading("Alerts")}<p style="margin:0 0 8px 0;">{summary}</p>{listed}'


def minutes(seconds: float | None) -> str:
    """A wait in whole minutes (an alert's time to acknowledge); "–" for none."""
    return "–" if seconds is None else f"{round(seconds / 60)} min"


def handover_html(report: Mapping[str, Any]) -> str:
    """The shift's notes and alerts where the report has them (the alerts service's
    `handover`: mailed, or asked by the KPI API), or why it has none; nothing for a report
    made without them."""
    if "handover_error" in report:
        said = html.escape(report["handover_error"])
        return heading("Notes and alerts") + f'<p style="margin:0 0 16px 0;">Not shown: {said}</p>'
    if "alerts" not in report:
        return ""
    gone = (
        ""
        if report.get("alerts_complete", True)
        else '<p style="margin:0 0 16px 0;">Alerts resolved more than 24 h ago are no longer '
        "kept: some of this shift's may be missing.</p>"
    )
    return notes_html(report.get("notes") or []) + alerts_html(report["alerts"]) + gone
