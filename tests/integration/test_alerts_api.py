"""The alerts HTTP API over real HTTP (uvicorn on loopback): reads open, writes behind the
bearer token, 401 without it, 404 for unknown ids, lines and machines, 422 for bad bodies,
all as `{"detail": "..."}`; times in RFC 3339 UTC, as the KPI API has them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from linepulse.config import parse_config
from linepulse.runtime import QuietServer, free_loopback_ports
from services.alerts.api import create_app
from services.alerts.engine import AlertEngine
from services.alerts.metrics import AlertMetrics
from services.alerts.store import AlertStore

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
PLANT = parse_config(
    {
        "site": "plant1",
        "shifts": [{"name": "all-day", "start": "00:00", "end": "00:00", "lead": "ann"}],
        "lines": [{"id": "L1", "machines": [{"id": "M1"}, {"id": "M2"}]}],
        "alerts": {
            "channels": [{"id": "log", "type": "console"}],
            "people": {"ann": {"name": "Ann", "channels": ["log"]}},
            "group_wait": 0,
            "rules": [{"name": "down", "signal": "state", "op": "==", "value": "down"}],
        },
    }
)


@asynccontextmanager
async def serve(engine: AlertEngine, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    registry = CollectorRegistry()
    AlertMetrics.create(registry)
    (port,) = free_loopback_ports(1)
    app = create_app(engine, registry, token)
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                try:
                    await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def engine(tmp_path: Path) -> AlertEngine:
    engine = AlertEngine(PLANT, AlertStore.in_dir(tmp_path))
    now = int(time.time() * 1000)
    engine.observe_samples([(now, "M1", "state", None, "down")], now)
    engine.evaluate(now)
    return engine


async def test_reads_are_open_and_writes_need_the_token(engine: AlertEngine) -> None:
    async with serve(engine, TOKEN) as client:
        alerts = (await client.get("/v1/alerts", params={"state": "firing"})).json()
        assert [a["labels"]["machine"] for a in alerts] == ["M1"]
        fingerprint = alerts[0]["fingerprint"]
        ack = f"/v1/alerts/{fingerprint}/ack"
        body = {"who": "ann", "comment": "on it"}
        assert (await client.post(ack, json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post(ack, json=body, headers=wrong)).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        missing = await client.post("/v1/alerts/0000/ack", json=body, headers=auth)
        assert missing.status_code == 404
        assert missing.json() == {
            "detail": "no alert with fingerprint '0000'; GET /v1/alerts lists them"
        }
        assert (await client.post(ack, json={"comment": "x"}, headers=auth)).status_code == 422
        done = await client.post(ack, json=body, headers=auth)
        assert done.status_code == 200
        assert done.json()["state"] == "acknowledged"
        assert done.json()["acked_by"] == "ann"
        acked = (await client.get("/v1/alerts", params={"state": "acknowledged"})).json()
        assert [a["fingerprint"] for a in acked] == [fingerprint]
        assert (await client.get("/v1/alerts", params={"state": "nonsense"})).status_code == 422


async def test_times_are_rfc3339_in_utc(engine: AlertEngine) -> None:
    before = datetime.now(UTC)
    async with serve(engine, TOKEN) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        (alert,) = (await client.get("/v1/alerts")).json()
        acked = await client.post(
            f"/v1/alerts/{alert['fingerprint']}/ack", json={"who": "ann"}, headers=auth
        )
    for body in (alert, acked.json()):
        for key in ("pending_since", "fired_at", "updated_at"):
            assert isinstance(body[key], str), (key, body[key])
            assert body[key].endswith("Z"), body[key]
            moment = datetime.fromisoformat(body[key])
            assert moment.utcoffset() is not None
            assert abs((moment - before).total_seconds()) < 3600
    assert acked.json()["acked_at"].endswith("Z")
    assert alert["resolved_at"] is None


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"line": "line-9"}, "unknown line 'line-9'; the plant's lines: L1"),
        ({"machine": "M9"}, "unknown machine 'M9'; the plant's machines: M1, M2"),
        ({"line": "L1", "machine": "M9"}, "unknown machine 'M9'"),
    ],
)
async def test_unknown_lines_and_machines_are_404(
    engine: AlertEngine, query: dict[str, str], detail: str
) -> None:
    async with serve(engine, TOKEN) as client:
        response = await client.get("/v1/alerts", params=query)
        assert response.status_code == 404
        assert set(response.json()) == {"detail"}
        assert detail in response.json()["detail"]
        assert len((await client.get("/v1/alerts", params={"line": "L1"})).json()) == 1
        assert len((await client.get("/v1/alerts", params={"machine": "M1"})).json()) == 1
        assert (await client.get("/v1/alerts", params={"machine": "M2"})).json() == []


async def test_errors_are_one_sentence_as_in_the_kpi_api(engine: AlertEngine) -> None:
    """Validation errors too: `{"detail": "..."}`, never pydantic's list."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    silence = {
        "matchers": [{"name": "machine", "value": "M2"}],
        "ends_at": "2099-01-01T00:00:00",
        "created_by": "ann",
        "comment": "maintenance",
    }
    async with serve(engine, TOKEN) as client:
        fingerprint = (await client.get("/v1/alerts")).json()[0]["fingerprint"]
        cases = [
            (
                await client.post(f"/v1/alerts/{fingerprint}/ack", json={}, headers=auth),
                "body field 'who' is required",
            ),
            (
                await client.post("/v1/silences", json=silence, headers=auth),
                "body field 'ends_at': Input should have timezone info",
            ),
            (
                await client.post(
                    "/v1/silences",
                    json={**silence, "ends_at": "2099-01-01T00:00:00Z", "matchers": [{}]},
                    headers=auth,
                ),
                "body field 'matchers[0].name' is required",
            ),
            (
                await client.post(
                    "/v1/silences",
                    json={
                        **silence,
                        "ends_at": "2099-01-01T00:00:00Z",
                        "matchers": [{"name": "machine", "value": "M9"}],
                    },
                    headers=auth,
                ),
                "matchers[0]: the plant has no machine 'M9'",
            ),
            (await client.get("/v1/alerts", params={"state": "x"}), "query parameter 'state'"),
        ]
    for response, detail in cases:
        assert response.status_code == 422, response.text
        body = response.json()
        assert set(body) == {"detail"}
        assert isinstance(body["detail"], str)
        assert detail in body["detail"], body


