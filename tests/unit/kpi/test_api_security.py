"""Tokens on the KPI API and the alerts API (the same guard, linepulse/http/guard.py):
reads open by default, writes always behind a token, 403 when none is configured, 401
with WWW-Authenticate for a missing or wrong one, both header forms, several tokens, the
exempt paths, a bucket per token, and no token in any log record. The apps run whole
(TestClient with the lifespan); the HTTP-level behaviours (TLS, streamed bodies, CORS
preflight, 429 over the wire) are in tests/integration/test_api_tls.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig
from linepulse.http.settings import ApiAccess, ApiSecurity, HttpLimits
from services.alerts.api import create_app as create_alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.store import AlertStore
from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.unit.kpi.test_stops import M1_DAY, ms, plant_config

BUS = "in-process"
BOARD = "tok-board-7f3a9c"
GRAFANA = "tok-grafana-51be02"
WRONG = "tok-wrong-0d0d0d"
BODY = {"reason": "jam", "by": "ann"}


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def store(tmp_path: Path, plant: PlantConfig) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as opened:
        opened.status.upsert(M1_DAY)
        yield opened


def kpi_client(plant: PlantConfig, store: KpiStore, access: ApiAccess | None) -> TestClient:
    broker = InProcessBroker(auto_create_partitions=None)
    asyncio.run(ensure_topics(BUS, plant.kafka, InProcessClients(broker)))
    app = create_app(
        plant,
        store,
        CollectorRegistry(),
        bootstrap=BUS,
        clients=InProcessClients(broker),
        access=access,
    )
    return TestClient(app)


def tokens(*values: str, **kw: Any) -> ApiAccess:
    return ApiAccess(tokens=tuple(SecretStr(v) for v in values), **kw)


def post_reason(client: TestClient, headers: dict[str, str] | None = None) -> Any:
    return client.post(f"/v1/stops/m1@{ms(10)}/reason", json=BODY, headers=headers or {})


def test_reads_are_open_and_writes_need_a_valid_token(plant: PlantConfig, store: KpiStore) -> None:
    with kpi_client(plant, store, tokens(BOARD, GRAFANA)) as client:
        assert client.get("/v1/stops?machine=m1").status_code == 200
        assert client.get("/v1/machines").status_code == 200
        missing = post_reason(client)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="linepulse"'
        assert "Authorization: Bearer <token>" in missing.json()["detail"]
        wrong = post_reason(client, {"Authorization": f"Bearer {WRONG}"})
        assert wrong.status_code == 401
        assert "not valid" in wrong.json()["detail"]
        basic = post_reason(client, {"Authorization": "Basic YW5uOnB3"})
        assert basic.status_code == 401
        assert client.get(f"/v1/stops/m1@{ms(10)}").json()["corrections"] == 0  # refused: none
        done = post_reason(client, {"Authorization": f"Bearer {BOARD}"})
        assert done.status_code == 202, done.text
        again = post_reason(client, {"X-API-Key": GRAFANA})  # the other client's token
        assert again.status_code == 202, again.text
        assert again.json()["corrections"] == 2
        # The guard's answers are in the OpenAPI document, for clients and schema tests.
        documented = client.get("/openapi.json").json()["paths"]
        responses = documented["/v1/stops/{stop_id}/reason"]["post"]["responses"]
        assert {"401", "403", "413", "429"} <= set(responses)


def test_without_a_configured_token_writes_are_refused_with_how_to_configure_one(
    plant: PlantConfig, store: KpiStore
) -> None:
    access = ApiSecurity().resolve("api", {})
    with kpi_client(plant, store, access) as client:
        refused = post_reason(client, {"Authorization": f"Bearer {WRONG}"})
        assert refused.status_code == 403
        detail = refused.json()["detail"]
        assert "no API token is configured" in detail
        assert "LINEPULSE_API_TOKEN" in detail
        assert "api.token_file" in detail
        assert client.get("/v1/stops").status_code == 200
    with kpi_client(plant, store, None) as client:  # create_app's default: the same
        assert post_reason(client).status_code == 403


def test_with_auth_reads_every_read_but_the_exempt_paths_needs_a_token(
    plant: PlantConfig, store: KpiStore
) -> None:
    with kpi_client(plant, store, tokens(BOARD, auth_reads=True)) as client:
        for path in ("/v1/machines", "/v1/stops", "/v1/kpis/current", "/", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "reads need a token" in response.json()["detail"]
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/machines", headers={"X-API-Key": BOARD}).status_code == 200
        assert client.get("/v1/machines", headers={"X-API-Key": WRONG}).status_code == 401


def test_each_token_has_its_own_bucket_and_guessing_costs_the_address(
    plant: PlantConfig, store: KpiStore
) -> None:
    limits = HttpLimits(write_rate_per_s=0.001, write_burst=1, read_rate_per_s=0.001, read_burst=3)
    with kpi_client(plant, store, tokens(BOARD, GRAFANA, limits=limits)) as client:
        assert post_reason(client, {"X-API-Key": BOARD}).status_code == 202
        limited = post_reason(client, {"X-API-Key": BOARD})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 1000
        assert "limits.write_rate_per_s" in limited.json()["detail"]
        assert post_reason(client, {"X-API-Key": GRAFANA}).status_code == 202
        # Without a valid token the client is its address: one wrong guess, then 429.
        assert post_reason(client, {"X-API-Key": WRONG}).status_code == 401
        assert post_reason(client, {"X-API-Key": WRONG}).status_code == 429
        # Reads have buckets of their own, and the exempt paths none.
        assert [client.get("/v1/machines").status_code for _ in range(4)] == [200] * 3 + [429]
        assert all(client.get("/healthz").status_code == 200 for _ in range(10))


def test_no_token_appears_in_any_log_record(
    plant: PlantConfig, store: KpiStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    limits = HttpLimits(write_rate_per_s=0.001, write_burst=3)
    with kpi_client(plant, store, tokens(BOARD, GRAFANA, limits=limits)) as client:
        post_reason(client, {"Authorization": f"Bearer {WRONG}"})
        post_reason(client, {"X-API-Key": WRONG})
        post_reason(client, {"Authorization": f"Bearer {BOARD}"})
        post_reason(client, {"X-API-Key": GRAFANA})
        for _ in range(4):
            post_reason(client, {"X-API-Key": BOARD})  # ends rate-limited
    messages = [f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]
    assert any("401" in m for m in messages)  # failures were logged, as records we can see
    assert any("429" in m and "token#1" in m for m in messages)  # named by position
    for secret in (BOARD, GRAFANA, WRONG):
        assert not [m for m in messages if secret in m], secret


async def test_the_alerts_api_answers_alike(tmp_path: Path, plant: PlantConfig) -> None:
    """In the test's own loop and thread, as the alerts engine requires (httpx's ASGI
    transport): the engine is not thread-safe, so no TestClient here."""
    engine = AlertEngine(plant, AlertStore.in_dir(tmp_path))
    silence = {
        "matchers": [{"name": "machine", "value": "m1"}],
        "ends_at": "2099-01-01T00:00:00Z",
        "created_by": "ann",
        "comment": "maintenance",
    }

    def client(app: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://alerts")

    async with client(create_alerts_app(engine, CollectorRegistry(), None)) as http:
        refused = await http.post("/v1/silences", json=silence)
        assert refused.status_code == 403
        assert "alerts.api_token_env" in refused.json()["detail"]
    access = tokens(BOARD, limits=HttpLimits(max_body_bytes=300))
    async with client(create_alerts_app(engine, CollectorRegistry(), None, access=access)) as http:
        assert (await http.get("/v1/alerts")).status_code == 200
        assert (await http.post("/v1/silences", json=silence)).status_code == 401
        key = {"X-API-Key": BOARD}
        big = {**silence, "comment": "x" * 300}
        assert (await http.post("/v1/silences", json=big, headers=key)).status_code == 413
        made = await http.post("/v1/silences", json=silence, headers=key)
        assert made.status_code == 201, made.text
