"""What the live board shows, as one JSON-ready snapshot built from store queries.

`build_snapshot(plant, store)` reads the store and nothing else: no clock, no network.
"Now" is whatever the store's current shift records say, so the same store always gives
the same snapshot, and the SSE stream can compare snapshots to send only changes.

Shape (ratios are fractions 0..1, `None` when their denominator is zero; times RFC 3339
UTC as the store serves them)::

    {"site": str,
     "timezone": str,                 # the plant's IANA zone: the page shows times in it
     "code_states": [str],            # machine states whose stops are offered for coding
     "trend_window": "15m" | "1h" | ... | None,
     "lines": [{"line": str,
                "shift": str | None, "shift_start": str | None, "shift_end": str | None,
                "shift_date": str | None,      # its production day (the report's `date`)
                "final": bool | None,          # the shift record is closed (between shifts)
                "kpis": {"oee", "availability", "performance", "quality", "planned_s",
                         "run_s", "downtime_s", "stops", "total_count", "good_count",
                         "reject_count", "fully_productive_s", "nee", "teep", "product",
                         "constraint", "oee_constraint", "coverage"} | None,  # None: no
                                                                  # shift record yet
                "why": {kpi: str},             # why a ratio of `kpis` is None (shown as "–")
                "output": {"machine": str, "count": int | None},  # the line's output
                "waterfall": {"planned_s": float, "machines": int,
                              "losses": [{"loss": key, "seconds": float}],  # LOSS_KEYS order
                              "fully_productive_s": float,
                              "money": {"currency": str, "total": float,
                                        "losses": {key: float}} | None,  # None: no rates
                              } | None,   # None: no losses known
                "bottleneck": {"machine": str, "stop_s": float | None} | None,
                "forecast": {"output_count": int | None, "projected_count": float | None,
                             "target_count": int, "on_track": bool | None} | None,
                "machines": [{"machine", "state", "reason", "since", "last_seen", "oee",
                              "coverage", "why"}],    # why: {kpi: str}, as for the line
                "pareto": [{"reason", "seconds", "share"}],   # downtime of this shift
                "trend": [{"t": window_start, "oee": float | None}]}]}

`waterfall`: planned time, less each of the six big losses and the time without data
(`no_data_s`, its own step: not knowing is not an equipment failure), is the fully
productive time (the record's `fully_productive_s`, or planned time less the losses where
the record has none): planned_s = fully_productive_s + sum of the losses.
`waterfall.money`: with `costs:` in the config, what the shift's losses cost so far, per
loss (no data is not priced): the line's machines' shift records priced at their rates
and summed (linepulse/costs.py), as `GET /v1/costs` sums them.
`coverage` (line `kpis` and each machine): the share of the shift's planned time so far
with data, from the shift record; None without planned time or without a record.
A line record sums its machines (docs/kpi.md), so its `planned_s` and losses are machine
time: 7 machines over a 4 h shift plan 28 h. `waterfall.machines` says how many machines
the sums span, so the page can show shares of planned time and the planned time per
machine instead of a 28 h "planned time" for a 4 h shift.
`output`: the line's output is the good parts of its output machine (the config's `output`,
else its last machine; the record's `output_count`), not a sum of bottles, packs and
pallets. `why`: the reason each ratio that cannot be computed is None (no planned time
yet, no run time, no parts, no ideal cycle time for a machine), for the page to show
beside its "–".
`forecast` is there only when the shift has a target (`target_count`); `on_track`:
projected output >= target (None while nothing is projected yet). The line's stops, for
reason coding, are not in the snapshot: the page reads them from `/v1/stops` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from linepulse.calendar import Calendar, text_ms
from linepulse.config import Line, Machine, PlantConfig, WindowKind
from linepulse.costs import PRICED, Pricing
from linepulse.production import LOSS_KEYS
from linepulse.records import record_fields
from services.kpi.stops import CODE_STATES
from services.kpi.store import KpiStore

# The record fields a line shows as its KPIs (the page's tiles), checked against the
# record on import. Every store record has them all: the store adds a newer field's
# column to an older file on open.
KPI_FIELDS: Final = record_fields(
    "oee",
    "availability",
    "performance",
    "quality",
    "planned_s",
    "run_s",
    "downtime_s",
    "stops",
    "total_count",
    "good_count",
    "reject_count",
    "fully_productive_s",
    "nee",
    "teep",
    "product",
    "constraint",
    "oee_constraint",
    "coverage",
)
# Finest first: a finer trend has more points over a shift, and a finer Pareto kind closes
# (and so counts) sooner. Every kind covers the same downtime, so one kind counts each
# second once (see KpiHistory.pareto).
_TREND_KINDS: Final[tuple[WindowKind, ...]] = ("15m", "1h")
_PARETO_KINDS: Final[tuple[WindowKind, ...]] = ("15m", "1h", "1m", "day", "shift")
# The ratios whose None the page explains.
_EXPLAINED: Final = ("oee", "availability", "performance", "quality", "nee", "teep")


def build_snapshot(plant: PlantConfig, store: KpiStore) -> dict[str, Any]:
    """The board's snapshot of every line of `plant` (config order), from `store`."""
    windows = tuple(plant.kpi.windows)
    trend_kind = next((k for k in _TREND_KINDS if k in windows), None)
    pareto_kind = next((k for k in _PARETO_KINDS if k in windows), None)
    has_shift = "shift" in windows
    calendar = Calendar(plant)

    shift_records = store.history.current(window="shift", scope="all") if has_shift else []
    line_records = {r["line"]: r for r in shift_records if r["machine"] is None}
    machine_records = {r["machine"]: r for r in shift_records if r["machine"] is not None}
    configured = plant.machines()
    statuses: dict[str, list[dict[str, Any]]] = {}
    for status in store.status.machines():
        shift_record = machine_records.get(status["machine"])
        machine = configured[status["machine"]][1]
        statuses.setdefault(status["line"], []).append(
            {
                "machine": status["machine"],
                "state": status["state"],
                "reason": status["reason"],
                "since": status["since"],
                "last_seen": status["last_seen"],
                "oee": None if shift_record is None else shift_record.get("oee"),
                "coverage": None if shift_record is None else shift_record.get("coverage"),
                "why": why_none(shift_record, machine_why(machine, shift_record)),
            }
        )

    pricing = Pricing(plant)

    def money(line: Line) -> dict[str, Any] | None:
        """The line's shift losses in money: its machines' shift records priced, summed."""
        if not pricing.configured:
            return None
        by_loss = dict.fromkeys(PRICED, 0.0)
        for machine in line.machines:
            shift_record = machine_records.get(machine.id)
            costs = None if shift_record is None else pricing.price(shift_record)
            for name, cost in ({} if costs is None else costs.by_category).items():
                by_loss[name] += cost
        return {
            "currency": plant.costs.currency,
            "total": math.fsum(by_loss.values()),
            "losses": {f"{name}_s": cost for name, cost in by_loss.items()},
        }

    lines = []
    for line in plant.lines:
        record = line_records.get(line.id)
        start = None if record is None else _parse(record["window_start"])
        end = None if record is None else _parse(record["window_end"])
        pareto: list[dict[str, Any]] = []
        trend: list[dict[str, Any]] = []
        if start is not None and end is not None:
            if pareto_kind is not None:
                pareto = store.history.pareto(line.id, start, end, window=pareto_kind)
            if trend_kind is not None:
                trend = [
                    {"t": r["window_start"], "oee": r["oee"]}
                    for r in store.history.history(start, end, trend_kind, line.id, scope="line")
                ]
        lines.append(
            {
                "line": line.id,
                "shift": None if record is None else record["shift"],
                "shift_start": None if record is None else record["window_start"],
                "shift_end": None if record is None else record["window_end"],
                "shift_date": None if record is None else _production_day(calendar, record),
                "final": None if record is None else record["final"],
                "kpis": None if record is None else _kpis(record),
                "why": why_none(record, line_why(line, machine_records)),
                "output": {
                    "machine": line.output_machine.id,
                    "count": None if record is None else record.get("output_count"),
                },
                "waterfall": None
                if record is None
                else _waterfall(record, len(line.machines), money(line)),
                "bottleneck": None if record is None else _bottleneck(record),
                "forecast": None if record is None else _forecast(record),
                "machines": statuses.get(line.id, []),
                "pareto": pareto,
                "trend": trend,
            }
        )
    return {
        "site": plant.site,
        "timezone": plant.timezone,
        "code_states": list(CODE_STATES),
        "trend_window": trend_kind,
        "lines": lines,
    }


