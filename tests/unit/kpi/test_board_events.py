"""The live board's snapshot over a DuckDB store filled here (figures worked out by hand),
and when its event stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.types import Message

from linepulse.config import PlantConfig
from linepulse.production import LOSS_KEYS
from linepulse.records import RECORD_FIELDS
from services.kpi.board.board import Board
from services.kpi.board.snapshot import build_snapshot
from services.kpi.store import KpiStore
from tests.unit.kpi.test_store import plant_config
from tests.unit.kpi.test_store import record as base_record

# The plant of test_store: site plant-a, Europe/Berlin, shift "early" 06:00-14:00 local,
# which on 2026-11-02 (CET) is 05:00-13:00 UTC; l1 has m1 and m2, l2 has m3.
SHIFT = "2026-11-02T05:00:00Z"
SHIFT_END = "2026-11-02T13:00:00Z"

# The fields beyond OEE, for a record helper that predates them: all null or empty.
_BEYOND_OEE: dict[str, Any] = {
    "calendar_s": 3600.0,
    "down_s": 0.0,
    "idle_s": 0.0,
    "setup_s": 0.0,
    "small_stops": 0,
    "small_stop_s": 0.0,
    "failures": 0,
    "by_product": {},
}
# The six big losses and the time without data of the l1 shift below: with 2,000 s fully
# productive, 3,600 s planned. 200 s without data (unknown_s) are not an equipment failure.
NO_DATA_S = 200.0
LOSSES = {
    "equipment_failure_s": 400.0,
    "setup_s": 300.0,
    "small_stops_s": 120.0,
    "slow_cycles_s": 480.0,
    "startup_rejects_s": 40.0,
    "production_rejects_s": 60.0,
    "no_data_s": NO_DATA_S,
}


def record(machine: str | None = "m1", **values: Any) -> dict[str, Any]:
    """test_store's record, with every field of the current contract (None where unset)."""
    out = base_record(machine, **values)
    for field in RECORD_FIELDS:
        out.setdefault(field, _BEYOND_OEE.get(field))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant_config()) as opened:
        yield opened


def line_of(snapshot: dict[str, Any], line: str) -> dict[str, Any]:
    return next(entry for entry in snapshot["lines"] if entry["line"] == line)


# The board's reason for every KPI of a machine that has no shift record yet.
NO_SHIFT_RECORD_WHY = dict.fromkeys(
    ("oee", "availability", "performance", "quality", "nee", "teep"),
    "no shift record yet: no data from this shift",
)


def test_an_empty_store_gives_every_line_with_nothing_known(store: KpiStore) -> None:
    snapshot = build_snapshot(store.plant, store)
    assert snapshot["site"] == "plant-a"
    assert snapshot["trend_window"] == "15m"
    assert [entry["line"] for entry in snapshot["lines"]] == ["l1", "l2"]
    l1 = line_of(snapshot, "l1")
    assert l1["kpis"] is None
    assert l1["shift"] is None
    assert l1["pareto"] == []
    assert l1["trend"] == []
    assert l1["machines"] == [
        {
            "machine": m,
            "state": None,
            "reason": None,
            "since": None,
            "last_seen": None,
            "oee": None,
            "coverage": None,
            "why": NO_SHIFT_RECORD_WHY,  # every missing figure says why
        }
        for m in ("m1", "m2")
    ]


