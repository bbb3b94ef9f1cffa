"""Trends of a line (or the plant) over days and weeks, and next week's output projected.

An operations manager is judged week by week: is OEE going up, is output, which losses
grow. This module turns the stored `day` line records into that view. It is pure: the
records and the shift calendar come in, a JSON-ready dict goes out (`GET /v1/trends`).

Ratios over a week are never averages of daily ratios: a week's figures are summed from
its days (planned, run and ideal time, part counts, losses) and the ratios computed from
the sums exactly as the core computes a record's (services/kpi/core/oee.py): availability
= run / planned, performance = ideal time of the parts made / run, quality = good / total,
OEE = their product. A week of one day therefore reads exactly as that day's record.

Weeks are ISO weeks (Monday to Sunday) of production days: a day record belongs to the
local date its window starts on (the plant's `day_start`), in the plant's time zone.
"Now" is the newest day stored, not the wall clock, so a replayed history reads the same
as a live one.

The projection is deliberately simple and says how it was made: the output per planned
hour of the last (up to) four weeks of final days, times the planned hours the shift
calendar gives the coming week (shifts, breaks, days off). It assumes the coming week
runs as the recent ones did; it knows nothing of orders, staffing or planned maintenance
outside the calendar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from linepulse.calendar import Calendar, iso_week, local_to_ms, ms_to_local_date, text_ms
from linepulse.production import LOSS_KEYS

# Weeks of final days the projection's rate is taken from.
PROJECTION_WEEKS: Final = 4
TOP: Final = 3  # losses and reasons named per week
# The loss categories by name, without the unit suffix (`equipment_failure_s` -> ...).
_LOSS_NAMES: Final = {key: key.removesuffix("_s") for key in LOSS_KEYS}


@dataclass
class Totals:
    """Sums over some day records of one scope: what every ratio is computed from."""

    days: int = 0  # production days summed
    final: bool = True
    planned_s: float = 0.0
    run_s: float = 0.0
    # Ideal time of the parts made; None once a day had parts without an ideal cycle
    # time (its performance is unknown, and so is the sum's).
    ideal_s: float | None = 0.0
    total_count: int = 0
    good_count: int = 0
    reject_count: int = 0
    output_count: int | None = 0
    losses: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_KEYS, 0.0))
    reasons: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Totals:
        """One `day` record's sums."""
        losses = record["losses"]
        ideal_s: float | None = 0.0
        if losses is not None:
            rejects = losses["startup_rejects_s"] + losses["production_rejects_s"]
            ideal_s = record["fully_productive_s"] + rejects
        elif record["run_s"] > 0 and record["total_count"] > 0:
            ideal_s = None  # parts without an ideal cycle time: performance unknown
        return cls(
            days=1,
            final=bool(record["final"]),
            planned_s=record["planned_s"],
            run_s=record["run_s"],
            ideal_s=ideal_s,
            total_count=record["total_count"],
            good_count=record["good_count"],
            reject_count=record["reject_count"],
            output_count=record["output_count"],
            losses={**dict.fromkeys(LOSS_KEYS, 0.0), **(losses or {})},
            reasons=dict(record["downtime_by_reason"]),
        )

    def merge(self, other: Totals, *, same_day: bool = False) -> None:
        """Add `other`'s sums: another day (a week's), or another line's record of the
        same day (`same_day`: the plant's)."""
        self.days += 0 if same_day else other.days
        self.final = self.final and other.final
        self.planned_s += other.planned_s
        self.run_s += other.run_s
        self.ideal_s = (
            None if self.ideal_s is None or other.ideal_s is None else self.ideal_s + other.ideal_s
        )
        self.total_count += other.total_count
        self.good_count += other.good_count
        self.reject_count += other.reject_count
        self.output_count = (
            None
            if self.output_count is None or other.output_count is None
            else self.output_count + other.output_count
        )
        for key, seconds in other.losses.items():
            self.losses[key] = self.losses.get(key, 0.0) + seconds
        for reason, seconds in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0.0) + seconds

    def ratios(self) -> dict[str, float | None]:
        """availability, performance, quality and OEE from the sums, with the core's
        rules: null without planned time (OEE also without a known ideal time), OEE 0
        when nothing ran or nothing was made."""
        availability = self.run_s / self.planned_s if self.planned_s > 0 else None
        performance = (
            self.ideal_s / self.run_s if self.ideal_s is not None and self.run_s > 0 else None
        )
        quality = self.good_count / self.total_count if self.total_count > 0 else None
        oee: float | None
        if self.planned_s <= 0 or (self.ideal_s is None):
            oee = None
        elif self.run_s <= 0 or self.total_count <= 0:
            oee = 0.0
        else:  # the product of the three above, each defined here
            oee = (
                (self.run_s / self.planned_s)
                * (self.ideal_s / self.run_s)
                * (self.good_count / self.total_count)
            )
        return {
            "availability": availability,
            "performance": performance,
            "quality": quality,
            "oee": oee,
        }

    def output_per_planned_h(self) -> float | None:
        if self.output_count is None or self.planned_s <= 0:
            return None
        return self.output_count * 3600 / self.planned_s

    def figures(self) -> dict[str, Any]:
        return {
            "planned_s": self.planned_s,
            "run_s": self.run_s,
            "total_count": self.total_count,
            "good_count": self.good_count,
            "reject_count": self.reject_count,
            "output_count": self.output_count,
            "output_per_planned_h": self.output_per_planned_h(),
            **self.ratios(),
        }

    def top_losses(self) -> list[dict[str, Any]]:
        total = sum(self.losses.values())
        ranked = sorted(
            ((key, s) for key, s in self.losses.items() if s > 0), key=lambda kv: (-kv[1], kv[0])
        )
        return [
            {"loss": _LOSS_NAMES.get(key, key), "seconds": s, "share": s / total}
            for key, s in ranked[:TOP]
        ]

    def top_reasons(self) -> list[dict[str, Any]]:
        ranked = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return [{"reason": reason, "seconds": s} for reason, s in ranked[:TOP] if s > 0]


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _change(now: Totals, before: Totals) -> dict[str, float | None]:
    """This week against the one before: ratios in points (0.02 = 2 percentage points),
    output per planned hour in parts, output in parts only when both weeks are whole."""
    a, b = now.ratios(), before.ratios()
    out: dict[str, float | None] = {
        name: None if a[name] is None or b[name] is None else a[name] - b[name]  # type: ignore[operator]
        for name in ("availability", "performance", "quality", "oee")
    }
    rate_a, rate_b = now.output_per_planned_h(), before.output_per_planned_h()
    out["output_per_planned_h"] = None if rate_a is None or rate_b is None else rate_a - rate_b
    whole = now.days == before.days == 7 and now.final and before.final
    counts = (now.output_count, before.output_count)
    out["output_count"] = (
        counts[0] - counts[1] if whole and counts[0] is not None and counts[1] is not None else None
    )
    return out


