"""Reason coding end to end on the in-process bus: the KPI worker, the API's materializer
and the API (uvicorn, real HTTP) in one event loop. A stop that came without a reason is
`unassigned`; an operator's correction through the API reaches the core, which restates
the windows it touches (revision 1), the Pareto moves, and the audit keeps both codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, parse_config
from linepulse.http.settings import ApiAccess
from linepulse.runtime import free_loopback_ports, serve_http
from services.kpi.api import create_app
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.machine_status import MachineStatus
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from services.kpi.worker import KpiWorker
from tests.unit.kpi.test_worker_on_bus import NO_BROKER, produce, run_until

T0 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
DOWN_AT, UP_AT, END_AT = 10, 15, 65  # minutes after T0
TOKEN = "reason-coding-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ms(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp() * 1000)


def iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def plant_config() -> PlantConfig:
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "UTC",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
            "reasons": [
                {"name": "mechanical", "codes": ["jam", "tool change"]},
                {"name": "planned", "planned": True, "codes": ["cleaning"]},
            ],
            "kpi": {"lateness_s": 10, "restate_horizon_s": 3600},
            "kafka": {
                "telemetry": {"name": "telemetry", "partitions": 2},
                "kpi": {"name": "kpi", "partitions": 2},
                "group": "kpi-workers",
                "open_interval_s": 0.2,
                "checkpoint_interval_s": 0.3,
            },
            "lines": [{"id": "l1", "machines": [{"id": "m1", "ideal_cycle_time_s": 1.0}]}],
        }
    )


def telemetry() -> list[dict[str, Any]]:
    """m1 runs from 06:00, goes down without a reason at 06:10 for 5 minutes, runs again
    to 07:05 (so the 1m, 15m and 1h windows of the stop close): one state sample per
    change, a part a second while running, counted every 30 s."""
    events: list[dict[str, Any]] = [
        {"ts": ms(0), "machine": "m1", "signal": "state", "value": "running"},
        {"ts": ms(DOWN_AT), "machine": "m1", "signal": "state", "value": "down"},
        {"ts": ms(UP_AT), "machine": "m1", "signal": "state", "value": "running"},
    ]
    parts = 0
    for half_minutes in range(2 * END_AT + 1):
        minute = half_minutes / 2
        if not DOWN_AT < minute <= UP_AT:
            parts += 30 if minute > 0 else 0
        events.append({"ts": ms(minute), "machine": "m1", "signal": "total_count", "value": parts})
    return sorted(events, key=lambda e: e["ts"])


async def test_every_state_change_of_a_batch_is_a_status_with_its_reason(
    tmp_path: Path,
) -> None:
    config = plant_config()
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, config.kafka, clients)
    states = [
        ("running", None, 0),
        ("down", None, 1),
        ("down", "jam", 2),  # a new reason while down: a change
        ("down", "jam", 3),  # a repeat: none
        ("idle", None, 4),
        ("running", None, 5),
    ]
    events = [
        {"ts": ms(m), "machine": "m1", "signal": "state", "value": state}
        | ({"reason": reason} if reason else {})
        for state, reason, m in states
    ]
    await produce(clients, config.kafka.telemetry.name, events)
    worker = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )

    def statuses() -> list[dict[str, Any]]:
        return [orjson.loads(r.value or b"") for r in broker.log(config.kafka.status.name, 0)]

    await run_until(worker, lambda: any(s["since"] == ms(5) for s in statuses()))
    changes = [(s["state"], s["reason"], s["since"]) for s in statuses()]
    assert changes == [
        ("running", None, ms(0)),
        ("down", None, ms(1)),
        ("down", "jam", ms(2)),
        ("idle", None, ms(4)),
        ("running", None, ms(5)),
    ]
    assert set(statuses()[0]) == {"machine", "line", "state", "reason", "since", "last_seen"}
    assert statuses()[-1]["last_seen"] == ms(5)
    # Keyed by machine and since: what Kafka's compaction leaves (the latest record per
    # key) still holds every state change, so a replica started from nothing rebuilds the
    # same stops; keyed by machine alone, only the current state would be left.
    log = broker.log(config.kafka.status.name, 0)
    compacted = {r.key: orjson.loads(r.value or b"") for r in log}
    assert len(compacted) == len(changes)
    with (
        KpiStore(tmp_path / "full.duckdb", config) as full,
        KpiStore(tmp_path / "compacted.duckdb", config) as rebuilt,
    ):
        full.status.upsert(statuses())
        rebuilt.status.upsert(list(compacted.values()))
        assert [s["id"] for s in full.stops.query()] == [
            f"m1@{ms(4)}", f"m1@{ms(2)}", f"m1@{ms(1)}",
        ]  # fmt: skip
        assert rebuilt.stops.query() == full.stops.query()
        assert rebuilt.status.machines() == full.status.machines()
    # Checkpoints keep statuses as vars(); one written before `reason` existed loads.
    old: dict[str, Any] = {"line": "l1", "state": "down", "since": 1, "last_seen": 2}
    assert MachineStatus(**old).reason is None
    assert "reason" in vars(MachineStatus("l1"))


@asynccontextmanager
async def kpi_service(
    config: PlantConfig, state: Path
) -> AsyncIterator[tuple[InProcessClients, httpx.AsyncClient, KpiStore]]:
    """Worker, materializer and API (uvicorn on a loopback port) on one in-process bus."""
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, config.kafka, clients)
    store = KpiStore(state / "kpi.duckdb", config)
    worker = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        DirectoryStore(state / "checkpoints"),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    materializer = Materializer(
        config.kafka, NO_BROKER, store, KpiMetrics.create(CollectorRegistry()), clients=clients
    )
    app = create_app(
        config,
        store,
        CollectorRegistry(),
        ready=lambda: materializer.ready,
        bootstrap=NO_BROKER,
        clients=clients,
        access=ApiAccess(tokens=(SecretStr(TOKEN),)),  # corrections are writes
    )
    (port,) = free_loopback_ports(1)
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(worker.run(stop), name="kpi-worker")
            group.create_task(materializer.run(stop), name="kpi-materializer")
            server = serve_http(group, stop, app, "127.0.0.1", port, "kpi-api", lifespan="on")
            app.state.board.stop_when(lambda: server.should_exit)
            try:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=10, headers=AUTH
                ) as http:
                    yield clients, http, store
            finally:
                stop.set()
    finally:
        store.close()


async def poll(
    http: httpx.AsyncClient, path: str, until: Callable[[Any], bool], timeout_s: float = 60
) -> Any:
    """GET `path` until `until(body)` holds; the last body in the failure otherwise."""
    body: Any = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    response = await http.get(path)
                except httpx.TransportError:  # the server is still starting
                    response = None
                if response is not None and response.status_code == 200:
                    body = response.json()
                    if until(body):
                        return body
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"GET {path}: still {str(body)[:2000]}") from None


# Every closed window of all time: what the Pareto answered before it defaulted to the
# current shift (with its open windows).
PARETO = "/v1/downtime/pareto?line=l1&from=0&closed_only=true"


async def poll_pareto(http: httpx.AsyncClient, until: Callable[[Any], bool]) -> Any:
    """The Pareto's reasons, polled until `until(reasons)` holds."""
    body = await poll(http, PARETO, lambda body: until(body["reasons"]))
    return body["reasons"]