def test_current_shift_kpis_machines_pareto_and_trend(store: KpiStore) -> None:
    store.history.upsert(
        [
            # The current shift: line l1 and its machine m1 (m2 has no record yet).
            record(None, start=SHIFT, oee=0.5, availability=0.8, performance=0.9, quality=0.7),
            record("m1", start=SHIFT, oee=0.7),
            record(None, line="l2", start=SHIFT, oee=0.25),
            # l1's OEE trend: its 15m line records of this shift, in time order.
            record(None, window="15m", start="2026-11-02T05:15:00Z", oee=0.6, final=False),
            record(None, window="15m", start=SHIFT, oee=0.4, final=True),
            record(None, window="15m", start="2026-11-02T04:45:00Z", oee=0.9, final=True),
            record("m1", window="15m", start=SHIFT, oee=0.1, final=True),  # a machine's
            # l1's downtime: final 15m machine records of this shift only.
            record("m1", window="15m", start=SHIFT, final=True),  # jam 400, electrical 200
            record(
                "m2",
                window="15m",
                start="2026-11-02T05:15:00Z",
                final=True,
                downtime_by_reason={"jam": 100.0},
            ),
            record(  # still open: counts once it closes
                "m2",
                window="15m",
                start="2026-11-02T05:30:00Z",
                downtime_by_reason={"jam": 5000.0},
            ),
            record(  # the previous shift
                "m1",
                window="15m",
                start="2026-11-02T04:45:00Z",
                final=True,
                downtime_by_reason={"material": 900.0},
            ),
            record(  # another line
                "m3",
                line="l2",
                window="15m",
                start=SHIFT,
                final=True,
                downtime_by_reason={"material": 50.0},
            ),
        ]
    )
    store.status.upsert(
        [
            {
                "machine": "m1",
                "line": "l1",
                "state": "down",
                "since": "2026-11-02T05:30:00Z",
                "last_seen": "2026-11-02T05:31:00Z",
            }
        ]
    )
    snapshot = build_snapshot(store.plant, store)
    l1 = line_of(snapshot, "l1")
    assert (l1["shift"], l1["shift_start"], l1["shift_end"], l1["final"]) == (
        "early",
        SHIFT,
        SHIFT_END,
        False,
    )
    assert l1["kpis"] == {
        "oee": 0.5,
        "availability": 0.8,
        "performance": 0.9,
        "quality": 0.7,
        "planned_s": 3600.0,
        "run_s": 3000.0,
        "downtime_s": 600.0,
        "stops": 2,
        "total_count": 2800,
        "good_count": 2744,
        "reject_count": 56,
        "fully_productive_s": None,
        "nee": None,
        "teep": None,
        "product": None,
        "constraint": None,
        "oee_constraint": None,
        "coverage": 1.0,
    }
    # Nothing beyond OEE in these records: no waterfall, bottleneck or forecast.
    assert (l1["waterfall"], l1["bottleneck"], l1["forecast"]) == (None, None, None)
    assert l1["machines"] == [
        {
            "machine": "m1",
            "state": "down",
            "reason": None,  # a down machine's card says why it stopped, once coded
            "since": "2026-11-02T05:30:00Z",
            "last_seen": "2026-11-02T05:31:00Z",
            "oee": 0.7,
            "coverage": 1.0,
            # The fixture's machines have no ideal cycle time: its missing figures say so.
            "why": dict.fromkeys(
                ("nee", "teep"), "no ideal cycle time: none configured for this machine"
            ),
        },
        {
            "machine": "m2",
            "state": None,
            "reason": None,
            "since": None,
            "last_seen": None,
            "oee": None,
            "coverage": None,
            "why": NO_SHIFT_RECORD_WHY,
        },
    ]
    assert l1["trend"] == [
        {"t": SHIFT, "oee": 0.4},
        {"t": "2026-11-02T05:15:00Z", "oee": 0.6},
    ]
    assert [(p["reason"], p["seconds"]) for p in l1["pareto"]] == [
        ("jam", 500.0),
        ("electrical", 200.0),
    ]
    assert [p["share"] for p in l1["pareto"]] == pytest.approx([5 / 7, 2 / 7])
    l2 = line_of(snapshot, "l2")
    assert l2["kpis"] is not None
    assert l2["kpis"]["oee"] == 0.25
    assert [(p["reason"], p["seconds"]) for p in l2["pareto"]] == [("material", 50.0)]
    assert l2["trend"] == []
    orjson.dumps(snapshot)  # JSON-ready as it is


def beyond_oee_line(**values: Any) -> dict[str, Any]:
    """l1's current shift line record with losses, bottleneck and a target."""
    fields: dict[str, Any] = {
        "losses": LOSSES,
        "fully_productive_s": 2000.0,
        "nee": 0.8,
        "teep": 0.5,
        "product": "cola-0.5",
        "constraint": "m2",
        "oee_constraint": 0.65,
        "bottleneck": "m1",
        "bottleneck_s": 540.0,
        "output_count": 2744,
        "target_count": 24000,
        "projected_count": 21952.0,
    }
    fields.update(values)
    return record(None, start=SHIFT, oee=0.5, unknown_s=NO_DATA_S, **fields)


