"""Schemathesis over the OpenAPI of the KPI query API and the alerts API, on real HTTP.

Each API runs under uvicorn on a loopback port (in a thread, so schemathesis's blocking
client can call it) with a populated store: KPI records, a stop log with corrections
possible through the in-process bus, and an open alert. Schemathesis generates requests
from each operation's schema, valid and invalid, with the write token. Checks: no 5xx,
each response matches its documented schema and content type, and every 4xx says why
(`{"detail": "..."}` that is not empty).

The board's event stream (`/v1/board/events`) is left out: it is an endless SSE response.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.core.result import Err
from schemathesis.schemas import BaseSchema

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.http.settings import ApiAccess, HttpLimits
from linepulse.runtime import QuietServer, free_loopback_ports
from services.alerts.api import create_app as create_alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.metrics import AlertMetrics
from services.alerts.store import AlertStore
from services.kpi.api import create_app as create_kpi_app
from services.kpi.store import KpiStore
from tests.integration.test_alerts_api import PLANT as ALERTS_PLANT
from tests.unit.kpi.test_stops import M1_DAY
from tests.unit.kpi.test_stops import plant_config as stops_plant
from tests.unit.kpi.test_store import seed_current, seed_pareto

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Schemathesis sends requests back to back: rate limits off, or most answers are 429.
ACCESS = ApiAccess(
    tokens=(SecretStr(TOKEN),), limits=HttpLimits(read_rate_per_s=0, write_rate_per_s=0)
)
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def rejection_says_why(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx must tell the caller what was wrong: `{"detail": ...}`, not empty."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    detail = body.get("detail") if isinstance(body, dict) else None
    if not detail:
        raise AssertionError(f"{response.status_code} without a detail: {body!r}")
    return True


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def serve(make_app: Callable[[], Any], before: Callable[[], Any] | None = None) -> Iterator[str]:
    """Build the app and run it under uvicorn in a thread on a free loopback port (built
    there, since the alerts engine's SQLite store belongs to the thread that opened it);
    yields its base URL."""
    (port,) = free_loopback_ports(1)
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        config = uvicorn.Config(
            make_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        servers.append(QuietServer(config))
        if before is not None:
            await before()
        await servers[0].serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="api-under-test")
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def kpi_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    plant = stops_plant()
    folder = tmp_path_factory.mktemp("kpi-api")
    with KpiStore(folder / "kpi.duckdb", plant) as store:
        seed_current(store)
        seed_pareto(store)
        store.status.upsert(M1_DAY)
        clients = InProcessClients(InProcessBroker(auto_create_partitions=None))

        def make_app() -> Any:
            app = create_kpi_app(
                plant,
                store,
                CollectorRegistry(),
                bootstrap="in-process",
                clients=clients,
                access=ACCESS,
            )
            app.state.board.stop_when(lambda: True)  # the SSE stream, if ever opened, ends
            return app

        yield from serve(make_app, lambda: ensure_topics("in-process", plant.kafka, clients))


@pytest.fixture(scope="module")
def alerts_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("alerts")

    def make_app() -> Any:
        engine = AlertEngine(ALERTS_PLANT, AlertStore.in_dir(folder))
        now = int(time.time() * 1000)
        engine.observe_samples([(now, "M1", "state", None, "down")], now)
        engine.evaluate(now)
        registry = CollectorRegistry()
        AlertMetrics.create(registry)
        return create_alerts_app(engine, registry, TOKEN, access=ACCESS)

    yield from serve(make_app)


def operations(url: str, *, leave_out: str | None = None) -> list[Any]:
    """The API's operations from its live OpenAPI document; one it cannot read fails here."""
    schema: BaseSchema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    if leave_out is not None:
        schema = schema.exclude(path=leave_out)
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"an operation schemathesis cannot read: {result.err()}")
        found.append(result.ok())
    return found


def fuzz(operation: Any) -> None:
    """Valid and invalid requests for one operation, each checked as the module says.

    The pytest plugin's `@schema.parametrize()` fails on pytest 9 (it reads the removed
    `Function._nodeid`), so the operation's Hypothesis strategies are driven directly."""
    modes = [operation.as_strategy(mode) for mode in GenerationMode]

    @EXAMPLES
    @given(case=st.one_of(modes))
    def one(case: Any) -> None:
        response = case.call(headers=AUTH, timeout=30)
        case.validate_response(response, checks=CHECKS)
        rejection_says_why(None, response, case)

    one()


def test_the_kpi_api_answers_any_request_without_a_server_error(kpi_url: str) -> None:
    found = operations(kpi_url, leave_out="/v1/board/events")
    assert len(found) >= 14
    for operation in found:
        fuzz(operation)


def test_the_alerts_api_answers_any_request_without_a_server_error(alerts_url: str) -> None:
    found = operations(alerts_url)
    assert len(found) >= 5
    for operation in found:
        fuzz(operation)


def test_the_store_behind_the_kpi_api_is_not_empty(kpi_url: str) -> None:
    """Schemathesis proves little against an empty store: every list would be []."""
    body = httpx.get(f"{kpi_url}/v1/kpis/current", headers=AUTH, timeout=10).json()
    assert body
    assert httpx.get(f"{kpi_url}/v1/stops", headers=AUTH, timeout=10).json()


def test_a_rejection_without_a_detail_fails_the_check() -> None:
    class Bare:
        status_code = 404

        def json(self) -> Any:
            return {"detail": ""}

    with pytest.raises(AssertionError, match="without a detail"):
        rejection_says_why(None, Bare(), None)