def machine_why(machine: Machine, record: dict[str, Any] | None) -> str | None:
    """Why `machine` has no ideal cycle time for its shift `record`, or None if it has one.
    A machine with per-product times has one only once it reports a configured product."""
    if machine.ideal_cycle_time_s is not None:
        return None
    if not machine.products:
        return "no ideal cycle time: none configured for this machine"
    product = None if record is None else record.get("product")
    if product is None:
        return "no ideal cycle time: the machine never reported a product"
    if product not in machine.products:
        return f"no ideal cycle time: product {product!r} is not in its config"
    return None


def line_why(line: Line, machine_records: dict[str, dict[str, Any]]) -> str | None:
    """Why the line has no ideal time for its parts: the line's performance needs every
    machine's (docs/kpi.md: Σ(ideal cycle time x total) / Σ run), so one without it is enough."""
    for machine in line.machines:
        why = machine_why(machine, machine_records.get(machine.id))
        if why is not None:
            return f"{machine.id}: {why}"
    return None


def why_none(record: dict[str, Any] | None, no_ideal: str | None) -> dict[str, str]:
    """For each ratio of `record` that is None, why (docs/kpi.md: a ratio is None when its
    denominator is zero): no planned time, no run time, no parts or, with all of those
    there, `no_ideal` (the reason there is no ideal cycle time)."""
    if record is None:
        return dict.fromkeys(_EXPLAINED, "no shift record yet: no data from this shift")
    no_plan = (
        None
        if record.get("planned_s")
        else "no planned production time in this shift so far (break, day off or no data)"
    )
    no_run = None if record.get("run_s") else "not running at any time in this shift yet"
    no_parts = None if record.get("total_count") else "no parts counted in this shift yet"
    oee = no_plan or no_parts or no_run or no_ideal
    causes = {
        "availability": no_plan,
        "performance": no_plan or no_run or no_parts or no_ideal,
        "quality": no_parts or no_plan,
        "oee": oee,
        "nee": oee,
        "teep": oee,
    }
    fallback = "not computable from this shift's data"
    return {key: causes[key] or fallback for key in _EXPLAINED if record.get(key) is None}


