"""Stops and reason coding: the stop log built from machine statuses, the audit trail of
corrections, and their HTTP API (TestClient with the lifespan running, DuckDB on tmp_path,
corrections sent through the in-process bus)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.partitions import home_partition
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, parse_config
from linepulse.http.settings import ApiAccess
from services.kpi.api import create_app
from services.kpi.store import KpiStore

BUS = "in-process"
# Corrections are writes: the API takes them with a token only (linepulse/http/guard.py).
WRITER = ApiAccess(tokens=(SecretStr("stops-test-token"),))
AUTH = {"Authorization": "Bearer stops-test-token"}
TELEMETRY_SCHEMA = orjson.loads(
    (Path(__file__).parents[3] / "schemas" / "telemetry-event.schema.json").read_bytes()
)
T0 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
TREE = [
    {"name": "mechanical", "codes": ["jam", "tool change"]},
    {"name": "organisational", "codes": ["material", "no operator"]},
    {"name": "planned", "planned": True, "codes": ["cleaning", "meeting"]},
]


def plant_config() -> PlantConfig:
    """l1: m1 and m2 with the site's tree (m2 its own), l2: m3 without a tree."""
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "UTC",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
            "reasons": TREE,
            "kpi": {"lateness_s": 10, "restate_horizon_s": 3600},
            "kafka": {"telemetry": {"name": "telemetry", "partitions": 3}},
            "lines": [
                {
                    "id": "l1",
                    "machines": [
                        {"id": "m1"},
                        {"id": "m2", "reasons": [{"name": "m2 faults", "codes": ["e1", "e2"]}]},
                    ],
                },
                {"id": "l2", "machines": [{"id": "m3", "reasons": []}]},
            ],
        }
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def ms(minutes: float) -> int:
    return int(at(minutes).timestamp() * 1000)


