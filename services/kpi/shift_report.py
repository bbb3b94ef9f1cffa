"""The shift report of a line: what the next shift's lead and the manager read.

One shift of one line, from what the API already stores: the line's `shift` record and
its machines', the same shift of the four weeks before (for output), the stop log, and
the plant config (target, reasons, rates). `shift_report` is pure and gives a JSON-ready
dict; `render_html` turns it into one self-contained HTML page that mail clients show as
it is (tables and inline styles only: no script, no stylesheet, no external image; bars
are table cells of a width).

The page prints to an A4 PDF as it is (linepulse/pdf.py). What is not in it
(docs/reports.md): alerts of the shift (the alerts service adds them to the page it
mails), notes, charts as images, and the plant's daily and weekly reports.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any, Final
from zoneinfo import ZoneInfo

from linepulse.calendar import ShiftSpan, utc_text
from linepulse.costs import Pricing
from linepulse.figures import count, percent
from linepulse.production import LOSS_KEYS
from linepulse.report_page import (
    bar,
    clock,
    duration,
    handover_html,
    heading,
    losses_table,
    money,
    page,
    process_control_html,
    table,
)
from services.kpi.money import losses_cost, reached
from services.kpi.stops import seconds_within, uncoded

LONGEST: Final = 5  # stops listed by length


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
    # A stop still open runs as far as the record reaches: to its latest event while the
    # shift runs, to the shift's end once it is over; not to an end still ahead.
    latest = reached([record])
    through = span.end if latest is None else min(span.end, int(latest.timestamp() * 1000))
    in_shift = [(stop, seconds_within(stop, span.start, through)) for stop in stops]
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
        "uncoded_stops": [s for s in listed if uncoded(s)],
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


def render_html(report: Mapping[str, Any], site: str, zone: ZoneInfo) -> str:
    """The report as one HTML page that a mail client shows as it is; times in the
    plant's zone, as the shift lead lives them."""
    e = html.escape
    cur = report["currency"]
    out = report["output"]
    k = report["kpis"]
    planned = report["planned_s"] or 0.0
    productive = report["fully_productive_s"] or 0.0
    lost = money(report["loss_cost"], cur)
    title = f"{e(report['line'])} · {e(report['shift'])} shift · {e(report['date'])}"
    subtitle = (
        f"{e(site)} · {clock(report['from'], zone)}–{clock(report['to'], zone)} "
        f"({e(str(zone))}) · {'final' if report['final'] else 'still open'}"
    )
    parts = [
        heading("Output"),
        table(
            ["", "parts"],
            [
                [f"good out of {e(out['machine'])}", count(out["count"])],
                ["target", count(out["target"])],
                ["against target", count(out["vs_target"])],
                ["same shift, weeks before (mean)", count(out["mean_before"])],
            ],
            numbers=(1,),
        ),
        heading("OEE"),
        table(
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
        heading("Where the time went"),
        losses_table(
            planned,
            report["losses"],
            cur,
            after=[
                [
                    "Fully productive",
                    bar(productive / planned if planned else 0.0, "#2ecc71"),
                    duration(report["fully_productive_s"]),
                    percent(productive / planned if planned else None),
                    f"losses {lost}" if lost else "",
                ]
            ],
        ),
        heading("Downtime by reason"),
        table(
            ["unplanned", "time", "cost"],
            [
                [e(r["reason"]), duration(r["seconds"]), money(r["cost"], cur)]
                for r in report["downtime"]["unplanned"]
            ]
            or [["none", "", ""]],
            numbers=(1, 2),
        ),
        table(
            ["planned", "time"],
            [[e(r["reason"]), duration(r["seconds"])] for r in report["downtime"]["planned"]]
            or [["none", ""]],
            numbers=(1,),
        ),
        heading("Longest stops"),
        table(
            ["machine", "from", "time", "reason", "coded by"],
            [
                [
                    e(s["machine"]),
                    clock(s["start"], zone),
                    duration(s["seconds"]),
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
        heading("Bottleneck, scrap and rework"),
        table(
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
        process_control_html(report.get("process_control", [])),
        handover_html(report),
    ]
    return page(title, subtitle, parts)
