"""KpiStore: which record wins a key, and what the queries return, computed by hand."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from linepulse.config import PlantConfig, WindowKind, parse_config
from linepulse.records import KpiRecord
from services.kpi.errors import InvalidRecord
from services.kpi.history import _COLUMNS, _SCOPE_ORDER, KpiHistory, _filters
from services.kpi.store import KpiStore

LENGTH = {
    "1m": timedelta(minutes=1),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "shift": timedelta(hours=8),
    "day": timedelta(days=1),
}


def plant_config(**kpi: Any) -> PlantConfig:
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "Europe/Berlin",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
            "kpi": kpi,
            "lines": [
                {"id": "l1", "machines": [{"id": "m1"}, {"id": "m2"}]},
                {"id": "l2", "machines": [{"id": "m3"}]},
            ],
        }
    )


# The record's fields beyond OEE, as a record without any of them has them: counts and
# times zero, no products, every other field null. Tests that need them set them.
BEYOND_OEE: dict[str, Any] = {
    "product": None,
    "calendar_s": 3600.0,
    "down_s": 0.0,
    "idle_s": 0.0,
    "setup_s": 0.0,
    "small_stops": 0,
    "small_stop_s": 0.0,
    "failures": 0,
    "rework_count": None,
    "effectiveness": None,
    "technical_efficiency": None,
    "setup_rate": None,
    "nee": None,
    "teep": None,
    "throughput_per_h": None,
    "scrap_ratio": None,
    "rework_ratio": None,
    "first_pass_yield": None,
    "mttf_s": None,
    "fully_productive_s": None,
    "losses": None,
    "by_product": {},
    "constraint": None,
    "oee_constraint": None,
    "bottleneck": None,
    "bottleneck_s": None,
    "output_count": None,
    "target_count": None,
    "projected_count": None,
    "loss_cost": None,
}


def record(
    machine: str | None = "m1",
    *,
    line: str = "l1",
    window: str = "shift",
    start: str = "2026-11-02T05:00:00Z",
    final: bool = False,
    revision: int = 0,
    **values: Any,
) -> dict[str, Any]:
    """A valid KPI record: 3,000 s run of 3,600 s planned, 2,800 parts, 56 rejected."""
    begin = datetime.fromisoformat(start)
    out: dict[str, Any] = {
        "site": "plant-a",
        "line": line,
        "machine": machine,
        "window": window,
        "window_start": start,
        "window_end": (begin + LENGTH[window]).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "shift": "early" if window == "shift" else None,
        "planned_s": 3600.0,
        "run_s": 3000.0,
        "downtime_s": 600.0,
        "unknown_s": 0.0,
        "stops": 2,
        "total_count": 2800,
        "good_count": 2744,
        "reject_count": 56,
        "availability": 3000 / 3600,
        "performance": 2800 / 3000,
        "quality": 2744 / 2800,
        "oee": 2744 / 3600,
        "mtbf_s": 1500.0,
        "mttr_s": 300.0,
        "downtime_by_reason": {"jam": 400.0, "electrical": 200.0},
        "final": final,
        "revision": revision,
        **BEYOND_OEE,
    }
    out.update(values)
    if "coverage" not in values:  # (planned - unknown) / planned, null without planned time
        planned, unknown = out["planned_s"], out["unknown_s"]
        out["coverage"] = (planned - unknown) / planned if planned else None
    return out


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def store(tmp_path: Path, plant: PlantConfig) -> KpiStore:
    return KpiStore(tmp_path / "kpi.duckdb", plant)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- which record wins a key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrivals", "winner"),
    [
        pytest.param([(0, False), (0, False)], 1, id="newer open replaces older open"),
        pytest.param([(0, False), (0, True)], 1, id="final replaces open"),
        pytest.param([(0, True), (0, False)], 0, id="open never replaces final"),
        pytest.param([(0, True), (0, True)], 1, id="equal final: later arrival"),
        pytest.param([(0, True), (1, True)], 1, id="restatement replaces"),
        pytest.param([(1, True), (0, True)], 0, id="lower revision never overwrites"),
        pytest.param([(1, True), (0, False)], 0, id="lower open revision never overwrites"),
        pytest.param([(0, False), (2, True), (1, True), (2, False)], 1, id="highest wins"),
    ],
)
@pytest.mark.parametrize("one_batch", [False, True], ids=["batches", "one batch"])
def test_upsert_keeps_the_highest_revision_then_final_then_latest(
    store: KpiStore, arrivals: list[tuple[int, bool]], winner: int, one_batch: bool
) -> None:
    # Each arrival carries its index in `stops`, to tell which one won.
    records = [
        record(revision=rev, final=final, stops=i) for i, (rev, final) in enumerate(arrivals)
    ]
    if one_batch:
        store.history.upsert(records)
    else:
        for one in records:
            store.history.upsert([one])
    stored = store.history.history(at("2026-11-02T00:00:00Z"))
    assert [(r["stops"], r["revision"], r["final"]) for r in stored] == [
        (winner, *arrivals[winner])
    ]


def test_line_records_are_kept_apart_from_machine_records(store: KpiStore) -> None:
    store.history.upsert([record("m1", oee=0.5), record(None, oee=0.6)])
    store.history.upsert([record(None, oee=0.7)])  # replaces the line record only
    stored = store.history.history(at("2026-11-02T05:00:00Z"))
    assert [(r["machine"], r["oee"]) for r in stored] == [("m1", 0.5), (None, 0.7)]


def test_a_record_comes_back_exactly_as_the_contract(store: KpiStore) -> None:
    sent = [
        record(),
        record(
            None,
            window="1h",
            start="2026-11-02T06:00:00Z",
            availability=None,
            performance=None,
            quality=None,
            oee=None,
            mtbf_s=None,
            mttr_s=None,
            downtime_by_reason={},
            good_count=-1,
        ),
    ]
    store.history.upsert(sent)
    stored = store.history.history(at("2026-11-02T05:00:00Z"), at("2026-11-02T07:00:00Z"))
    assert stored == sent
    for one in stored:
        KpiRecord.model_validate(one)


def test_the_fields_beyond_oee_come_back_as_written(store: KpiStore) -> None:
    losses = {
        "equipment_failure_s": 300.0,
        "setup_s": 120.0,
        "small_stops_s": 30.0,
        "slow_cycles_s": 150.0,
        "startup_rejects_s": 0.0,
        "production_rejects_s": 56.0,
        "no_data_s": 0.0,
    }
    products = {
        "cola-05": {
            "run_s": 2000.0,
            "total_count": 1900,
            "good_count": 1870,
            "reject_count": 30,
            "performance": 0.95,
            "quality": 1870 / 1900,
        },
        "water-1": {
            "run_s": 1000.0,
            "total_count": 900,
            "good_count": 874,
            "reject_count": 26,
            "performance": None,
            "quality": None,
        },
    }
    machine = record(
        product="cola-05",
        down_s=450.0,
        setup_s=120.0,
        small_stops=3,
        small_stop_s=30.0,
        failures=2,
        rework_count=12,
        nee=0.81,
        teep=0.5,
        mttf_s=1500.0,
        fully_productive_s=2744.0,
        losses=losses,
        by_product=products,
    )
    line = record(
        None,
        constraint="m2",
        oee_constraint=0.7,
        bottleneck="m1",
        bottleneck_s=570.0,
        output_count=2744,
        target_count=3000,
        projected_count=2950.5,
    )
    store.history.upsert([machine, line])
    assert store.history.current() == [machine, line]
    KpiRecord.model_validate(store.history.current()[0])


# The kpi_records and machine_status tables as the previous version created them.
_OLD_TABLES = (
    "CREATE TABLE kpi_records (site VARCHAR NOT NULL, line VARCHAR NOT NULL, "
    'machine VARCHAR NOT NULL, "window" VARCHAR NOT NULL, window_start TIMESTAMP NOT NULL, '
    "window_end TIMESTAMP NOT NULL, shift VARCHAR, planned_s DOUBLE NOT NULL, "
    "run_s DOUBLE NOT NULL, downtime_s DOUBLE NOT NULL, unknown_s DOUBLE NOT NULL, "
    "stops BIGINT NOT NULL, total_count BIGINT NOT NULL, good_count BIGINT NOT NULL, "
    "reject_count BIGINT NOT NULL, availability DOUBLE, performance DOUBLE, quality DOUBLE, "
    "oee DOUBLE, mtbf_s DOUBLE, mttr_s DOUBLE, downtime_by_reason VARCHAR NOT NULL, "
    '"final" BOOLEAN NOT NULL, revision INTEGER NOT NULL, '
    'PRIMARY KEY (line, machine, "window", window_start))',
    "CREATE TABLE machine_status (machine VARCHAR PRIMARY KEY, line VARCHAR, state VARCHAR, "
    "since TIMESTAMP, last_seen TIMESTAMP NOT NULL)",
    "INSERT INTO kpi_records VALUES ('plant-a', 'l1', 'm1', '1h', '2026-11-02 05:00:00', "
    "'2026-11-02 06:00:00', NULL, 3600, 3000, 600, 0, 2, 2800, 2744, 56, 0.83, 0.93, 0.98, "
    "0.76, 1500, 300, '{\"jam\": 600.0}', true, 1)",
    "INSERT INTO machine_status VALUES ('m1', 'l1', 'down', '2026-11-02 05:50:00', "
    "'2026-11-02 05:59:00')",
)


def test_a_store_file_of_the_previous_version_opens_and_takes_new_records(
    tmp_path: Path, plant: PlantConfig
) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:
        for sql in _OLD_TABLES:
            old.execute(sql)
    with KpiStore(path, plant) as store:
        (kept,) = store.history.history(at("2026-11-02T00:00:00Z"))
        assert (kept["revision"], kept["downtime_by_reason"]) == (1, {"jam": 600.0})
        # Its new fields: zero, an empty object, the window's length as calendar, or null.
        assert {k: kept[k] for k in BEYOND_OEE} == {**BEYOND_OEE, "calendar_s": 3600.0}
        assert store.status.machines()[0]["reason"] is None
        store.history.upsert(
            [record(window="1h", start="2026-11-02T05:00:00Z", revision=2, teep=0.4)]
        )
        (newer,) = store.history.history(at("2026-11-02T00:00:00Z"))
        assert (newer["revision"], newer["teep"]) == (2, 0.4)
    with KpiStore(path, plant) as again:  # and opens again, already migrated
        assert again.history.history(at("2026-11-02T00:00:00Z"))[0]["teep"] == 0.4


def test_times_may_be_aware_datetimes_or_any_offset(store: KpiStore) -> None:
    one = record("m1", window="1h")
    one["window_start"] = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
    one["window_end"] = datetime(2026, 11, 2, 8, 0, tzinfo=timezone(timedelta(hours=1)))
    other = record("m2", window="1h")
    other["window_start"] = "2026-11-02T07:00:00+01:00"
    other["window_end"] = "2026-11-02T07:00:00.000Z"
    store.history.upsert([other, one])
    stored = store.history.history(at("2026-11-02T00:00:00Z"))
    assert [(r["machine"], r["window_start"], r["window_end"]) for r in stored] == [
        ("m1", "2026-11-02T06:00:00Z", "2026-11-02T07:00:00Z"),
        ("m2", "2026-11-02T06:00:00Z", "2026-11-02T07:00:00Z"),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": "2m"}, "window must be one of"),
        ({"window_start": "2026-11-02 05:00"}, "window_start must be RFC 3339"),
        ({"window_start": "2026-11-02T05:00:00"}, "window_start must be RFC 3339"),
        ({"window_end": None}, "window_end must be RFC 3339"),
        ({"planned_s": None}, "planned_s must not be null"),
        ({"stops": 1.5}, "stops must be an integer, got 1.5"),
        ({"final": "yes"}, "final must be boolean, got 'yes'"),
        ({"shift": 3}, "shift must be text, got 3"),
        ({"revision": -1}, "revision must be >= 0"),
        ({"downtime_by_reason": [["jam", 1.0]]}, "downtime_by_reason must be an object"),
        ({"downtime_by_reason": {1: 2.0}}, "downtime_by_reason"),
        ({"colour": "red"}, "unknown fields ['colour']"),
        ({"calendar_s": None}, "calendar_s must not be null"),
        ({"failures": 0.5}, "failures must be an integer, got 0.5"),
        ({"by_product": None}, "by_product must be an object"),
        ({"losses": [1.0]}, "losses must be an object"),
        ({"constraint": 7}, "constraint must be text, got 7"),
    ],
)
def test_a_bad_record_is_named_and_nothing_of_its_batch_is_written(
    store: KpiStore, change: dict[str, Any], message: str
) -> None:
    bad = record("m2") | change
    with pytest.raises(InvalidRecord) as caught:
        store.history.upsert([record("m1"), bad, record("m3", line="l2")])
    assert message in caught.value.detail
    assert caught.value.detail.startswith("record 1 (l1 m2 ")
    assert caught.value.index == 1
    assert store.history.history(at("2026-11-02T00:00:00Z")) == []


def test_a_record_missing_a_field_is_named(store: KpiStore) -> None:
    bad = record()
    del bad["oee"]
    with pytest.raises(InvalidRecord, match=r"record 0 \(l1 m1 shift .*missing fields \['oee'\]"):
        store.history.upsert([bad])


def test_a_record_from_before_its_loss_cost_is_kept_with_none(store: KpiStore) -> None:
    """A worker not yet upgraded, or the compacted topic's older records, send records
    without the fields added since (`LATER_FIELDS`): they are kept, those fields None."""
    old = record()
    del old["loss_cost"]
    store.history.upsert([old])
    (kept,) = store.history.current()
    assert kept == record()
    assert kept["loss_cost"] is None
    odd = record(start="2026-11-03T05:00:00Z", colour="red")
    del odd["loss_cost"]
    with pytest.raises(InvalidRecord, match=r"unknown fields \['colour'\]"):
        store.history.upsert([odd])


def test_a_records_loss_cost_comes_back_as_written(store: KpiStore) -> None:
    cost = {
        "currency": "EUR",
        "total": 90.5,
        "by_category": {"equipment_failure": 80.0, "setup": 10.5},
        "unpriced_machines": ["m2"],
    }
    store.history.upsert([record(None, loss_cost=cost)])
    (kept,) = store.history.current()
    assert kept["loss_cost"] == cost


# -- current -------------------------------------------------------------------------------


def seed_current(store: KpiStore) -> None:
    early, late = "2026-11-02T05:00:00Z", "2026-11-02T13:00:00Z"
    store.history.upsert(
        [
            # m1: early closed, late open -> late.
            record("m1", start=early, final=True, stops=10),
            record("m1", start=late, stops=11),
            # m2: both open (just after the boundary) -> the newer, late.
            record("m2", start=early, stops=20),
            record("m2", start=late, stops=21),
            # m3 (line l2): nothing open -> its most recent window, final.
            record("m3", line="l2", start="2026-11-01T05:00:00Z", final=True, stops=30),
            record("m3", line="l2", start=early, final=True, stops=31),
            # line records.
            record(None, start=early, final=True, stops=40),
            record(None, start=late, stops=41),
            record(None, line="l2", start=early, final=True, stops=50),
            # another window kind, never in a shift query.
            record("m1", window="1h", start=late, stops=99),
        ]
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, [11, 21, 41, 31, 50]),
        ({"scope": "machine"}, [11, 21, 31]),
        ({"scope": "line"}, [41, 50]),
        ({"line": "l1"}, [11, 21, 41]),
        ({"line": "l2", "scope": "machine"}, [31]),
        ({"machine": "m2"}, [21]),
        ({"machine": "m3", "line": "l1"}, []),
        ({"window": "1h"}, [99]),
        ({"window": "day"}, []),
    ],
)
def test_current_is_the_newest_open_window_else_the_most_recent(
    store: KpiStore, query: dict[str, Any], expected: list[int]
) -> None:
    seed_current(store)
    assert [r["stops"] for r in store.history.current(**query)] == expected


CURRENT_KINDS: tuple[WindowKind, ...] = ("1h", "shift")


@pytest.mark.parametrize("seed", range(12))
def test_current_answers_as_the_whole_history_would(plant: PlantConfig, seed: int) -> None:
    """`current` answers from an index of the records it can still pick (in memory):
    after any sequence of batches (windows opening, closing, restated, arriving late or
    stale) it answers what the same query over every record kept (kpi_records) answers;
    and a store file opened again (or one of an earlier version, with the table that
    index replaced) answers the same."""
    rng = random.Random(seed)
    hours = [f"2026-11-02T{h:02d}:00:00Z" for h in range(0, 24, 2)]
    with KpiStore(":memory:", plant) as store:
        for _ in range(30):
            batch = []
            for _ in range(rng.randint(1, 8)):
                machine, line = rng.choice([("m1", "l1"), ("m2", "l1"), (None, "l1"), ("m3", "l2")])
                batch.append(
                    record(
                        machine,
                        line=line,
                        window=rng.choice(["1h", "shift"]),
                        start=rng.choice(hours),
                        final=rng.random() < 0.6,
                        revision=rng.choice([0, 0, 0, 1, 2]),
                        stops=rng.randint(0, 10**6),
                    )
                )
            store.history.upsert(batch)
            for window in CURRENT_KINDS:
                for query in ({}, {"line": "l1"}, {"machine": "m2"}, {"scope": "line"}):
                    got = store.history.current(window=window, **query)  # type: ignore[arg-type]
                    assert got == whole_history_current(store, window, **query), (window, query)
        with store._db.writing() as cur:  # a store file of an earlier version
            cur.execute("CREATE TABLE kpi_current (line VARCHAR)")
        rebuilt = KpiHistory(store._db)
        for window in CURRENT_KINDS:
            assert rebuilt.current(window=window) == whole_history_current(store, window)


def whole_history_current(store: KpiStore, window: str, **query: Any) -> list[dict[str, Any]]:
    """`current` as a query over every record kept (kpi_records)."""
    where, params = _filters(query.get("line"), query.get("machine"), query.get("scope", "all"))
    sql = (
        f'SELECT {_COLUMNS} FROM kpi_records WHERE "window" = ?{where} '  # noqa: S608
        "QUALIFY row_number() OVER "
        "(PARTITION BY line, machine ORDER BY final, window_start DESC) = 1 "
        f"ORDER BY {_SCOPE_ORDER}"
    )
    return store.history._records(sql, [window, *params])


# -- history -------------------------------------------------------------------------------


def test_history_is_the_half_open_range_in_order(store: KpiStore) -> None:
    store.history.upsert(
        [
            record(None, window="1h", start="2026-11-02T06:00:00Z", stops=1),
            record("m2", window="1h", start="2026-11-02T06:00:00Z", stops=2),
            record("m1", window="1h", start="2026-11-02T06:00:00Z", stops=3),
            record("m3", line="l2", window="1h", start="2026-11-02T05:00:00Z", stops=4),
            record("m1", window="1h", start="2026-11-02T05:00:00Z", stops=5),
            record("m1", window="15m", start="2026-11-02T05:00:00Z", stops=6),
            record("m1", window="shift", start="2026-11-02T05:00:00Z", stops=7),
            record("m1", window="1h", start="2026-11-02T04:00:00Z", stops=8),  # before
            record("m1", window="1h", start="2026-11-02T07:00:00Z", stops=9),  # at `end`
        ]
    )
    start, end = at("2026-11-02T05:00:00Z"), at("2026-11-02T07:00:00Z")
    # window_start, then line, then machines before the line record, then window kind.
    assert [r["stops"] for r in store.history.history(start, end)] == [6, 5, 7, 4, 3, 2, 1]
    assert [r["stops"] for r in store.history.history(start, end, "1h")] == [5, 4, 3, 2, 1]
    assert [r["stops"] for r in store.history.history(start, end, "1h", "l1")] == [5, 3, 2, 1]
    assert [r["stops"] for r in store.history.history(start, end, None, "l1", "m1")] == [6, 5, 7, 3]
    assert [r["stops"] for r in store.history.history(start, end, "1h", scope="line")] == [1]
    # No end: everything from `start` on; an offset is just another way to say a time.
    assert [
        r["stops"] for r in store.history.history(at("2026-11-02T07:00:00+01:00"), None, "1h")
    ] == [
        3,
        2,
        1,
        9,
    ]


def test_history_wants_aware_times(store: KpiStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.history.history(datetime(2026, 11, 2))  # noqa: DTZ001 - the point of the test


# -- machines ------------------------------------------------------------------------------


def test_machines_lists_the_config_with_the_latest_status(store: KpiStore) -> None:
    store.status.upsert(
        [
            {
                "machine": "m3",
                "line": "l2",
                "state": "down",
                "reason": "jam",
                "since": "2026-11-02T06:10:00.250Z",
                "last_seen": 1793601060000,  # 2026-11-02T06:31:00Z
            },
            {
                "machine": "m1",
                "line": "l1",
                "state": "running",
                "since": None,
                "last_seen": "2026-11-02T07:30:00+01:00",
            },
        ]
    )
    # An older status for m3, delivered late, changes nothing; a newer one for m1 does.
    store.status.upsert(
        [
            {"machine": "m3", "state": "running", "since": 0, "last_seen": 0},
            {
                "machine": "m1",
                "state": "idle",
                "since": "2026-11-02T06:40:00Z",
                "last_seen": "2026-11-02T06:41:00Z",
            },
        ]
    )
    assert store.status.machines() == [
        {
            "machine": "m1",
            "line": "l1",
            "state": "idle",
            "reason": None,
            "since": "2026-11-02T06:40:00Z",
            "last_seen": "2026-11-02T06:41:00Z",
        },
        {
            "machine": "m2",
            "line": "l1",
            "state": None,
            "reason": None,
            "since": None,
            "last_seen": None,
        },
        {
            "machine": "m3",
            "line": "l2",
            "state": "down",
            "reason": "jam",
            "since": "2026-11-02T06:10:00.250Z",
            "last_seen": "2026-11-02T06:31:00Z",
        },
    ]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ({"machine": "m1", "state": "sleeping", "last_seen": 0}, "state must be one of"),
        ({"machine": "m1", "state": "down", "last_seen": "noon"}, "must be RFC 3339"),
        ({"machine": "m1", "state": "down"}, "got None"),
        ({"machine": "", "state": "down", "last_seen": 0}, "machine must be a machine id"),
        ({"machine": "m1", "state": "down", "last_seen": 0, "x": 1}, "unknown fields"),
    ],
)
def test_a_bad_status_is_named(store: KpiStore, status: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        store.status.upsert([status])


def test_a_machine_heard_from_before_its_first_state_has_a_null_state(store: KpiStore) -> None:
    # An analog tag or a counter can arrive before the machine's first state sample.
    store.status.upsert([{"machine": "m1", "line": "l1", "state": None, "last_seen": 1000}])
    heard = {row["machine"]: row for row in store.status.machines()}["m1"]
    assert (heard["state"], heard["last_seen"]) == (None, "1970-01-01T00:00:01Z")
    store.status.upsert([{"machine": "m1", "line": "l1", "state": "running", "last_seen": 2000}])
    rows = {row["machine"]: row for row in store.status.machines()}
    assert rows["m1"]["state"] == "running"


# -- pareto --------------------------------------------------------------------------------


def hour_record(
    machine: str | None, start: str, reasons: dict[str, float], **change: Any
) -> dict[str, Any]:
    return (
        record(machine, window="1h", start=start, final=True, downtime_by_reason=reasons) | change
    )


def seed_pareto(store: KpiStore) -> None:
    hour = "2026-11-02T06:00:00Z"
    store.history.upsert(
        [
            hour_record("m1", hour, {"jam": 120.0, "electrical": 60.0}),
            hour_record("m1", "2026-11-02T07:00:00Z", {"jam": 0.5}),
            hour_record("m2", hour, {"jam": 30.0}),
            hour_record("m3", hour, {"material_shortage": 300.0}, line="l2"),
            # Left out: an open hour, another window kind, a line record.
            hour_record("m2", "2026-11-02T08:00:00Z", {"jam": 999.0}, final=False),
            hour_record("m1", "2026-11-02T05:00:00Z", {"jam": 500.0}, window="shift"),
            hour_record(None, hour, {"jam": 150.0}),
        ]
    )


def test_pareto_sums_final_hours_of_machines(store: KpiStore) -> None:
    seed_pareto(store)
    assert store.history.pareto() == [
        {"reason": "material_shortage", "seconds": 300.0, "share": 300 / 510.5},
        {"reason": "jam", "seconds": 150.5, "share": 150.5 / 510.5},
        {"reason": "electrical", "seconds": 60.0, "share": 60 / 510.5},
    ]
    assert store.history.pareto("l1", at("2026-11-02T06:00:00Z"), at("2026-11-02T07:00:00Z")) == [
        {"reason": "jam", "seconds": 150.0, "share": 150 / 210},
        {"reason": "electrical", "seconds": 60.0, "share": 60 / 210},
    ]
    assert store.history.pareto("l1", start=at("2026-11-02T07:00:00Z")) == [
        {"reason": "jam", "seconds": 0.5, "share": 1.0}
    ]
    assert store.history.pareto("l2", end=at("2026-11-02T06:00:00Z")) == []


# -- the database --------------------------------------------------------------------------


def test_records_survive_a_restart(tmp_path: Path, plant: PlantConfig) -> None:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as first:
        first.history.upsert([record(final=True)])
        first.status.upsert([{"machine": "m2", "state": "down", "last_seen": 0}])
    with KpiStore(tmp_path / "kpi.duckdb", plant) as second:
        assert second.history.current() == [record(final=True)]
        assert second.status.machines()[1]["state"] == "down"


def test_threads_read_while_one_writes(store: KpiStore) -> None:
    """FastAPI runs sync endpoints in a threadpool: reads from many threads, while the
    worker writes, must neither fail nor see a half-written batch."""
    batches = 15
    done = threading.Event()

    def read() -> set[int]:
        seen: set[int] = set()
        while not done.is_set():
            rows = store.history.current(scope="machine")
            assert len({r["stops"] for r in rows}) <= 1  # one batch: one value for all
            seen |= {r["stops"] for r in rows}
        return seen

    with ThreadPoolExecutor(max_workers=3) as pool:
        readers = [pool.submit(read) for _ in range(3)]
        for i in range(batches):
            scopes = (("l1", "m1"), ("l1", "m2"), ("l2", "m3"))
            store.history.upsert([record(m, line=ln, stops=i) for ln, m in scopes])
        done.set()
        seen = set().union(*(reader.result(timeout=60) for reader in readers))
    assert seen <= set(range(batches))
    assert [r["stops"] for r in store.history.current(scope="machine")] == [batches - 1] * 3


def test_the_stores_share_one_connection_that_the_facade_closes(tmp_path: Path) -> None:
    """History, statuses and the stop log are one database: closing the store closes it
    for all three, and a status batch commits its stops with it."""
    store = KpiStore(tmp_path / "kpi.duckdb", plant_config())
    store.history.upsert([record()])
    store.status.upsert([{"machine": "m1", "state": "down", "since": 0, "last_seen": 0}])
    assert [s["machine"] for s in store.stops.query()] == ["m1"]
    store.close()
    with pytest.raises(duckdb.ConnectionException):
        store.history.history(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(duckdb.ConnectionException):
        store.status.machines()
    with pytest.raises(duckdb.ConnectionException):
        store.stops.query()
