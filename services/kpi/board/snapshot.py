"""What the live board shows, as one JSON-ready snapshot built from store queries.

`build_snapshot(plant, store)` reads the store and nothing else: no clock, no network.
"Now" is whatever the store's current shift records say, so the same store always gives
the same snapshot, and the SSE stream can compare snapshots to send only changes.

Shape (ratios are fractions 0..1, `None` when their denominator is zero; times RFC 3339
UTC as the store serves them)::

    {"site": str,
     "trend_window": "15m" | "1h" | ... | None,
     "lines": [{"line": str,
                "shift": str | None, "shift_start": str | None, "shift_end": str | None,
                "final": bool | None,          # the shift record is closed (between shifts)
                "kpis": {"oee", "availability", "performance", "quality", "planned_s",
                         "run_s", "downtime_s", "stops", "total_count", "good_count",
                         "reject_count", "fully_productive_s", "nee", "teep", "product",
                         "constraint", "oee_constraint", "coverage"} | None,  # None: no
                                                                  # shift record yet
                "waterfall": {"planned_s": float,
                              "losses": [{"loss": key, "seconds": float}],  # LOSS_KEYS order
                              "fully_productive_s": float} | None,   # None: no losses known
                "bottleneck": {"machine": str, "stop_s": float | None} | None,
                "forecast": {"output_count": int | None, "projected_count": float | None,
                             "target_count": int, "on_track": bool | None} | None,
                "machines": [{"machine", "state", "since", "last_seen", "oee", "coverage"}],
                "pareto": [{"reason", "seconds", "share"}],   # downtime of this shift
                "trend": [{"t": window_start, "oee": float | None}]}]}

`waterfall`: planned time, less each of the six big losses and the time without data
(`no_data_s`, its own step: not knowing is not an equipment failure), is the fully
productive time (the record's `fully_productive_s`, or planned time less the losses where
the record has none): planned_s = fully_productive_s + sum of the losses.
`coverage` (line `kpis` and each machine): the share of the shift's planned time so far
with data, from the shift record; None without planned time or without a record.
`forecast` is there only when the shift has a target (`target_count`); `on_track`:
projected output >= target (None while nothing is projected yet). The line's stops, for
reason coding, are not in the snapshot: the page reads them from `/v1/stops` itself.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

from linepulse.config import PlantConfig, WindowKind
from linepulse.production import LOSS_KEYS
from services.kpi.store import KpiStore

KPI_FIELDS: Final = (
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
)
# Beyond OEE: in the record contract, but read with .get so that a store written before
# they existed still gives a snapshot (with None for them).
EXTRA_KPI_FIELDS: Final = (
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
# second once (see KpiStore.pareto).
_TREND_KINDS: Final[tuple[WindowKind, ...]] = ("15m", "1h")
_PARETO_KINDS: Final[tuple[WindowKind, ...]] = ("15m", "1h", "1m", "day", "shift")


def build_snapshot(plant: PlantConfig, store: KpiStore) -> dict[str, Any]:
    """The board's snapshot of every line of `plant` (config order), from `store`."""
    windows = tuple(plant.kpi.windows)
    trend_kind = next((k for k in _TREND_KINDS if k in windows), None)
    pareto_kind = next((k for k in _PARETO_KINDS if k in windows), None)
    has_shift = "shift" in windows

    shift_records = store.current(window="shift", scope="all") if has_shift else []
    line_records = {r["line"]: r for r in shift_records if r["machine"] is None}
    machine_records = {r["machine"]: r for r in shift_records if r["machine"] is not None}
    statuses: dict[str, list[dict[str, Any]]] = {}
    for status in store.machines():
        shift_record = machine_records.get(status["machine"], {})
        statuses.setdefault(status["line"], []).append(
            {
                "machine": status["machine"],
                "state": status["state"],
                "since": status["since"],
                "last_seen": status["last_seen"],
                "oee": shift_record.get("oee"),
                "coverage": shift_record.get("coverage"),
            }
        )

    lines = []
    for line in plant.lines:
        record = line_records.get(line.id)
        start = None if record is None else _parse(record["window_start"])
        end = None if record is None else _parse(record["window_end"])
        pareto: list[dict[str, Any]] = []
        trend: list[dict[str, Any]] = []
        if start is not None and end is not None:
            if pareto_kind is not None:
                pareto = store.pareto(line.id, start, end, window=pareto_kind)
            if trend_kind is not None:
                trend = [
                    {"t": r["window_start"], "oee": r["oee"]}
                    for r in store.history(start, end, trend_kind, line.id, scope="line")
                ]
        lines.append(
            {
                "line": line.id,
                "shift": None if record is None else record["shift"],
                "shift_start": None if record is None else record["window_start"],
                "shift_end": None if record is None else record["window_end"],
                "final": None if record is None else record["final"],
                "kpis": None if record is None else _kpis(record),
                "waterfall": None if record is None else _waterfall(record),
                "bottleneck": None if record is None else _bottleneck(record),
                "forecast": None if record is None else _forecast(record),
                "machines": statuses.get(line.id, []),
                "pareto": pareto,
                "trend": trend,
            }
        )
    return {"site": plant.site, "trend_window": trend_kind, "lines": lines}


def _kpis(record: dict[str, Any]) -> dict[str, Any]:
    kpis = {k: record[k] for k in KPI_FIELDS}
    kpis.update({k: record.get(k) for k in EXTRA_KPI_FIELDS})
    return kpis


def _waterfall(record: dict[str, Any]) -> dict[str, Any] | None:
    """Planned time, the six big losses and no data (LOSS_KEYS order), fully productive
    time. A store written before `no_data_s` existed shows 0 for it (its unknown time is
    then inside equipment failure, as that version counted it)."""
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
        "losses": [{"loss": k, "seconds": s} for k, s in zip(LOSS_KEYS, seconds, strict=True)],
        "fully_productive_s": float(productive),
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