async def test_silences_are_created_listed_and_deleted(engine: AlertEngine) -> None:
    async with serve(engine, TOKEN) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {
            "matchers": [{"name": "machine", "value": "M2"}],
            "ends_at": "2099-01-01T00:00:00Z",
            "created_by": "ann",
            "comment": "maintenance",
        }
        assert (await client.post("/v1/silences", json=body)).status_code == 401
        created = await client.post("/v1/silences", json=body, headers=auth)
        assert created.status_code == 201, created.text
        silence = created.json()["id"]
        assert created.json()["ends_at"] == "2099-01-01T00:00:00.000Z"
        assert set(created.json()) == {
            "id",
            "matchers",
            "starts_at",
            "ends_at",
            "created_by",
            "comment",
        }
        assert [s["id"] for s in (await client.get("/v1/silences")).json()] == [silence]
        past = {**body, "ends_at": "2000-01-01T00:00:00Z"}
        assert (await client.post("/v1/silences", json=past, headers=auth)).status_code == 422
        naive = {**body, "ends_at": "2099-01-01T00:00:00"}
        assert (await client.post("/v1/silences", json=naive, headers=auth)).status_code == 422
        assert (await client.delete(f"/v1/silences/{silence}")).status_code == 401
        assert (await client.delete(f"/v1/silences/{silence}", headers=auth)).status_code == 204
        gone = await client.delete(f"/v1/silences/{silence}", headers=auth)
        assert gone.status_code == 404
        assert gone.json() == {"detail": f"no silence {silence!r}; GET /v1/silences lists them"}
        assert (await client.get("/v1/silences")).json() == []


async def test_shift_notes_are_written_with_the_token_and_read_per_shift(
    engine: AlertEngine,
) -> None:
    """A note without a shift named goes to the one running (the all-day shift today)."""
    today = datetime.now(UTC).date().isoformat()
    async with serve(engine, TOKEN) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"line": "L1", "text": "nozzle 3 drips; spare ordered", "by": "ann"}
        assert (await client.post("/v1/notes", json=body)).status_code == 401
        written = await client.post("/v1/notes", json=body, headers=auth)
        assert written.status_code == 201, written.text
        note = written.json()
        assert (note["line"], note["date"], note["shift"], note["by"]) == (
            "L1",
            today,
            "all-day",
            "ann",
        )
        query = {"line": "L1", "date": today, "shift": "all-day"}
        assert (await client.get("/v1/notes", params=query)).json() == [note]
        elsewhere = {**body, "line": "L9"}
        unknown = await client.post("/v1/notes", json=elsewhere, headers=auth)
        assert (unknown.status_code, unknown.json()["detail"]) == (
            404,
            "unknown line 'L9'; the plant's lines: L1",
        )
        named = {**body, "date": today, "shift": "night"}
        wrong = await client.post("/v1/notes", json=named, headers=auth)
        assert wrong.status_code == 422
        assert "L1 has no shift 'night'" in wrong.json()["detail"]
        empty = await client.post("/v1/notes", json={**body, "text": ""}, headers=auth)
        assert empty.status_code == 422


async def test_without_a_configured_token_every_write_is_refused(engine: AlertEngine) -> None:
    async with serve(engine, None) as client:
        fingerprint = (await client.get("/v1/alerts")).json()[0]["fingerprint"]
        response = await client.post(
            f"/v1/alerts/{fingerprint}/ack",
            json={"who": "ann"},
            headers={"Authorization": "Bearer anything"},
        )
        assert response.status_code == 403  # no token configured: writes are disabled
        assert "no API token" in response.json()["detail"]
        metrics = await client.get("/metrics")
        assert "linepulse_alerts_outbox_depth" in metrics.text


async def test_the_live_board_origin_may_call_the_api_from_a_browser(
    engine: AlertEngine,
) -> None:
    registry = CollectorRegistry()
    app = create_app(engine, registry, TOKEN, cors_origins=["http://board.example:8080"])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://alerts") as client:
        preflight = await client.options(
            "/v1/alerts/x/ack",
            headers={
                "Origin": "http://board.example:8080",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "http://board.example:8080"
        other = await client.get("/v1/alerts", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
