"""The alerts HTTP API: list alerts, acknowledge them, silence maintenance windows.

Reads are open; writes (ack, silences) need `Authorization: Bearer <token>` (or
`X-API-Key`) with a token from `alerts.api_token_env` / `alerts.api_token_file`. Without
a configured token every write is refused with 403: an unset secret must never mean
"anyone may write". Tokens, size and rate limits and CORS are the KPI API's guard
(linepulse/http_security.py), so both APIs answer alike.
The engine is not thread-safe, so every endpoint is `async` and runs on the event loop
with the service's evaluation, one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field, SecretStr

from linepulse.http_security import GUARD_RESPONSES, ApiAccess, install
from services.alerts.engine import AlertEngine
from services.alerts.model import Matcher, Silence

StateParam = Annotated[
    Literal["pending", "firing", "acknowledged", "resolved"] | None,
    Query(description="only alerts in this state"),
]
LineParam = Annotated[str | None, Query(description="only alerts of this line")]
SeverityParam = Annotated[
    Literal["info", "warning", "critical"] | None, Query(description="only this severity")
]


class Invalid(BaseModel):
    """A 422: FastAPI's list of problems for a malformed request, or one sentence for a
    well-formed one the engine cannot take (a silence that ends before it starts)."""

    detail: str | list[dict[str, Any]]


INVALID_RESPONSE: dict[str, Any] = {"model": Invalid, "description": "the request cannot be used"}


class AckBody(BaseModel):
    who: str = Field(min_length=1, max_length=128, description="who takes the alert")
    comment: str | None = Field(default=None, max_length=2000)


class MatcherBody(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="label name, e.g. machine")
    value: str = Field(max_length=512)
    regex: bool = False


class SilenceBody(BaseModel):
    matchers: list[MatcherBody] = Field(min_length=1, max_length=32)
    starts_at: datetime | None = Field(default=None, description="default: now")
    ends_at: datetime
    created_by: str = Field(min_length=1, max_length=128)
    comment: str = Field(min_length=1, max_length=2000, description="why (e.g. maintenance)")


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise HTTPException(422, "times need a UTC offset (e.g. 2026-11-02T06:00:00Z)")
    return int(moment.timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _silence(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [vars(m) for m in silence.matchers],
        "starts_at": _iso(silence.starts_at),
        "ends_at": _iso(silence.ends_at),
        "created_by": silence.created_by,
        "comment": silence.comment,
    }


def create_app(
    engine: AlertEngine,
    registry: CollectorRegistry,
    token: str | None,
    *,
    clock: Callable[[], float] = time.time,
    on_change: Callable[[], None] | None = None,
    cors_origins: Sequence[str] = (),
    access: ApiAccess | None = None,
) -> FastAPI:
    """`on_change` is called after an ack or a silence change, so the service evaluates
    (and notifies) at once rather than at its next tick.

    `access` (from `plant.alerts.api_security().resolve("alerts")`) sets the tokens,
    limits and CORS; without it, `token` (None: writes refused) and `cors_origins` with
    the default limits."""
    if access is None:
        access = ApiAccess(
            tokens=() if token is None else (SecretStr(token),),
            cors_origins=tuple(cors_origins),
            configure_hint=(
                "set the environment variable named by alerts.api_token_env "
                "(LINEPULSE_ALERTS_TOKEN by default) or alerts.api_token_file"
            ),
        )
    app = FastAPI(
        title="LinePulse alerts",
        version="0.1.0",
        description="Alerts raised by the plant's rules; acknowledgements and silences.",
        responses={**GUARD_RESPONSES, 422: INVALID_RESPONSE},
    )
    # The live board (another origin) reads alerts and acks them with the bearer token;
    # no cookies are involved, so CORS credentials stay off.
    install(app, access)

    def now_ms() -> int:
        return int(clock() * 1000)

    def changed() -> None:
        if on_change is not None:
            on_change()

    @app.get("/v1/alerts", summary="Alerts, newest first")
    async def list_alerts(
        state: StateParam = None, line: LineParam = None, severity: SeverityParam = None
    ) -> list[dict[str, Any]]:
        alerts = engine.alerts(state=state, line=line, severity=severity)
        return [a.as_dict() for a in sorted(alerts, key=lambda a: -a.pending_since)]

    @app.post(
        "/v1/alerts/{fingerprint}/ack",
        summary="Acknowledge: stops escalation",
    )
    async def ack(fingerprint: str, body: AckBody) -> dict[str, Any]:
        try:
            alert = engine.ack(fingerprint, body.who, body.comment, now_ms())
        except KeyError:
            raise HTTPException(404, f"no alert with fingerprint {fingerprint!r}") from None
        except ValueError as error:
            raise HTTPException(409, str(error)) from None
        changed()
        return alert.as_dict()

    @app.get("/v1/silences", summary="Silences that have not ended")
    async def list_silences() -> list[dict[str, Any]]:
        return [_silence(s) for s in engine.silences(now_ms())]

    @app.post(
        "/v1/silences",
        status_code=201,
        summary="Silence matching alerts for a while",
    )
    async def add_silence(body: SilenceBody) -> dict[str, Any]:
        now = now_ms()
        starts = now if body.starts_at is None else _ms(body.starts_at)
        ends = _ms(body.ends_at)
        if ends <= max(starts, now):
            raise HTTPException(422, "ends_at must be after starts_at and in the future")
        matchers = tuple(Matcher(m.name, m.value, m.regex) for m in body.matchers)
        try:
            silence = engine.add_silence(matchers, starts, ends, body.created_by, body.comment, now)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        changed()
        return _silence(silence)

    @app.delete(
        "/v1/silences/{silence_id}",
        status_code=204,
        summary="End a silence now",
    )
    async def delete_silence(silence_id: str) -> Response:
        if not engine.delete_silence(silence_id):
            raise HTTPException(404, f"no silence {silence_id!r}")
        changed()
        return Response(status_code=204)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