def _kpis(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in KPI_FIELDS}


def _waterfall(
    record: dict[str, Any], machines: int, money: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Planned time, the six big losses and no data (LOSS_KEYS order), fully productive
    time, summed over `machines` machines for a line record. A store written before
    `no_data_s` existed shows 0 for it (its unknown time is then inside equipment failure,
    as that version counted it)."""
    losses = record.get("losses")
    if not losses:
        return None
    seconds = [float(losses.get(key) or 0.0) for key in LOSS_KEYS]
    planned = float(record["planned_s"])
    productive = record.get("fully_productive_s")
    if productive is None:
        productive = planned - math.fsum(seconds)
    return {
        "planned_s": planned,
        "machines": machines if record["machine"] is None else 1,
        "losses": [{"loss": k, "seconds": s} for k, s in zip(LOSS_KEYS, seconds, strict=True)],
        "fully_productive_s": float(productive),
        "money": money,
    }


def _bottleneck(record: dict[str, Any]) -> dict[str, Any] | None:
    machine = record.get("bottleneck")
    if machine is None:
        return None
    return {"machine": machine, "stop_s": record.get("bottleneck_s")}


def _forecast(record: dict[str, Any]) -> dict[str, Any] | None:
    target = record.get("target_count")
    if target is None:
        return None
    projected = record.get("projected_count")
    return {
        "output_count": record.get("output_count"),
        "projected_count": projected,
        "target_count": target,
        "on_track": None if projected is None else projected >= target,
    }


def _parse(value: str) -> datetime:
    """A store time (RFC 3339 with a `Z`) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _production_day(calendar: Calendar, record: Mapping[str, Any]) -> str | None:
    """The production day of a line's shift record: its span's `day` in the calendar."""
    start = text_ms(record["window_start"])
    spans = calendar.spans(record["line"], start, start + 1)
    return next((span.day.isoformat() for span in spans if span.start == start), None)
