"""A standby's API passes writes on to the active instance (a real HTTP server standing in
for it) and answers reads itself; with nobody active, or a request already passed on
once, it answers 503 with Retry-After instead."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from linepulse.runtime import QuietServer, free_loopback_ports
from services.alerts.forwarding import ForwardWrites


@contextlib.asynccontextmanager
async def active_instance(seen: list[dict[str, Any]]) -> AsyncIterator[str]:
    """The active instance's API: records what reached it, answers 409 with a detail."""
    app = FastAPI()

    @app.post("/v1/alerts/{fingerprint}/ack")
    async def ack(fingerprint: str, request: Request) -> JSONResponse:
        seen.append(
            {
                "path": request.url.path,
                "query": request.url.query,
                "authorization": request.headers.get("authorization"),
                "forwarded": request.headers.get("x-linepulse-forwarded"),
                "body": await request.json(),
            }
        )
        return JSONResponse({"detail": "alert is pending"}, status_code=409)

    (port,) = free_loopback_ports(1)
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


def standby_app(active_url: str | None) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/alerts")
    async def alerts() -> list[str]:
        return ["served here"]

    @app.post("/v1/alerts/{fingerprint}/ack")
    async def ack(fingerprint: str) -> dict[str, str]:
        raise AssertionError("a standby must not apply a write")

    app.add_middleware(ForwardWrites, writes_here=lambda: False, active_url=lambda: active_url)
    return app


async def test_a_write_goes_to_the_active_instance_and_its_answer_comes_back() -> None:
    seen: list[dict[str, Any]] = []
    async with active_instance(seen) as url:
        transport = httpx.ASGITransport(app=standby_app(url))
        async with httpx.AsyncClient(transport=transport, base_url="http://standby") as client:
            answer = await client.post(
                "/v1/alerts/fp-1/ack?x=1",
                json={"who": "lead"},
                headers={"Authorization": "Bearer t0ken", "Cookie": "not-passed"},
            )
            assert answer.status_code == 409
            assert answer.json() == {"detail": "alert is pending"}
            read = await client.get("/v1/alerts")
            assert read.json() == ["served here"]
    assert seen == [
        {
            "path": "/v1/alerts/fp-1/ack",
            "query": "x=1",
            "authorization": "Bearer t0ken",
            "forwarded": "1",
            "body": {"who": "lead"},
        }
    ]


async def test_no_active_instance_or_a_second_hop_is_a_503_to_retry() -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=standby_app(None)), base_url="http://standby"
    ) as client:
        answer = await client.post("/v1/alerts/fp-1/ack", json={"who": "lead"})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert "takeover" in answer.json()["detail"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=standby_app("http://127.0.0.1:9")),
        base_url="http://standby",
    ) as client:
        hop = await client.post(
            "/v1/alerts/fp-1/ack", json={"who": "lead"}, headers={"X-LinePulse-Forwarded": "1"}
        )
        assert hop.status_code == 503
        # Nothing listens on the discard port: the active instance does not answer.
        gone = await client.post("/v1/alerts/fp-1/ack", json={"who": "lead"})
        assert gone.status_code == 503
        assert "did not answer" in gone.json()["detail"]