def trends(
    records: Iterable[Mapping[str, Any]],
    calendar: Calendar,
    lines: Sequence[str],
    weeks: int,
    scope: str | None,
) -> dict[str, Any]:
    """Days, weeks and the projection over the `day` line records of `lines` (`scope`:
    the line asked for, None for the plant, whose figures sum its lines')."""
    zone = calendar.zone
    by_day: dict[date, Totals] = {}
    for record in records:
        day = ms_to_local_date(text_ms(record["window_start"]), zone)
        totals = Totals.of(record)
        if day in by_day:
            by_day[day].merge(totals, same_day=True)
        else:
            by_day[day] = totals
    body: dict[str, Any] = {"line": scope, "timezone": str(zone), "through": None}
    if not by_day:
        return {**body, "days": [], "weeks": [], "projection": None}
    newest = max(by_day)
    first_week = _week_start(newest) - timedelta(weeks=weeks - 1)
    days = sorted(d for d in by_day if d >= first_week)
    week_totals: dict[date, Totals] = {}
    for day in sorted(by_day):  # the week before the first too, for its change
        if day >= first_week - timedelta(weeks=1):
            week_totals.setdefault(_week_start(day), Totals()).merge(by_day[day])
    out_weeks = []
    for monday in sorted(m for m in week_totals if m >= first_week):
        week = week_totals[monday]
        before = week_totals.get(monday - timedelta(weeks=1))
        out_weeks.append(
            {
                "week": iso_week(monday),
                "start": monday.isoformat(),
                "days": week.days,
                "complete": week.days == 7 and week.final,
                **week.figures(),
                "top_losses": week.top_losses(),
                "top_reasons": week.top_reasons(),
                "change": None if before is None else _change(week, before),
            }
        )
    return {
        **body,
        "through": newest.isoformat(),
        "days": [
            {"date": d.isoformat(), "final": by_day[d].final, **by_day[d].figures()} for d in days
        ],
        "weeks": out_weeks,
        "projection": _projection(by_day, newest, calendar, lines),
    }


def _projection(
    by_day: Mapping[date, Totals], newest: date, calendar: Calendar, lines: Sequence[str]
) -> dict[str, Any] | None:
    """Next ISO week's output: recent output per planned hour x its planned hours."""
    since = newest - timedelta(weeks=PROJECTION_WEEKS) + timedelta(days=1)
    used = [day for day in sorted(by_day) if since <= day <= newest and by_day[day].final]
    basis = Totals()
    for day in used:
        basis.merge(by_day[day])
    rate = basis.output_per_planned_h()
    monday = _week_start(newest) + timedelta(weeks=1)
    start = local_to_ms(datetime.combine(monday, calendar.plant.day_start), calendar.zone)
    end = local_to_ms(
        datetime.combine(monday + timedelta(weeks=1), calendar.plant.day_start), calendar.zone
    )
    planned_s = sum(calendar.planned_ms(line, start, end) for line in lines) / 1000
    return {
        "week": iso_week(monday),
        "start": monday.isoformat(),
        "planned_s": planned_s,
        "output_count": None if rate is None else rate * planned_s / 3600,
        "output_per_planned_h": rate,
        "based_on": {
            "days": basis.days,
            "from": used[0].isoformat() if used else None,
            "to": used[-1].isoformat() if used else None,
            "planned_s": basis.planned_s,
            "output_count": basis.output_count,
        },
        "method": (
            f"output per planned hour over the final days of the last {PROJECTION_WEEKS} "
            "weeks, times the planned hours the shift calendar gives the coming week "
            "(shifts, breaks and days off); it assumes that week runs as those did"
        ),
    }