def test_losses_waterfall_bottleneck_and_forecast_of_the_shift(store: KpiStore) -> None:
    store.history.upsert([beyond_oee_line(), record("m1", start=SHIFT, losses={"setup_s": 1.0})])
    l1 = line_of(build_snapshot(store.plant, store), "l1")
    waterfall = l1["waterfall"]
    assert waterfall == {
        "planned_s": 3600.0,
        "machines": 2,  # the line's planned time is its two machines' summed
        "losses": [{"loss": key, "seconds": LOSSES[key]} for key in LOSS_KEYS],
        "fully_productive_s": 2000.0,
        "money": None,  # no costs in this plant's config
    }
    # Planned time, less the six losses and the time without data, is the fully productive
    # time; no data is a step of its own, the last, and equipment failure leaves it out.
    steps = [step["seconds"] for step in waterfall["losses"]]
    assert waterfall["fully_productive_s"] + sum(steps) == pytest.approx(waterfall["planned_s"])
    assert waterfall["losses"][-1] == {"loss": "no_data_s", "seconds": NO_DATA_S}
    assert waterfall["losses"][0] == {"loss": "equipment_failure_s", "seconds": 400.0}
    assert l1["kpis"]["coverage"] == (3600 - NO_DATA_S) / 3600
    assert waterfall["planned_s"] == l1["kpis"]["planned_s"]
    assert l1["bottleneck"] == {"machine": "m1", "stop_s": 540.0}
    assert l1["forecast"] == {
        "output_count": 2744,
        "projected_count": 21952.0,
        "target_count": 24000,
        "on_track": False,
    }
    kpis = l1["kpis"]
    assert (kpis["constraint"], kpis["oee_constraint"], kpis["oee"]) == ("m2", 0.65, 0.5)
    assert (kpis["fully_productive_s"], kpis["nee"], kpis["teep"]) == (2000.0, 0.8, 0.5)
    assert kpis["product"] == "cola-0.5"
    # l2 has a shift record without any of it.
    store.history.upsert([record(None, line="l2", start=SHIFT)])
    l2 = line_of(build_snapshot(store.plant, store), "l2")
    assert (l2["waterfall"], l2["bottleneck"], l2["forecast"]) == (None, None, None)
    orjson.dumps(l1)


@pytest.mark.parametrize(
    ("values", "forecast"),
    [
        ({"target_count": None}, None),  # no target: no forecast
        (
            {"projected_count": 24000.0},
            {
                "output_count": 2744,
                "projected_count": 24000.0,
                "target_count": 24000,
                "on_track": True,
            },
        ),
        (
            {"projected_count": None, "output_count": None},
            {
                "output_count": None,
                "projected_count": None,
                "target_count": 24000,
                "on_track": None,
            },
        ),
    ],
)
def test_forecast_only_with_a_target(
    store: KpiStore, values: dict[str, Any], forecast: dict[str, Any] | None
) -> None:
    store.history.upsert([beyond_oee_line(**values)])
    assert line_of(build_snapshot(store.plant, store), "l1")["forecast"] == forecast


def test_waterfall_without_fully_productive_time_ends_at_what_the_losses_leave(
    store: KpiStore,
) -> None:
    partial = {"equipment_failure_s": 600.0, "setup_s": 300.0}  # the rest are missing: 0
    store.history.upsert(
        [beyond_oee_line(losses=partial, fully_productive_s=None, bottleneck=None)]
    )
    l1 = line_of(build_snapshot(store.plant, store), "l1")
    assert l1["waterfall"] is not None
    assert [s["seconds"] for s in l1["waterfall"]["losses"]] == [600.0, 300.0, 0, 0, 0, 0, 0]
    assert l1["waterfall"]["fully_productive_s"] == 2700.0
    assert l1["bottleneck"] is None
    store.history.upsert([beyond_oee_line(losses=None, fully_productive_s=None, revision=1)])
    assert line_of(build_snapshot(store.plant, store), "l1")["waterfall"] is None


