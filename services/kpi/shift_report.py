"""The shift report of a line: what the next shift's lead and the manager read.

One shift of one line, from what the API already stores: the line's `shift` record and
its machines', the same shift of the four weeks before (for output), the stop log, and
the plant config (target, reasons, rates). `shift_report` is pure and gives a JSON-ready
dict; `render_html` turns it into one self-contained HTML page that mail clients show as
it is (tables and inline styles only: no script, no stylesheet, no external image; bars
are table cells of a width).

What is not in it yet (docs/reports.md): alerts of the shift and their acknowledgement
times (they live in the alerts service), notes, charts as images, the PDF, delivery, and
the plant's daily and weekly reports.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from linepulse.calendar import ShiftSpan, text_ms, utc_text
from linepulse.costs import Pricing
from linepulse.figures import count, percent
from linepulse.production import LOSS_KEYS, UNASSIGNED
from services.kpi.money import losses_cost
from services.kpi.stops import CODE_STATES

LONGEST: Final = 5  # stops listed by length
_LOSS_LABELS: Final = {
    "equipment_failure_s": "Equipment failure",
    "setup_s": "Setup",
    "small_stops_s": "Small stops",
    "slow_cycles_s": "Slow cycles",
    "startup_rejects_s": "Start-up rejects",
    "production_rejects_s": "Production rejects",
    "no_data_s": "No data",
}


def _in_shift(stop: Mapping[str, Any], span: ShiftSpan) -> float:
    """Seconds of the stop within the shift (an open stop runs to the shift's end)."""
    start = text_ms(stop["start"])
    end = span.end if stop["end"] is None else text_ms(stop["end"])
    return max(0, min(end, span.end) - max(start, span.start)) / 1000


def shift_report(
    pricing: Pricing,
    span: ShiftSpan,
    line_record: Mapping[str, Any],
    machine_records: Sequence[Mapping[str, Any]],
    earlier: Iterable[tuple[date, Mapping[str, Any] | None]],
    stops: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The report of one shift of one line: `line_record` and `machine_records` are the
    line's and its machines' `shift` records of `span`; `earlier` the same shift of the
    weeks before (date, line record or None); `stops` the line's stops near the shift."""
    plant = pricing.plant
    record = line_record
    priced = losses_cost(machine_records, pricing) if pricing.configured else None
    cost_of = {} if priced is None else priced["by_category"]
    losses = record["losses"]
    waterfall = [
        {
            "loss": key.removesuffix("_s"),
            "seconds": None if losses is None else losses[key],
            "cost": cost_of.get(key.removesuffix("_s")),
        }
        for key in LOSS_KEYS
    ]
    reason_costs = {} if priced is None else {r["reason"]: r["cost"] for r in priced["by_reason"]}
    unplanned = [
        {"reason": reason, "seconds": seconds, "cost": reason_costs.get(reason)}
        for reason, seconds in sorted(
            record["downtime_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])
        )
    ]
    in_shift = [(stop, _in_shift(stop, span)) for stop in stops]
    in_shift = [(stop, seconds) for stop, seconds in in_shift if seconds > 0]
    planned: dict[str, float] = {}
    for stop, seconds in in_shift:
        if stop["planned"]:
            planned[stop["reason"]] = planned.get(stop["reason"], 0.0) + seconds
    listed = [_stop(stop, seconds) for stop, seconds in in_shift]
    output = record["output_count"]
    target = record["target_count"]
    weeks: list[dict[str, Any]] = [
        {"date": day.isoformat(), "output_count": None if r is None else r["output_count"]}
        for day, r in earlier
    ]
    known = [w["output_count"] for w in weeks if w["output_count"] is not None]
    mean = sum(known) / len(known) if known else None
    return {
        "line": span.line,
        "date": span.day.isoformat(),
        "shift": span.name,
        "from": utc_text(span.start),
        "to": utc_text(span.end),
        "final": record["final"],
        "revision": record["revision"],
        "currency": None if priced is None else priced["currency"],
        "output": {
            "machine": next(line for line in plant.lines if line.id == span.line).output_machine.id,
            "count": output,
            "target": target,
            "vs_target": None if output is None or target is None else output - target,
            "same_shift_before": weeks,
            "mean_before": mean,
            "vs_mean_before": None if output is None or mean is None else output - mean,
        },
        "kpis": {
            name: record[name]
            for name in ("oee", "availability", "performance", "quality", "coverage")
        },
        "planned_s": record["planned_s"],
        "losses": waterfall,
        "fully_productive_s": record["fully_productive_s"],
        "loss_cost": None if priced is None else priced["total"],
        "downtime": {
            "unplanned": unplanned,
            "planned": [
                {"reason": reason, "seconds": seconds}
                for reason, seconds in sorted(planned.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        },
        "longest_stops": sorted(listed, key=lambda s: (-s["seconds"], s["start"]))[:LONGEST],
        "uncoded_stops": [
            s for s in listed if s["reason"] == UNASSIGNED and s["state"] in CODE_STATES
        ],
        "bottleneck": None
        if record["bottleneck"] is None
        else {"machine": record["bottleneck"], "stop_s": record["bottleneck_s"]},
        "quality": {
            "total_count": record["total_count"],
            "reject_count": record["reject_count"],
            "rework_count": record["rework_count"],
            "scrap_ratio": record["scrap_ratio"],
            "rework_ratio": record["rework_ratio"],
        },
        "stops": record["stops"],
    }


def _stop(stop: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "id": stop["id"],
        "machine": stop["machine"],
        "start": stop["start"],
        "end": stop["end"],
        "seconds": seconds,
        "state": stop["state"],
        "reason": stop["reason"],
        "planned": stop["planned"],
        "coded_by": stop["corrected_by"],
    }


# -- HTML -------------------------------------------------------------------------------

_CELL: Final = "padding:4px 8px;border-bottom:1px solid #ddd;"
_NUM: Final = _CELL + "text-align:right;white-space:nowrap;"


def _clock(utc: str, zone: ZoneInfo) -> str:
    return datetime.fromisoformat(utc).astimezone(zone).strftime("%H:%M")


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _money(value: float | None, currency: str | None) -> str:
    return "" if value is None or currency is None else f"{value:,.0f} {html.escape(currency)}"


def _bar(share: float, colour: str) -> str:
    """A bar of `share` of 160 px: cells of fixed pixel widths (an empty cell of 0 % is
    drawn wide by some engines, so a cell of no width is left out)."""
    filled = max(0, min(160, round(share * 160)))
    cells = [(filled, colour), (160 - filled, "#eee")]
    tds = "".join(
        f'<td width="{px}" style="background:{bg};height:10px;width:{px}px;"></td>'
        for px, bg in cells
        if px
    )
    return (
        '<table role="presentation" width="160" cellpadding="0" cellspacing="0" '
        f'style="border-collapse:collapse;width:160px;"><tr>{tds}</tr></table>'
    )


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numbers: Sequence[int] = ()) -> str:
    """A table; the columns at `numbers` (indices) are right-aligned figures."""
    cells = "".join(
        f'<th style="{_NUM if i in numbers else _CELL}text-align:'
        f'{"right" if i in numbers else "left"};">{h}</th>'
        for i, h in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="{_NUM if i in numbers else _CELL}">{c}</td>' for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<table cellpadding="0" cellspacing="0" style="border-collapse:collapse;'
        f'font-size:14px;margin:4px 0 16px 0;"><tr>{cells}</tr>{body}</table>'
    )


def render_html(report: Mapping[str, Any], site: str, zone: ZoneInfo) -> str:
    """The report as one HTML page that a mail client shows as it is; times in the
    plant's zone, as the shift lead lives them."""
    e = html.escape
    cur = report["currency"]
    out = report["output"]
    k = report["kpis"]
    planned = report["planned_s"] or 0.0
    productive = report["fully_productive_s"] or 0.0
    lost = _money(report["loss_cost"], cur)
    title = f"{e(report['line'])} · {e(report['shift'])} shift · {e(report['date'])}"
    parts = [
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>"
        '<body style="font-family:Arial,Helvetica,sans-serif;color:#222;max-width:720px;">',
        f'<h1 style="font-size:20px;margin:0 0 4px 0;">{title}</h1>',
        f'<p style="color:#666;margin:0 0 16px 0;">{e(site)} · '
        f"{_clock(report['from'], zone)}–{_clock(report['to'], zone)} ({e(str(zone))}) · "
        f"{'final' if report['final'] else 'still open'}</p>",
        '<h2 style="font-size:16px;">Output</h2>',
        _table(
            ["", "parts"],
            [
                [f"good out of {e(out['machine'])}", count(out["count"])],
                ["target", count(out["target"])],
                ["against target", count(out["vs_target"])],
                ["same shift, weeks before (mean)", count(out["mean_before"])],
            ],
            numbers=(1,),
        ),
        '<h2 style="font-size:16px;">OEE</h2>',
        _table(
            ["OEE", "availability", "performance", "quality", "data"],
            [
                [
                    percent(k["oee"]),
                    percent(k["availability"]),
                    percent(k["performance"]),
                    percent(k["quality"]),
                    percent(k["coverage"]),
                ]
            ],
            numbers=(0, 1, 2, 3, 4),
        ),
        '<h2 style="font-size:16px;">Where the time went</h2>',
        _table(
            ["", "", "time", "share", "cost"],
            [["Planned time", _bar(1.0, "#3498db"), _dur(planned), "100 %", ""]]
            + [
                [
                    _LOSS_LABELS[f"{step['loss']}_s"],
                    _bar((step["seconds"] or 0.0) / planned if planned else 0.0, "#e74c3c"),
                    _dur(step["seconds"]),
                    percent((step["seconds"] or 0.0) / planned if planned else None),
                    _money(step["cost"], cur),
                ]
                for step in report["losses"]
            ]
            + [
                [
                    "Fully productive",
                    _bar(productive / planned if planned else 0.0, "#2ecc71"),
                    _dur(report["fully_productive_s"]),
                    percent(productive / planned if planned else None),
                    f"losses {lost}" if lost else "",
                ]
            ],
            numbers=(2, 3, 4),
        ),
        '<h2 style="font-size:16px;">Downtime by reason</h2>',
        _table(
            ["unplanned", "time", "cost"],
            [
                [e(r["reason"]), _dur(r["seconds"]), _money(r["cost"], cur)]
                for r in report["downtime"]["unplanned"]
            ]
            or [["none", "", ""]],
            numbers=(1, 2),
        ),
        _table(
            ["planned", "time"],
            [[e(r["reason"]), _dur(r["seconds"])] for r in report["downtime"]["planned"]]
            or [["none", ""]],
            numbers=(1,),
        ),
        '<h2 style="font-size:16px;">Longest stops</h2>',
        _table(
            ["machine", "from", "time", "reason", "coded by"],
            [
                [
                    e(s["machine"]),
                    _clock(s["start"], zone),
                    _dur(s["seconds"]),
                    e(s["reason"]),
                    e(s["coded_by"] or "machine"),
                ]
                for s in report["longest_stops"]
            ]
            or [["none", "", "", "", ""]],
            numbers=(1, 2),
        ),
        f'<p style="margin:0 0 16px 0;">Stops still without a reason: '
        f"<b>{len(report['uncoded_stops'])}</b></p>",
    ]
    bottleneck = report["bottleneck"]
    quality = report["quality"]
    parts += [
        '<h2 style="font-size:16px;">Bottleneck, scrap and rework</h2>',
        _table(
            ["", ""],
            [
                ["bottleneck", e(bottleneck["machine"]) if bottleneck else "none"],
                [
                    "rejects",
                    f"{count(quality['reject_count'])} ({percent(quality['scrap_ratio'])})",
                ],
                [
                    "rework",
                    f"{count(quality['rework_count'])} ({percent(quality['rework_ratio'])})",
                ],
            ],
            numbers=(1,),
        ),
        "</body></html>",
    ]
    return "".join(parts)
