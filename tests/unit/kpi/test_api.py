"""The KPI API over real HTTP (TestClient with the lifespan running), DuckDB on tmp_path."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient  # httpx2 under it (Starlette >= 1.10)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from linepulse.config import PlantConfig
from services.kpi.api import create_app
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from tests.unit.kpi.test_store import (
    hour_record,
    plant_config,
    record,
    seed_current,
    seed_pareto,
)

SCHEMA = json.loads((Path(__file__).parents[3] / "schemas" / "kpi-record.schema.json").read_text())


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def store(tmp_path: Path, plant: PlantConfig) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as opened:
        yield opened


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(
    plant: PlantConfig, store: KpiStore, registry: CollectorRegistry
) -> Iterator[TestClient]:
    with TestClient(create_app(plant, store, registry)) as client:
        yield client


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, key(sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def get(client: TestClient, url: str, status: int = 200) -> Any:
    response = client.get(url)
    assert response.status_code == status, response.text
    return response.json()


# -- KPI records ---------------------------------------------------------------------------


def test_current_serves_records_as_the_contract(client: TestClient, store: KpiStore) -> None:
    seed_current(store)
    body = get(client, "/v1/kpis/current")
    assert [(r["line"], r["machine"], r["stops"]) for r in body] == [
        ("l1", "m1", 11),
        ("l1", "m2", 21),
        ("l1", None, 41),
        ("l2", "m3", 31),
        ("l2", None, 50),
    ]
    assert body[0] == record("m1", start="2026-11-02T13:00:00Z", stops=11)
    for one in body:
        jsonschema.validate(one, SCHEMA)


@pytest.mark.parametrize(
    ("query", "stops"),
    [
        ("?line=l1&scope=machine", [11, 21]),
        ("?scope=line", [41, 50]),
        ("?machine=m3", [31]),
        ("?machine=m3&line=l2", [31]),
        ("?window=1h", [99]),
    ],
)
def test_current_filters(client: TestClient, store: KpiStore, query: str, stops: list[int]) -> None:
    seed_current(store)
    assert [r["stops"] for r in get(client, "/v1/kpis/current" + query)] == stops


def test_history_takes_rfc3339_with_any_offset_or_epoch_ms(
    client: TestClient, store: KpiStore
) -> None:
    store.history.upsert(
        [
            record("m1", window="1h", start="2026-11-02T05:00:00Z", stops=1),
            record("m1", window="1h", start="2026-11-02T06:00:00Z", stops=2),
            record("m2", window="1h", start="2026-11-02T06:00:00Z", stops=3),
            record("m1", window="15m", start="2026-11-02T06:00:00Z", stops=4),
            record("m1", window="1h", start="2026-11-02T07:00:00Z", stops=5),
        ]
    )
    url = "/v1/kpis/history?window=1h&from="
    for start in ("2026-11-02T06:00:00Z", "2026-11-02T07:00:00%2B01:00", "1793599200000"):
        assert [r["stops"] for r in get(client, url + start)] == [2, 3, 5]
    # A '+' sent unencoded arrives as a space; it is still understood.
    assert [r["stops"] for r in get(client, url + "2026-11-02T07:00:00+01:00")] == [2, 3, 5]
    bounded = "/v1/kpis/history?from=2026-11-02T06:00:00Z&to=2026-11-02T07:00:00Z"
    assert [r["stops"] for r in get(client, bounded)] == [4, 2, 3]
    assert [r["stops"] for r in get(client, bounded + "&machine=m2")] == [3]
    for one in get(client, bounded):
        jsonschema.validate(one, SCHEMA)


def test_machines_lists_configured_machines_with_their_state(
    client: TestClient, store: KpiStore
) -> None:
    store.status.upsert(
        [
            {
                "machine": "m2",
                "line": "l1",
                "state": "changeover",
                "reason": "tool change",
                "since": "2026-11-02T06:00:00Z",
                "last_seen": "2026-11-02T06:05:00.5Z",
            }
        ]
    )
    unknown = {"state": None, "reason": None, "since": None, "last_seen": None}
    assert get(client, "/v1/machines") == [
        {"machine": "m1", "line": "l1", **unknown},
        {
            "machine": "m2",
            "line": "l1",
            "state": "changeover",
            "reason": "tool change",
            "since": "2026-11-02T06:00:00Z",
            "last_seen": "2026-11-02T06:05:00.500Z",
        },
        {"machine": "m3", "line": "l2", **unknown},
    ]


def test_pareto(client: TestClient, store: KpiStore) -> None:
    seed_pareto(store)
    assert get(client, "/v1/downtime/pareto?line=l1&to=2026-11-02T07:00:00Z") == {
        "line": "l1",
        "from": None,
        "to": "2026-11-02T07:00:00Z",
        "shift": None,
        "window": "1h",
        "includes_open_window": False,
        "reasons": [
            {"reason": "jam", "seconds": 150.0, "share": 150 / 210},
            {"reason": "electrical", "seconds": 60.0, "share": 60 / 210},
        ],
    }
    # No shift record stored: everything, the open hour (jam 999 s on m2) included ...
    everything = get(client, "/v1/downtime/pareto")
    assert (everything["from"], everything["to"], everything["shift"]) == (None, None, None)
    assert everything["includes_open_window"] is True
    assert [e["reason"] for e in everything["reasons"]] == [
        "jam",
        "material_shortage",
        "electrical",
    ]
    # ... unless only closed windows are asked for.
    closed = get(client, "/v1/downtime/pareto?closed_only=true")
    assert closed["includes_open_window"] is False
    assert [e["reason"] for e in closed["reasons"]] == ["material_shortage", "jam", "electrical"]


def test_pareto_answers_the_current_shift_with_its_open_hour_by_default(
    client: TestClient, store: KpiStore
) -> None:
    """The board showed 58 s of jam while the Pareto answered []: only closed hours
    counted, over all time, and nothing said so."""
    shift = "2026-11-02T13:00:00Z"
    store.history.upsert(
        [
            record(None, start="2026-11-02T05:00:00Z", final=True),  # the previous shift
            record(None, start=shift),  # the current one, open
            record(None, line="l2", start=shift),
            hour_record("m1", "2026-11-02T12:00:00Z", {"electrical": 100.0}),  # before it
            hour_record("m1", shift, {"electrical": 30.0}),
            hour_record("m2", "2026-11-02T14:00:00Z", {"jam": 58.0}, final=False),
            hour_record("m3", "2026-11-02T14:00:00Z", {"jam": 7.0}, line="l2", final=False),
        ]
    )
    assert get(client, "/v1/downtime/pareto?line=l1") == {
        "line": "l1",
        "from": shift,
        "to": "2026-11-02T21:00:00Z",
        "shift": "early",
        "window": "1h",
        "includes_open_window": True,
        "reasons": [
            {"reason": "jam", "seconds": 58.0, "share": 58 / 88},
            {"reason": "electrical", "seconds": 30.0, "share": 30 / 88},
        ],
    }
    plant_wide = get(client, "/v1/downtime/pareto")
    assert (plant_wide["line"], plant_wide["from"], plant_wide["shift"]) == (None, shift, "early")
    assert plant_wide["reasons"][0] == {"reason": "jam", "seconds": 65.0, "share": 65 / 95}
    closed = get(client, "/v1/downtime/pareto?line=l1&closed_only=true")
    assert (closed["from"], closed["includes_open_window"]) == (shift, False)
    assert closed["reasons"] == [{"reason": "electrical", "seconds": 30.0, "share": 1.0}]


def test_pareto_uses_the_finest_window_computed_when_1h_is_not(
    store: KpiStore, registry: CollectorRegistry
) -> None:
    plant = plant_config(windows=["15m", "shift"])
    store.history.upsert(
        [
            record(
                "m1",
                window="15m",
                start="2026-11-02T06:00:00Z",
                final=True,
                downtime_by_reason={"jam": 10.0},
            ),
            record(
                "m1",
                window="shift",
                start="2026-11-02T05:00:00Z",
                final=True,
                downtime_by_reason={"jam": 99.0},
            ),
        ]
    )
    with TestClient(create_app(plant, store, registry)) as client:
        body = get(client, "/v1/downtime/pareto")
    # The shift record is a machine's, not a line's: no current shift, so everything.
    assert (body["window"], body["from"]) == ("15m", None)
    assert body["reasons"] == [{"reason": "jam", "seconds": 10.0, "share": 1.0}]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("/v1/kpis/current?window=2m", "query parameter 'window': Input should be '1m'"),
        ("/v1/kpis/current?scope=everything", "query parameter 'scope'"),
        ("/v1/kpis/current?machine=m1&scope=line", "drop machine= or use scope=machine"),
        ("/v1/kpis/history", "query parameter 'from' is required"),
        ("/v1/kpis/history?from=yesterday", "'from' must be RFC 3339 with an offset"),
        ("/v1/kpis/history?from=2026-11-02T06:00:00", "got '2026-11-02T06:00:00'"),
        ("/v1/kpis/history?from=2026-11-02T06:00:00Z&to=2026-13-02T06:00:00Z", "'to' must be"),
        (
            "/v1/kpis/history?from=2026-11-02T07:00:00Z&to=2026-11-02T07:00:00%2B01:00",
            "'from' (2026-11-02T07:00:00Z) must be before 'to' (2026-11-02T06:00:00Z)",
        ),
        ("/v1/kpis/history?from=0&window=hour", "query parameter 'window'"),
        ("/v1/downtime/pareto?from=2026-11-02T07:00:00Z&to=1", "must be before 'to'"),
    ],
)
def test_bad_parameters_are_422_with_a_message(client: TestClient, url: str, detail: str) -> None:
    body = get(client, url, 422)
    assert set(body) == {"detail"}
    assert detail in body["detail"]


def test_a_window_the_plant_does_not_compute_is_422(
    store: KpiStore, registry: CollectorRegistry
) -> None:
    plant = plant_config(windows=["1h", "shift"])
    with TestClient(create_app(plant, store, registry)) as client:
        assert get(client, "/v1/kpis/current?window=1m", 422) == {
            "detail": "window '1m' is not computed for this plant; use one of 1h, shift "
            "(kpi.windows in the plant config)"
        }
        assert get(client, "/v1/kpis/current?window=1h") == []


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        (
            "/v1/kpis/current?machine=press-9",
            "unknown machine 'press-9'; GET /v1/machines lists them",
        ),
        (
            "/v1/kpis/current?line=l9",
            "unknown line 'l9'; GET /v1/machines lists lines and machines",
        ),
        (
            "/v1/kpis/history?from=0&machine=m3&line=l1",
            "machine 'm3' is on line 'l2', not 'l1'; GET /v1/machines lists machines by line",
        ),
        ("/v1/kpis/history?from=0&machine=x", "unknown machine 'x'; GET /v1/machines lists them"),
        (
            "/v1/downtime/pareto?line=x",
            "unknown line 'x'; GET /v1/machines lists lines and machines",
        ),
    ],
)
def test_unknown_lines_and_machines_are_404(client: TestClient, url: str, detail: str) -> None:
    assert get(client, url, 404) == {"detail": detail}


# -- metrics and health --------------------------------------------------------------------


def test_metrics_show_the_current_window_after_observe_records(
    plant: PlantConfig, store: KpiStore, registry: CollectorRegistry
) -> None:
    metrics = KpiMetrics.create(registry, plant)
    with TestClient(create_app(plant, store, registry)) as client:
        previous = "2026-11-02T05:00:00Z"
        current = "2026-11-02T13:00:00Z"
        batch = [
            record("m1", start=current, oee=0.70),
            record("m1", start=current, oee=0.75),  # later in the batch: wins
            record(None, start=current, oee=0.6, quality=None, total_count=0, coverage=None),
            record("m2", start=current, unknown_s=2700.0),  # data for a quarter of the time
            record("ghost", start=current, oee=0.1),  # not in the config: ignored
        ]
        metrics.observe_records(batch)
        # The previous shift closing after the next one opened does not set it back.
        metrics.observe_records([record("m1", start=previous, final=True, oee=0.2)])
        text = client.get("/metrics").text
    # The exposition as written (prometheus_client sorts labels by name) ...
    assert (
        'linepulse_oee_ratio{line="l1",machine="m1",site="plant-a",window="shift"} 0.75\n' in text
    )
    # ... and as Prometheus reads it.
    values = samples(text)
    m1 = {"site": "plant-a", "line": "l1", "machine": "m1", "window": "shift"}
    line = m1 | {"machine": ""}
    assert values["linepulse_oee_ratio", key(m1)] == 0.75
    assert values["linepulse_oee_ratio", key(line)] == 0.6
    assert math.isnan(values["linepulse_quality_ratio", key(line)])
    assert values["linepulse_parts", key(m1 | {"kind": "total"})] == 2800
    assert values["linepulse_parts", key(m1 | {"kind": "good"})] == 2744
    assert values["linepulse_parts", key(m1 | {"kind": "reject"})] == 56
    assert values["linepulse_parts", key(line | {"kind": "total"})] == 0
    assert values["linepulse_planned_seconds", key(m1)] == 3600
    assert values["linepulse_run_seconds", key(m1)] == 3000
    assert values["linepulse_downtime_seconds", key(m1)] == 600
    assert values["linepulse_unknown_seconds", key(m1)] == 0
    assert values["linepulse_stops", key(m1)] == 2
    assert values["linepulse_availability_ratio", key(m1)] == 3000 / 3600
    assert values["linepulse_performance_ratio", key(m1)] == 2800 / 3000
    assert values["linepulse_coverage_ratio", key(m1)] == 1.0
    assert values["linepulse_coverage_ratio", key(m1 | {"machine": "m2"})] == 0.25
    assert math.isnan(values["linepulse_coverage_ratio", key(line)])
    assert "ghost" not in text
    # The service metrics are there for the worker to update.
    for name in (
        "linepulse_events_in_total",
        "linepulse_events_rejected_total",
        "linepulse_events_late_total",
        "linepulse_events_too_late_total",
        "linepulse_dlq_total",
        "linepulse_consumer_lag",
        "linepulse_batch_seconds",
        "linepulse_records_published_total",
        "linepulse_checkpoint_seconds",
    ):
        assert f"# TYPE {name} " in text, name
    assert "linepulse_events_late_total 0.0\n" in text


def test_healthz(client: TestClient) -> None:
    assert get(client, "/healthz") == {"status": "ok", "detail": None}


def test_readyz_turns_ready_when_ready_says_so(
    plant: PlantConfig, store: KpiStore, registry: CollectorRegistry
) -> None:
    caught_up = False
    with TestClient(create_app(plant, store, registry, ready=lambda: caught_up)) as client:
        body = get(client, "/readyz", 503)
        assert body["status"] == "not ready"
        assert "catching up" in body["detail"]
        assert get(client, "/healthz") == {"status": "ok", "detail": None}
        caught_up = True
        assert get(client, "/readyz") == {"status": "ready", "detail": None}


def test_readyz_is_503_when_the_store_cannot_be_queried(
    tmp_path: Path, plant: PlantConfig, registry: CollectorRegistry
) -> None:
    store = KpiStore(tmp_path / "closed.duckdb", plant)
    with TestClient(create_app(plant, store, registry)) as client:
        assert get(client, "/readyz")["status"] == "ready"
        store.close()
        body = get(client, "/readyz", 503)
    assert body["detail"].startswith("the KPI store cannot be queried: ")


def test_lifespan_extra_runs_for_the_life_of_the_app(
    plant: PlantConfig, store: KpiStore, registry: CollectorRegistry
) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def materializer(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"start {app.title}")
        yield
        events.append("stop")

    app = create_app(plant, store, registry, lifespan_extra=materializer)
    assert events == []
    with TestClient(app) as client:
        assert events == ["start LinePulse KPI API"]
        get(client, "/healthz")
    assert events == ["start LinePulse KPI API", "stop"]


def test_coverage_is_served_as_stored_and_documented(client: TestClient, store: KpiStore) -> None:
    thin = record("m1", window="1h", start="2026-11-02T06:00:00Z", unknown_s=1368.0)
    idle = record("m2", window="1h", start="2026-11-02T06:00:00Z", planned_s=0.0, run_s=0.0)
    store.history.upsert([thin, idle])
    body = get(client, "/v1/kpis/history?window=1h&from=2026-11-02T06:00:00Z")
    assert [(r["machine"], r["coverage"]) for r in body] == [("m1", 0.62), ("m2", None)]
    current = get(client, "/v1/kpis/current?window=1h&machine=m1")
    assert current[0]["coverage"] == 0.62
    spec = get(client, "/openapi.json")
    field = spec["components"]["schemas"]["KpiRecord"]["properties"]["coverage"]
    assert "planned" in field["description"]
    assert {"type": "number", "maximum": 1.0, "minimum": 0.0} in field["anyOf"]
    assert "coverage" in spec["components"]["schemas"]["KpiRecord"]["required"]


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    spec = get(client, "/openapi.json")
    assert spec["info"]["title"] == "LinePulse KPI API"
    assert spec["info"]["version"]
    assert set(spec["paths"]) >= {
        "/v1/kpis/current",
        "/v1/kpis/history",
        "/v1/machines",
        "/v1/downtime/pareto",
        "/metrics",
        "/healthz",
        "/readyz",
    }
    history = spec["paths"]["/v1/kpis/history"]["get"]
    params = {p["name"]: p for p in history["parameters"]}
    assert params["from"]["required"] is True
    assert params["window"]["schema"]["anyOf"][0]["enum"] == ["1m", "15m", "1h", "shift", "day"]
