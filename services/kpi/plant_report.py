"""The plant report: every line side by side for one shift, one production day or one ISO
week, with the plant's figures, what the operations manager reads each morning and each
Monday.

Built from the stored line and machine records of the period (`shift` records for a
shift, `day` records for a day and for a week), so it is pure: records in, a JSON-ready
dict out. As everywhere (services/kpi/trends.py), a figure over several records is summed
first and divided after, never a mean of ratios: a line's week, and the plant's shift,
day or week, read as one record of their sums would (`Totals`). Money is the machine
records priced (services/kpi/money.py), so the lines' costs add up to the plant's, and so
do the reasons'.

`render_html` gives the mail-safe page (linepulse/report_page.py), which prints to PDF
as it is (linepulse/pdf.py).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from linepulse.calendar import iso_week, utc_text
from linepulse.costs import Pricing
from linepulse.figures import count, percent
from linepulse.production import LOSS_KEYS
from linepulse.report_page import duration, heading, losses_table, money, page, table
from services.kpi.money import losses_cost, reached
from services.kpi.stops import seconds_within, uncoded
from services.kpi.trends import Totals

Period = Literal["shift", "day", "week"]
# The record kind each period is made of.
WINDOW_OF: Final[dict[Period, Literal["shift", "day"]]] = {
    "shift": "shift",
    "day": "day",
    "week": "day",
}


@dataclass(frozen=True)
class PlantPeriod:
    """What a plant report covers: `day` is the shift's or the day's production date, or
    the Monday of the week; `shift` the shift's name for a shift report."""

    period: Period
    day: date
    shift: str | None
    start: int  # epoch ms, UTC
    end: int

    @property
    def label(self) -> str:
        if self.period == "week":
            return f"week {iso_week(self.day)}"
        if self.period == "day":
            return f"day {self.day.isoformat()}"
        return f"{self.shift} shift {self.day.isoformat()}"

    @property
    def slug(self) -> str:
        """`day_2026-11-02`, `week_2026-W45`, `early_2026-11-02`: names its files."""
        return self.label.replace(" shift ", "_").replace(" ", "_")


def _targets(records: Sequence[Mapping[str, Any]]) -> int | None:
    targets = [r["target_count"] for r in records]
    return None if not targets or any(t is None for t in targets) else sum(targets)


def _figures(totals: Totals, target: int | None, cost: float | None) -> dict[str, Any]:
    output = totals.output_count
    return {
        "final": totals.final,
        "planned_s": totals.planned_s,
        "output_count": output,
        "target_count": target,
        "vs_target": None if output is None or target is None else output - target,
        "kpis": totals.ratios(),
        "losses": {key.removesuffix("_s"): totals.losses[key] for key in LOSS_KEYS},
        "loss_cost": cost,
        "top_reasons": totals.top_reasons(),
    }


def _uncoded(stops: Sequence[Mapping[str, Any]], start: int, end: int) -> dict[str, Any]:
    """How many of the stops in [start, end) still wait for their reason, and their time
    in it (the board offers them for coding; the shift report lists them)."""
    waiting = [seconds_within(s, start, end) for s in stops if uncoded(s)]
    waiting = [seconds for seconds in waiting if seconds > 0]
    return {"uncoded_stops": len(waiting), "uncoded_s": sum(waiting)}