def window(records: list[dict[str, Any]], kind: str, start: str) -> dict[str, Any] | None:
    return next((r for r in records if r["window"] == kind and r["window_start"] == start), None)


async def test_a_reason_correction_restates_the_windows_and_moves_the_pareto(
    tmp_path: Path,
) -> None:
    config = plant_config()
    history = f"/v1/kpis/history?from={iso(0)}&machine=m1"
    async with kpi_service(config, tmp_path) as (clients, http, _store):
        await produce(clients, config.kafka.telemetry.name, telemetry())

        # The stop's windows close with its 5 minutes unassigned.
        def closed(records: list[dict[str, Any]]) -> bool:
            hour = window(records, "1h", iso(0))
            return hour is not None and hour["final"]

        records = await poll(http, history, closed)
        quarter = window(records, "15m", iso(0))
        assert quarter is not None
        assert (quarter["final"], quarter["revision"]) == (True, 0)
        assert quarter["downtime_by_reason"] == {"unassigned": 300.0}
        assert await poll_pareto(http, bool) == [
            {"reason": "unassigned", "seconds": 300.0, "share": 1.0}
        ]
        (stop,) = await poll(
            http, "/v1/stops?machine=m1", lambda stops: stops and stops[0]["end"] is not None
        )
        assert (stop["id"], stop["start"], stop["end"]) == (f"m1@{ms(DOWN_AT)}", iso(10), iso(15))
        assert (stop["reason"], stop["duration_s"], stop["state"]) == ("unassigned", 300.0, "down")

        # An operator codes it.
        response = await http.post(
            f"/v1/stops/{stop['id']}/reason", json={"reason": "jam", "by": "ann", "note": "blade"}
        )
        assert response.status_code == 202, response.text
        assert response.json()["correction"]["seq"] == 1

        def restated(records: list[dict[str, Any]]) -> bool:
            quarter = window(records, "15m", iso(0))
            return quarter is not None and quarter["revision"] >= 1

        records = await poll(http, history, restated)
        for kind, start, seconds in (
            ("1m", iso(DOWN_AT), 60.0),
            ("1m", iso(UP_AT - 1), 60.0),
            ("15m", iso(0), 300.0),
            ("1h", iso(0), 300.0),
        ):
            record = window(records, kind, start)
            assert record is not None, (kind, start)
            assert (kind, record["final"], record["revision"]) == (kind, True, 1)
            assert record["downtime_by_reason"] == {"jam": seconds}, (kind, start)
        # A window the stop does not touch is not restated.
        before = window(records, "1m", iso(DOWN_AT - 1))
        assert before is not None
        assert (before["revision"], before["downtime_by_reason"]) == (0, {})
        assert await poll_pareto(http, lambda p: p and p[0]["reason"] == "jam") == [
            {"reason": "jam", "seconds": 300.0, "share": 1.0}
        ]

        detail = (await http.get(f"/v1/stops/{stop['id']}")).json()
        assert (detail["reason"], detail["original_reason"], detail["corrections"]) == (
            "jam",
            "unassigned",
            1,
        )
        assert [(e["seq"], e["old_reason"], e["new_reason"], e["by"]) for e in detail["audit"]] == [
            (1, "unassigned", "jam", "ann")
        ]
        audit = (await http.get("/v1/reasons/audit?machine=m1")).json()
        assert [(e["stop_id"], e["new_reason"], e["note"]) for e in audit] == [
            (stop["id"], "jam", "blade")
        ]

        # Corrected again, to a planned code: the 5 minutes leave downtime for planned stop.
        response = await http.post(
            f"/v1/stops/{stop['id']}/reason", json={"reason": "cleaning", "by": "bob"}
        )
        assert response.status_code == 202, response.text
        assert (response.json()["correction"]["seq"], response.json()["planned"]) == (2, True)

        def planned(records: list[dict[str, Any]]) -> bool:
            quarter = window(records, "15m", iso(0))
            return quarter is not None and quarter["revision"] >= 2

        quarter = window(await poll(http, history, planned), "15m", iso(0))
        assert quarter is not None
        assert (quarter["downtime_s"], quarter["downtime_by_reason"]) == (0.0, {})
        assert quarter["planned_s"] == 600.0
        assert await poll_pareto(http, lambda p: p == []) == []
        detail = (await http.get(f"/v1/stops/{stop['id']}")).json()
        assert [e["new_reason"] for e in detail["audit"]] == ["jam", "cleaning"]
        assert detail["original_reason"] == "unassigned"