def test_coverage_of_each_machine_and_the_line(store: KpiStore) -> None:
    """A machine silent for part of the shift shows how much of it has data; so does its
    line (the sums of its machines, as the KPI core writes the line record)."""
    store.history.upsert(
        [
            record("m1", start=SHIFT),  # data all along
            record("m2", start=SHIFT, unknown_s=1368.0, run_s=1632.0),  # silent 38 %
            record(None, start=SHIFT, planned_s=7200.0, unknown_s=1368.0),
            record("m3", line="l2", start=SHIFT, planned_s=0.0, unknown_s=0.0),  # no plan
        ]
    )
    store.status.upsert(
        [
            {"machine": m, "state": "running", "since": SHIFT, "last_seen": SHIFT}
            for m in ("m1", "m2", "m3")
        ]
    )
    snapshot = build_snapshot(store.plant, store)
    l1 = line_of(snapshot, "l1")
    assert [(m["machine"], m["coverage"]) for m in l1["machines"]] == [("m1", 1.0), ("m2", 0.62)]
    assert l1["kpis"]["coverage"] == 0.81
    l2 = line_of(snapshot, "l2")
    assert [(m["machine"], m["coverage"]) for m in l2["machines"]] == [("m3", None)]


def test_between_shifts_the_last_shift_is_shown_closed(store: KpiStore) -> None:
    store.history.upsert(
        [
            record(None, start="2026-11-01T05:00:00Z", oee=0.3, final=True),
            record(None, start=SHIFT, oee=0.6, final=True),
        ]
    )
    l1 = line_of(build_snapshot(store.plant, store), "l1")
    assert (l1["shift_start"], l1["final"]) == (SHIFT, True)
    assert l1["kpis"] is not None
    assert l1["kpis"]["oee"] == 0.6


@pytest.mark.parametrize(
    ("windows", "trend_window", "oee", "trend"),
    [
        (["1m", "1h", "shift"], "1h", 0.5, [0.8]),  # no 15m: hourly points
        (["1m", "15m"], "15m", None, []),  # no shift windows: no shift KPIs to anchor on
    ],
)
def test_window_kinds_of_the_plant(
    tmp_path: Path,
    windows: list[str],
    trend_window: str,
    oee: float | None,
    trend: list[float],
) -> None:
    plant: PlantConfig = plant_config(windows=windows)
    with KpiStore(tmp_path / "kpi.duckdb", plant) as store:
        store.history.upsert(
            [
                record(None, start=SHIFT, oee=0.5),
                record(None, window="1h", start=SHIFT, oee=0.8),
                record(None, window="15m", start=SHIFT, oee=0.1),
            ]
        )
        snapshot = build_snapshot(plant, store)
    assert snapshot["trend_window"] == trend_window
    l1 = line_of(snapshot, "l1")
    assert (l1["kpis"] or {}).get("oee") == oee
    assert [p["oee"] for p in l1["trend"]] == trend


# -- the event stream ----------------------------------------------------------------------


def request(disconnected: asyncio.Event) -> Request:
    """A Starlette request whose client disconnects when `disconnected` is set."""

    async def receive() -> Message:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "GET", "path": "/", "headers": []}, receive)


async def first_events(board: Board, client: Request) -> tuple[list[bytes], Any]:
    stream = board.events(client)
    chunks = [await anext(stream), await anext(stream)]
    return chunks, stream


async def test_stream_sends_the_snapshot_then_ends_on_stop(store: KpiStore) -> None:
    store.history.upsert([record(None, start=SHIFT, oee=0.5)])
    board = Board(store.plant, store, None)
    chunks, stream = await first_events(board, request(asyncio.Event()))
    assert chunks[0] == b"retry: 2000\n\n"
    event, data = chunks[1].split(b"\n", 1)
    assert event == b"event: snapshot"
    snapshot = orjson.loads(data.removeprefix(b"data: ").strip())
    assert line_of(snapshot, "l1")["kpis"]["oee"] == 0.5
    board.stop()
    rest = await asyncio.wait_for(_drain(stream), timeout=10)
    assert rest == []


@pytest.mark.parametrize("how", ["disconnect", "server exit"])
async def test_stream_ends_on_disconnect_or_server_exit(store: KpiStore, how: str) -> None:
    board = Board(store.plant, store, None)
    gone = asyncio.Event()
    exiting = False
    board.stop_when(lambda: exiting)
    _, stream = await first_events(board, request(gone))
    if how == "disconnect":
        gone.set()
    else:
        exiting = True
    assert await asyncio.wait_for(_drain(stream), timeout=10) == []


async def _drain(stream: Any) -> list[bytes]:
    return [chunk async for chunk in stream]