def plant_report(
    pricing: Pricing,
    covered: PlantPeriod,
    lines: Sequence[str],
    records: Sequence[Mapping[str, Any]],
    stops: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report of `covered` over `lines` (in that order) from `records`: the line and
    machine records of the period's window kind (one per line for a shift or a day, the
    days' for a week), and the stop log's stops that overlap it. A line without records
    is listed with `records: 0` and no figures (it did not run, or nothing of it reached
    the API)."""
    priced = losses_cost(records, pricing) if pricing.configured else None
    # A stop still open runs to the period's end once it is over, else as far as its open
    # records reach (their latest event), not to an end still ahead.
    latest = reached(r for r in records if r["machine"] is None and not r["final"])
    through = covered.end
    if latest is not None:
        through = min(covered.end, int(latest.timestamp() * 1000))
    line_costs = {} if priced is None else {r["line"]: r["cost"] for r in priced["by_line"]}
    plant = Totals(days=0)
    plant_targets: list[int | None] = []
    listed = []
    for line in lines:
        own = [r for r in records if r["line"] == line and r["machine"] is None]
        if not own:
            listed.append({"line": line, "records": 0})
            continue
        totals = Totals()
        for record in own:
            totals.merge(Totals.of(record))
        plant.merge(totals, same_day=True)
        target = _targets(own)
        plant_targets.append(target)
        cost = None if priced is None else line_costs.get(line, 0.0)
        waiting = _uncoded([s for s in stops if s["line"] == line], covered.start, through)
        listed.append(
            {"line": line, "records": len(own), **_figures(totals, target, cost), **waiting}
        )
    ran = [entry for entry in listed if entry["records"]]
    plant_target = (
        None if not plant_targets or None in plant_targets else sum(t or 0 for t in plant_targets)
    )
    by_category = {} if priced is None else priced["by_category"]
    reason_costs = {} if priced is None else {r["reason"]: r["cost"] for r in priced["by_reason"]}
    return {
        "period": covered.period,
        "date": covered.day.isoformat(),
        "shift": covered.shift,
        "label": covered.label,
        "from": utc_text(covered.start),
        "to": utc_text(covered.end),
        "final": bool(ran) and all(entry["final"] for entry in ran),
        "currency": None if priced is None else priced["currency"],
        "lines": listed,
        "plant": {
            **_figures(plant, plant_target, None if priced is None else priced["total"]),
            **_uncoded([s for s in stops if s["line"] in lines], covered.start, through),
            "final": bool(ran) and plant.final,
            "losses": [
                {
                    "loss": key.removesuffix("_s"),
                    "seconds": plant.losses[key],
                    "cost": by_category.get(key.removesuffix("_s")),
                }
                for key in LOSS_KEYS
            ],
            "downtime_by_reason": [
                {"reason": reason, "seconds": seconds, "cost": reason_costs.get(reason)}
                for reason, seconds in sorted(plant.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
                if seconds > 0
            ],
        },
    }


def render_html(report: Mapping[str, Any], site: str, zone: ZoneInfo) -> str:
    """The report as one page a mail client shows as it is; dates in the plant's zone."""
    e = html.escape
    cur = report["currency"]
    whole = report["plant"]
    title = f"Plant report · {e(report['label'])}"
    days = ""
    if report["period"] == "week":
        monday = date.fromisoformat(report["date"])
        days = f"{monday.isoformat()} to {(monday + timedelta(days=6)).isoformat()} · "
    state = "final" if report["final"] else "still open"
    subtitle = f"{e(site)} · {days}{e(str(zone))} · {state}"

    def row(name: str, figures: Mapping[str, Any]) -> list[str]:
        k = figures["kpis"]
        return [
            name,
            percent(k["oee"]),
            percent(k["availability"]),
            percent(k["performance"]),
            percent(k["quality"]),
            count(figures["output_count"]),
            count(figures["target_count"]),
            e(figures["top_reasons"][0]["reason"]) if figures["top_reasons"] else "–",
            f"{figures['uncoded_stops']} ({duration(figures['uncoded_s'])})"
            if figures["uncoded_stops"]
            else "0",
            money(figures["loss_cost"], cur),
        ]

    rows = [
        row(e(entry["line"]), entry)
        if entry["records"]
        else [e(entry["line"]), "no data", *[""] * 8]
        for entry in report["lines"]
    ]
    planned = whole["planned_s"] or 0.0
    parts = [
        heading("Lines"),
        table(
            [
                "line",
                "OEE",
                "avail.",
                "perf.",
                "quality",
                "output",
                "target",
                "top stop",
                "no reason",
                "losses",
            ],
            [*rows, [f"<b>{c}</b>" for c in row("plant", whole)]],
            numbers=(1, 2, 3, 4, 5, 6, 8, 9),
        ),
        heading("Where the plant's time went"),
        losses_table(planned, whole["losses"], cur),
        heading("Downtime by reason, all lines"),
        table(
            ["reason", "time", "cost"],
            [
                [e(r["reason"]), duration(r["seconds"]), money(r["cost"], cur)]
                for r in whole["downtime_by_reason"]
            ]
            or [["none", "", ""]],
            numbers=(1, 2),
        ),
    ]
    return page(title, subtitle, parts)