def iso(minutes: float) -> str:
    return at(minutes).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(
    machine: str,
    state: str | None,
    since_min: float | None,
    seen_min: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A status record as the worker publishes it (times in epoch ms)."""
    line = "l2" if machine == "m3" else "l1"
    seen = seen_min if seen_min is not None else since_min or 0
    return {
        "machine": machine,
        "line": line,
        "state": state,
        "reason": reason,
        "since": None if since_min is None else ms(since_min),
        "last_seen": ms(seen),
    }


# m1: runs, down without a reason 10 min, idle for material 5 min, runs again.
M1_DAY = [
    status("m1", "running", 0),
    status("m1", "down", 10),
    status("m1", "down", 10, seen_min=14),  # only last_seen moves on
    status("m1", "idle", 20, reason="material"),
    status("m1", "running", 25),
]


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def store(tmp_path: Path, plant: PlantConfig) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as opened:
        yield opened


def brief(stops: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(s["id"], s["start"], s["end"], s["state"], s["reason"]) for s in stops]


# -- the stop log --------------------------------------------------------------------------


@pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "one by one"])
def test_downtime_statuses_open_and_close_stops(store: KpiStore, one_batch: bool) -> None:
    if one_batch:
        store.status.upsert(M1_DAY)
    else:
        for s in M1_DAY:
            store.status.upsert([s])
    assert brief(store.stops.query()) == [
        (f"m1@{ms(20)}", iso(20), iso(25), "idle", "material"),
        (f"m1@{ms(10)}", iso(10), iso(20), "down", "unassigned"),
    ]
    down = store.stops.query()[1]
    assert down["duration_s"] == 600.0
    assert (down["original_reason"], down["corrections"], down["planned"]) == (
        "unassigned",
        0,
        False,
    )
    assert (down["line"], down["corrected_by"], down["corrected_at"]) == ("l1", None, None)
    # The machine's latest state is kept as before, now with its reason.
    m1 = store.status.machines()[0]
    assert (m1["state"], m1["reason"], m1["since"]) == ("running", None, iso(25))


@pytest.mark.parametrize("seed", range(20))
def test_stops_end_at_the_next_status_whatever_the_order_and_batching(
    plant: PlantConfig, seed: int
) -> None:
    """Statuses of a day delivered shuffled, in random batches, give the stops of the
    day delivered in order: each ends at its machine's first status after its start."""
    rng = random.Random(seed)
    day = [
        status(machine, rng.choice(["running", "down", "idle", "changeover"]), minute)
        for minute in range(60)
        for machine in rng.sample(["m1", "m2", "m3"], 2)
    ]
    shuffled = rng.sample(day, len(day))
    results = []
    for statuses in (day, shuffled):
        with KpiStore(":memory:", plant) as store:
            position = 0
            while position < len(statuses):
                size = rng.randint(1, 25)
                store.status.upsert(statuses[position : position + size])
                position += size
            results.append(sorted(brief(store.stops.query(limit=1_000))))
    in_order, out_of_order = results
    for machine in ("m1", "m2", "m3"):
        starts = sorted(s["since"] for s in day if s["machine"] == machine)
        for ident, start, end, _, _ in in_order:
            if ident.startswith(f"{machine}@"):
                after = [t for t in starts if t > int(ident.split("@")[1])]
                assert end == (iso((after[0] - ms(0)) / 60_000) if after else None), start
    assert out_of_order == in_order


def test_an_open_stop_has_no_end_and_a_new_reason_is_a_new_stop(store: KpiStore) -> None:
    store.status.upsert(
        [
            status("m2", "down", 5, reason="e1"),
            status("m2", "down", 8, reason="e2"),  # the machine re-codes while down
            status("m3", "changeover", 9),
            status("m3", None, None, seen_min=9.5),  # no state: starts and ends nothing
        ]
    )
    assert brief(store.stops.query()) == [
        (f"m3@{ms(9)}", iso(9), None, "changeover", "unassigned"),
        (f"m2@{ms(8)}", iso(8), None, "down", "e2"),
        (f"m2@{ms(5)}", iso(5), iso(8), "down", "e1"),
    ]
    assert store.stops.query()[0]["duration_s"] is None


def test_stops_filter_and_newest_first(store: KpiStore) -> None:
    store.status.upsert([*M1_DAY, status("m3", "down", 12), status("m2", "idle", 30)])
    ids = [s["id"] for s in store.stops.query()]
    assert ids == [f"m2@{ms(30)}", f"m1@{ms(20)}", f"m3@{ms(12)}", f"m1@{ms(10)}"]
    assert [s["id"] for s in store.stops.query(line="l2")] == [f"m3@{ms(12)}"]
    assert [s["id"] for s in store.stops.query(machine="m1", limit=1)] == [f"m1@{ms(20)}"]
    assert [s["id"] for s in store.stops.query(unassigned=False)] == [f"m1@{ms(20)}"]
    assert len(store.stops.query(unassigned=True)) == 3
    assert [s["id"] for s in store.stops.query(since=at(12), until=at(30))] == [
        f"m1@{ms(20)}",
        f"m3@{ms(12)}",
    ]


def test_a_correction_survives_replayed_statuses(tmp_path: Path, plant: PlantConfig) -> None:
    path = tmp_path / "kpi.duckdb"
    stop = f"m1@{ms(10)}"
    with KpiStore(path, plant) as store:
        store.status.upsert(M1_DAY)
        done = store.stops.correct(stop, "jam", "ann", None, at(40))
        assert done is not None
        store.status.upsert(M1_DAY)  # the worker replays from its checkpoint
        assert store.stops.get(stop)["reason"] == "jam"  # type: ignore[index]
    with KpiStore(path, plant) as store:  # the API restarts and reads the topic again
        store.status.upsert(M1_DAY)
        replayed = store.stops.get(stop)
        assert replayed is not None
        assert (replayed["reason"], replayed["original_reason"], replayed["end"]) == (
            "jam",
            "unassigned",
            iso(20),
        )
        assert replayed["corrections"] == 1
        assert [s["id"] for s in store.stops.query()] == [f"m1@{ms(20)}", stop]


def test_stops_of_a_store_that_knew_only_the_latest_state(store: KpiStore) -> None:
    # A store from before the stop log knows the machine's latest state; reading the
    # status topic from the beginning then fills the log, with the right ends.
    store.status.upsert([M1_DAY[-1]])
    assert store.stops.query() == []
    store.status.upsert(M1_DAY)
    assert brief(store.stops.query()) == [
        (f"m1@{ms(20)}", iso(20), iso(25), "idle", "material"),
        (f"m1@{ms(10)}", iso(10), iso(20), "down", "unassigned"),
    ]


def test_corrections_are_numbered_audited_and_withdrawable(store: KpiStore) -> None:
    store.status.upsert(M1_DAY)
    stop = f"m1@{ms(10)}"
    assert store.stops.correct("m1@1", "jam", "ann", None, at(30)) is None
    first = store.stops.correct(stop, "jam", "ann", "blade stuck", at(30))
    second = store.stops.correct(stop, "cleaning", "bob", None, at(31))
    assert first is not None
    assert second is not None
    assert first[1] == {
        "stop_id": stop,
        "machine": "m1",
        "stop_start": iso(10),
        "seq": 1,
        "old_reason": "unassigned",
        "new_reason": "jam",
        "by": "ann",
        "at": iso(30),
        "note": "blade stuck",
    }
    corrected, entry = second
    assert (entry["seq"], entry["old_reason"], entry["new_reason"]) == (2, "jam", "cleaning")
    assert corrected["reason"] == "cleaning"
    assert corrected["planned"] is True  # a planned code of the site's tree
    assert (corrected["corrections"], corrected["corrected_by"], corrected["corrected_at"]) == (
        2,
        "bob",
        iso(31),
    )
    assert [e["seq"] for e in corrected["audit"]] == [1, 2]
    assert [e["seq"] for e in store.stops.audit()] == [2, 1]  # newest first
    assert store.stops.audit(machine="m2") == []
    assert [e["seq"] for e in store.stops.audit(since=at(31))] == [2]

    store.stops.withdraw(stop, 2)  # its event could not be sent
    back = store.stops.get(stop)
    assert back is not None
    assert (back["reason"], back["corrections"], back["corrected_by"]) == ("jam", 1, "ann")
    store.stops.withdraw(stop, 1)
    back = store.stops.get(stop)
    assert back is not None
    assert (back["reason"], back["corrections"], back["audit"]) == ("unassigned", 0, [])
    third = store.stops.correct(stop, "material", "cy", None, at(32))
    assert third is not None
    assert third[1]["seq"] == 1


def test_corrections_from_another_replica_apply_before_or_after_their_stop(
    tmp_path: Path, plant: PlantConfig
) -> None:
    """What the materializer reads from the reasons topic: the same audit and code on a
    replica that made the corrections and on one that only read them, whether a correction
    arrives before its stop's status or after."""
    with KpiStore(tmp_path / "made.duckdb", plant) as made:
        made.status.upsert(M1_DAY)
        stop = f"m1@{ms(10)}"
        first = made.stops.correct(stop, "jam", "ann", "blade stuck", at(30))
        second = made.stops.correct(stop, "cleaning", "bob", None, at(31))
        assert first is not None
        assert second is not None
        entries = [first[1], second[1]]
        wanted = made.stops.get(stop)
    with KpiStore(tmp_path / "early.duckdb", plant) as early:
        early.stops.apply_corrections(entries, [])  # before its stop is known
        assert early.stops.get(stop) is None
        early.status.upsert(M1_DAY)
        assert early.stops.get(stop) == wanted
        # Its own corrections come back from the topic: nothing changes.
        early.stops.apply_corrections(entries, [])
        assert early.stops.get(stop) == wanted
        early.stops.apply_corrections([], [(stop, 2)])  # a tombstone: withdrawn
        back = early.stops.get(stop)
        assert back is not None
        assert (back["reason"], back["corrections"], back["corrected_by"]) == ("jam", 1, "ann")
    with KpiStore(tmp_path / "late.duckdb", plant) as late:
        late.status.upsert(M1_DAY)
        late.stops.apply_corrections(entries, [])
        assert late.stops.get(stop) == wanted


# -- the API -------------------------------------------------------------------------------


@pytest.fixture
def broker(plant: PlantConfig) -> InProcessBroker:
    bus = InProcessBroker(auto_create_partitions=None)
    asyncio.run(ensure_topics(BUS, plant.kafka, InProcessClients(bus)))
    return bus


@pytest.fixture
def client(plant: PlantConfig, store: KpiStore, broker: InProcessBroker) -> Iterator[TestClient]:
    app = create_app(
        plant,
        store,
        CollectorRegistry(),
        bootstrap=BUS,
        clients=InProcessClients(broker),
        access=WRITER,
    )
    with TestClient(app, headers=AUTH) as client:
        yield client


def call(client: TestClient, method: str, url: str, status: int, **kw: Any) -> Any:
    response = client.request(method, url, **kw)
    assert response.status_code == status, response.text
    return response.json()


def corrections_sent(broker: InProcessBroker, plant: PlantConfig) -> list[tuple[int, Any]]:
    topic = plant.kafka.telemetry
    return [
        (n, (r.key, orjson.loads(r.value or b"")))
        for n in range(topic.partitions)
        for r in broker.log(topic.name, n)
    ]


def test_stops_by_state_leave_changeovers_out_for_coding(
    client: TestClient, store: KpiStore
) -> None:
    """The board asks for `state=down&state=idle`: a changeover is downtime but not a
    stop an operator codes; an unknown state is a 422 naming the choices."""
    store.status.upsert(
        [status("m1", "down", 5), status("m3", "changeover", 9), status("m2", "idle", 12)]
    )
    assert [s["state"] for s in store.stops.query(states=["down", "idle"])] == ["idle", "down"]
    body = call(client, "GET", "/v1/stops?state=down&state=idle", 200)
    assert [(s["machine"], s["state"]) for s in body] == [("m2", "idle"), ("m1", "down")]
    assert [s["state"] for s in call(client, "GET", "/v1/stops?state=changeover", 200)] == [
        "changeover"
    ]
    assert len(call(client, "GET", "/v1/stops", 200)) == 3
    refused = call(client, "GET", "/v1/stops?state=running", 422)
    assert "changeover" in str(refused)


def test_reason_trees(client: TestClient) -> None:
    site = call(client, "GET", "/v1/reasons", 200)
    assert site == {
        "machine": None,
        "categories": [
            {"name": "mechanical", "planned": False, "codes": ["jam", "tool change"]},
            {"name": "organisational", "planned": False, "codes": ["material", "no operator"]},
            {"name": "planned", "planned": True, "codes": ["cleaning", "meeting"]},
        ],
    }
    assert call(client, "GET", "/v1/reasons?machine=m1", 200) == {**site, "machine": "m1"}
    assert call(client, "GET", "/v1/reasons?machine=m2", 200)["categories"] == [
        {"name": "m2 faults", "planned": False, "codes": ["e1", "e2"]}
    ]
    assert call(client, "GET", "/v1/reasons?machine=m3", 200)["categories"] == []
    assert "unknown machine" in call(client, "GET", "/v1/reasons?machine=x", 404)["detail"]


def test_list_and_get_stops(client: TestClient, store: KpiStore) -> None:
    store.status.upsert([*M1_DAY, status("m3", "down", 12)])
    body = call(client, "GET", "/v1/stops?line=l1&unassigned=true", 200)
    assert body == [
        {
            "id": f"m1@{ms(10)}",
            "machine": "m1",
            "line": "l1",
            "start": iso(10),
            "end": iso(20),
            "duration_s": 600.0,
            "state": "down",
            "reason": "unassigned",
            "original_reason": "unassigned",
            "planned": False,
            "corrections": 0,
            "corrected_by": None,
            "corrected_at": None,
        }
    ]
    everything = call(client, "GET", f"/v1/stops?since={iso(11)}&until={ms(30)}", 200)
    assert [s["id"] for s in everything] == [f"m1@{ms(20)}", f"m3@{ms(12)}"]
    assert len(call(client, "GET", "/v1/stops?limit=1", 200)) == 1
    assert call(client, "GET", f"/v1/stops/m1@{ms(10)}", 200) == {**body[0], "audit": []}
    assert "GET /v1/stops" in call(client, "GET", "/v1/stops/m1@5", 404)["detail"]
    call(client, "GET", "/v1/stops?machine=nobody", 404)
    call(client, "GET", "/v1/stops?line=l2&machine=m1", 404)
    call(client, "GET", "/v1/stops?since=noon", 422)
    call(client, "GET", "/v1/stops?limit=0", 422)


def test_a_correction_is_audited_and_sent_to_the_core(
    client: TestClient, store: KpiStore, broker: InProcessBroker, plant: PlantConfig
) -> None:
    store.status.upsert([*M1_DAY, status("m3", "down", 12)])
    stop = f"m1@{ms(10)}"
    url = f"/v1/stops/{stop}/reason"
    body = call(client, "POST", url, 202, json={"reason": "jam", "by": "ann", "note": "blade"})
    assert (body["id"], body["reason"], body["original_reason"]) == (stop, "jam", "unassigned")
    assert (body["corrections"], body["corrected_by"]) == (1, "ann")
    correction = body["correction"]
    assert (correction["seq"], correction["old_reason"], correction["new_reason"]) == (
        1,
        "unassigned",
        "jam",
    )
    assert (correction["by"], correction["note"], correction["stop_start"]) == (
        "ann",
        "blade",
        iso(10),
    )
    assert body["audit"] == [correction]
    again = call(client, "POST", url, 202, json={"reason": "meeting", "by": "bob"})
    assert (again["correction"]["seq"], again["reason"], again["planned"]) == (2, "meeting", True)
    # A machine without a tree takes any code the config could hold.
    call(client, "POST", f"/v1/stops/m3@{ms(12)}/reason", 202, json={"reason": "x-7", "by": "cy"})

    home = home_partition("l1", plant.kafka.telemetry.partitions)
    sent = corrections_sent(broker, plant)
    event = {
        "ts": ms(10),
        "machine": "m1",
        "line": "l1",
        "site": "plant-a",
        "signal": "reason",
        "value": 1,
        "reason": "jam",
        "seq": 1,
        "source": "operator:ann",
    }
    second = {**event, "value": 2, "reason": "meeting", "seq": 2, "source": "operator:bob"}
    assert sent[:2] == [(home, (b"m1", event)), (home, (b"m1", second))]
    for _, (_, sent_event) in sent:  # telemetry events as the contract has them
        jsonschema.validate(sent_event, TELEMETRY_SCHEMA)
    assert sent[2][0] == home_partition("l2", plant.kafka.telemetry.partitions)

    detail = call(client, "GET", f"/v1/stops/{stop}", 200)
    assert [(e["old_reason"], e["new_reason"], e["by"]) for e in detail["audit"]] == [
        ("unassigned", "jam", "ann"),
        ("jam", "meeting", "bob"),
    ]
    audit = call(client, "GET", "/v1/reasons/audit?machine=m1", 200)
    assert [e["seq"] for e in audit] == [2, 1]
    assert len(call(client, "GET", "/v1/reasons/audit?limit=1", 200)) == 1
    coded = call(client, "GET", "/v1/stops?unassigned=false", 200)
    assert [(c["id"], c["reason"]) for c in coded] == [
        (f"m1@{ms(20)}", "material"),
        (f"m3@{ms(12)}", "x-7"),
        (stop, "meeting"),
    ]


@pytest.mark.parametrize(
    ("stop", "body", "expected", "message"),
    [
        ("m1@1", {"reason": "jam", "by": "ann"}, 404, "unknown stop 'm1@1'"),
        (
            "m1@{down}",
            {"reason": "e1", "by": "ann"},
            422,
            "reason 'e1' is not in the reason tree of 'm1'; use one of jam, tool change, "
            "material, no operator, cleaning, meeting",
        ),
        ("m1@{down}", {"reason": "unassigned", "by": "ann"}, 422, "choose a code"),
        ("m3@{m3}", {"reason": "bad?code", "by": "ann"}, 422, "reason code 'bad?code'"),
        ("m1@{down}", {"reason": "jam"}, 422, "'by' is required"),
        ("m1@{down}", {"reason": "jam", "by": ""}, 422, "by"),
        ("m1@{down}", {"reason": "jam", "by": "x" * 65}, 422, "by"),
        ("m1@{old}", {"reason": "jam", "by": "ann"}, 409, "too old to restate"),
    ],
)
def test_a_correction_that_cannot_be_made(
    client: TestClient,
    store: KpiStore,
    broker: InProcessBroker,
    plant: PlantConfig,
    stop: str,
    body: dict[str, Any],
    expected: int,
    message: str,
) -> None:
    store.status.upsert(
        [
            status("m1", "down", -200),  # the old stop: 3 h before the latest event
            status("m1", "running", -190),
            *M1_DAY,
            status("m3", "down", 12),
            status("m2", "running", 0, seen_min=25),
        ]
    )
    stop = stop.format(down=ms(10), m3=ms(12), old=ms(-200))
    detail = call(client, "POST", f"/v1/stops/{stop}/reason", expected, json=body)["detail"]
    assert message in detail
    assert corrections_sent(broker, plant) == []
    assert store.stops.audit() == []


def test_the_horizon_is_restate_horizon_plus_lateness(client: TestClient, store: KpiStore) -> None:
    # The latest event is at 70:10; the horizon (3600 s + 10 s) reaches back to 10:00.
    store.status.upsert([*M1_DAY, status("m2", "running", 0, seen_min=70 + 1 / 6)])
    ok = {"reason": "jam", "by": "ann"}
    call(client, "POST", f"/v1/stops/m1@{ms(10)}/reason", 202, json=ok)
    store.status.upsert([status("m2", "running", 0, seen_min=70 + 1 / 6 + 1 / 60)])
    detail = call(client, "POST", f"/v1/stops/m1@{ms(10)}/reason", 409, json=ok)["detail"]
    assert "kpi.restate_horizon_s + kpi.lateness_s" in detail


def test_without_a_producer_a_correction_is_503_and_nothing_recorded(
    plant: PlantConfig, store: KpiStore
) -> None:
    store.status.upsert(M1_DAY)
    app = create_app(plant, store, CollectorRegistry(), access=WRITER)
    with TestClient(app, headers=AUTH) as client:
        body = {"reason": "jam", "by": "ann"}
        detail = call(client, "POST", f"/v1/stops/m1@{ms(10)}/reason", 503, json=body)["detail"]
        assert "without a producer" in detail
        assert call(client, "GET", f"/v1/stops/m1@{ms(10)}", 200)["reason"] == "unassigned"
    assert store.stops.audit() == []


def test_a_correction_that_cannot_be_sent_is_withdrawn(plant: PlantConfig, store: KpiStore) -> None:
    store.status.upsert(M1_DAY)
    empty = InProcessBroker(auto_create_partitions=None)  # no telemetry topic to send to
    app = create_app(
        plant,
        store,
        CollectorRegistry(),
        bootstrap=BUS,
        clients=InProcessClients(empty),
        access=WRITER,
    )
    with TestClient(app, headers=AUTH) as client:
        body = {"reason": "jam", "by": "ann"}
        detail = call(client, "POST", f"/v1/stops/m1@{ms(10)}/reason", 503, json=body)["detail"]
        assert "could not be sent to Kafka" in detail
        assert "nothing was recorded" in detail
    stop = store.stops.get(f"m1@{ms(10)}")
    assert stop is not None
    assert (stop["reason"], stop["corrections"], stop["audit"]) == ("unassigned", 0, [])
