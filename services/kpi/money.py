"""Losses in money over a range, and the month so far against its budget.

Pure: stored records and the plant config in, JSON-ready dicts out (`GET /v1/costs`,
`GET /v1/costs/budget`). Each machine record is priced on its own (linepulse/costs.py:
its machine's and product's rates), and every total is a sum of those: a line's cost is
its machines' summed, the plant's its lines', and the downtime reasons sum to the
equipment failure and setup categories, so the views reconcile to the cent whatever the
rates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from linepulse.calendar import Calendar, local_to_ms, ms_to_local_date, text_ms, utc_text
from linepulse.costs import DOWNTIME, PRICED, LineCosts, Pricing
from services.kpi.trends import Totals


def losses_cost(records: Iterable[Mapping[str, Any]], pricing: Pricing) -> dict[str, Any]:
    """The machine records' losses in money, by category, reason, machine and line."""
    plant = pricing.plant
    by_category = dict.fromkeys(PRICED, 0.0)
    by_reason: dict[str, list[float]] = {}  # reason -> [cost, seconds]
    by_machine: dict[str, float] = {}
    by_line: dict[str, float] = {}
    lines = {m: line.id for m, (line, _) in plant.machines().items()}
    unpriced: set[str] = set()
    for record in records:
        machine = record["machine"]
        if machine is None:
            continue
        priced = pricing.price(record)
        if priced is None:
            if record["run_s"] > 0 or record["downtime_s"] > 0:
                unpriced.add(machine)
            continue
        for name, cost in priced.by_category.items():
            by_category[name] += cost
        for reason, cost in priced.by_reason.items():
            entry = by_reason.setdefault(reason, [0.0, 0.0])
            entry[0] += cost
            entry[1] += record["downtime_by_reason"][reason]
        by_machine[machine] = by_machine.get(machine, 0.0) + priced.total
        by_line[lines[machine]] = by_line.get(lines[machine], 0.0) + priced.total
    return {
        "currency": plant.costs.currency,
        "total": sum(by_category.values()),
        "by_category": by_category,
        "downtime": sum(by_category[name] for name in DOWNTIME),
        "by_reason": [
            {"reason": reason, "cost": cost, "seconds": seconds}
            for reason, (cost, seconds) in sorted(by_reason.items(), key=lambda kv: -kv[1][0])
        ],
        "by_machine": [
            {"machine": m, "line": lines[m], "cost": c}
            for m, c in sorted(by_machine.items(), key=lambda kv: -kv[1])
        ],
        "by_line": [
            {"line": line, "cost": c} for line, c in sorted(by_line.items(), key=lambda kv: -kv[1])
        ],
        "unpriced_machines": sorted(unpriced),
    }


def month_start(day: date, calendar: Calendar) -> datetime:
    """The first production day of `day`'s month, at the plant's `day_start`, in UTC."""
    first = datetime.combine(day.replace(day=1), calendar.plant.day_start)
    return datetime.fromtimestamp(local_to_ms(first, calendar.zone) / 1000, UTC)


def reached(records: Iterable[Mapping[str, Any]]) -> datetime | None:
    """How far the records reach in event time: an open window's calendar time runs to
    the newest event (its `calendar_s`), a final one to its end."""
    ends = [
        datetime.fromisoformat(r["window_start"]) + timedelta(seconds=r["calendar_s"])
        for r in records
    ]
    return max(ends, default=None)


def budget_view(
    machine_records: Sequence[Mapping[str, Any]],
    day_records: Iterable[Mapping[str, Any]],
    pricing: Pricing,
    calendar: Calendar,
    lines: Sequence[str],
    scope: str | None,
    start: datetime,
    now: datetime,
) -> dict[str, Any]:
    """The month so far (`start` to `now`): loss cost against the budget, projected to
    the month's end over the calendar's planned time, and OEE against its target."""
    plant = pricing.plant
    # A line's budget is its own: the plant's is for the whole plant.
    costs: LineCosts | None = plant.costs
    if scope is not None:
        costs = next(line for line in plant.lines if line.id == scope).costs
    budget = None if costs is None else costs.budget
    spent = losses_cost(machine_records, pricing)
    local = ms_to_local_date(int(start.timestamp() * 1000), calendar.zone)
    next_month = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    end = month_start(next_month, calendar)
    start_ms, now_ms = int(start.timestamp() * 1000), int(now.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    # The rate is taken over the time the records cover: a plant that started sending on
    # the 7th has not lost nothing from the 1st to the 6th, it has not been measured.
    first_ms = min((text_ms(r["window_start"]) for r in machine_records), default=start_ms)
    data_ms = max(start_ms, first_ms)
    planned_so_far = sum(calendar.planned_ms(line, data_ms, now_ms) for line in lines) / 1000
    planned_month = sum(calendar.planned_ms(line, start_ms, end_ms) for line in lines) / 1000
    projected = spent["total"] / planned_so_far * planned_month if planned_so_far > 0 else None
    totals = Totals()
    for record in day_records:
        totals.merge(Totals.of(record), same_day=True)
    monthly_loss = None if budget is None else budget.monthly_loss
    oee_target = None if budget is None else budget.oee_target
    return {
        "line": scope,
        "currency": plant.costs.currency,
        "month": f"{local:%Y-%m}",
        "from": start.isoformat().replace("+00:00", "Z"),
        "data_from": utc_text(data_ms),
        "through": now.isoformat().replace("+00:00", "Z"),
        "cost": spent["total"],
        "by_category": spent["by_category"],
        "budget": monthly_loss,
        "share_of_budget": None if monthly_loss is None else spent["total"] / monthly_loss,
        "planned_s": planned_so_far,
        "month_planned_s": planned_month,
        "projected": projected,
        "on_track": None
        if monthly_loss is None or projected is None
        else projected <= monthly_loss,
        "oee": totals.ratios()["oee"],
        "oee_target": oee_target,
        "method": (
            "loss cost so far divided by the planned time since the first record of the "
            "month (data_from), times the planned time the shift calendar gives the whole "
            "month; it assumes the rest of the month, and any of it before data_from, "
            "loses at the same rate per planned hour"
        ),
        "unpriced_machines": spent["unpriced_machines"],
    }
