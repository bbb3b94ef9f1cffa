"""The alerts HTTP API: list alerts, acknowledge them, silence maintenance windows.

Reads are open; writes (ack, silences) need `Authorization: Bearer <token>` (or
`X-API-Key`) with a token from `alerts.api_token_env` / `alerts.api_token_file`. Without
a configured token every write is refused with 403: an unset secret must never mean
"anyone may write". Tokens, size and rate limits and CORS are the KPI API's guard
(linepulse/http/guard.py), so both APIs answer alike.
The engine is not thread-safe, so every endpoint is `async` and runs on the event loop
with the service's evaluation, one at a time.

The API answers like the KPI API (linepulse/http/api.py): times are RFC 3339 in UTC with
a `Z` (the engine keeps epoch milliseconds; they are converted here, at the wire), errors
are `{"detail": "..."}` (the named errors of services/alerts/errors.py, and validation
errors too), a line or machine the plant does not have is a 404, and `/docs` works
offline.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Literal, Protocol

from fastapi import FastAPI, Path, Query, Response
from prometheus_client import CollectorRegistry
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from linepulse.calendar import rfc3339
from linepulse.config import PlantConfig
from linepulse.errors import ErrorDetail
from linepulse.http.api import create_api, metrics_response
from linepulse.http.guard import GUARD_RESPONSES, install
from linepulse.http.settings import ApiAccess
from services.alerts.engine import AlertEngine
from services.alerts.errors import (
    AlertConflict,
    InvalidSilence,
    UnknownAlert,
    UnknownLine,
    UnknownMachine,
    UnknownSilence,
)
from services.alerts.forwarding import ForwardWrites
from services.alerts.model import Alert, Matcher, Silence
from services.alerts.notes import MAX_TEXT, ShiftNotes
from services.alerts.replication import ActiveInstance
from services.alerts.reports import handover

AlertStateName = Literal["pending", "firing", "acknowledged", "resolved"]
StateParam = Annotated[AlertStateName | None, Query(description="only alerts in this state")]
LineParam = Annotated[
    str | None, Query(description="only alerts of this line (`lines[].id`); 404 if unknown")
]
MachineParam = Annotated[
    str | None, Query(description="only alerts of this machine; 404 if unknown")
]
SeverityParam = Annotated[
    Literal["info", "warning", "critical"] | None, Query(description="only this severity")
]
FingerprintParam = Annotated[str, Path(description="the alert's `fingerprint`")]
# The alert times the engine keeps in epoch ms, served as RFC 3339.
_ALERT_TIMES: Final = (
    "pending_since",
    "fired_at",
    "resolved_at",
    "acked_at",
    "last_notified_at",
    "updated_at",
)
_TIME = "RFC 3339 in UTC, e.g. 2026-11-02T06:00:00.000Z"


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


# -- wire shapes ---------------------------------------------------------------------------


class AlertView(BaseModel):
    """An alert as the API shows it."""

    fingerprint: str = Field(description="stable id of the rule and its labels")
    rule: str
    labels: dict[str, str] = Field(description="alertname, severity, site, line, machine, ...")
    state: AlertStateName
    severity: str
    summary: str
    runbook: str | None
    value: float | str | None = Field(description="the value that made it pending/firing")
    pending_since: str = Field(description=f"when the condition began to hold, {_TIME}")
    fired_at: str | None = Field(description=f"when it fired; null while pending, {_TIME}")
    resolved_at: str | None = Field(description=f"when it resolved, {_TIME}")
    acked_by: str | None = Field(description="who acknowledged it")
    acked_at: str | None = Field(description=f"when it was acknowledged, {_TIME}")
    ack_comment: str | None
    escalation: int = Field(ge=0, description="0 the lead on duty, 1 the backup, 2 the manager")
    last_notified_at: str | None = Field(description=f"when it last paged someone, {_TIME}")
    updated_at: str = Field(description=f"when its state last changed, {_TIME}")


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    who: str = Field(min_length=1, max_length=128, description="who takes the alert")
    comment: str | None = Field(default=None, max_length=2000)


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: str = Field(min_length=1, description="the line (`lines[].id`)")
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="the note")
    by: str = Field(min_length=1, max_length=128, description="who writes it")
    date: dt.date | None = Field(
        default=None, description="the shift's production day; with `shift`"
    )
    shift: str | None = Field(
        default=None,
        description="the shift's name; without `date` and `shift`: the shift running now, "
        "else the last one ended",
    )


class NoteView(BaseModel):
    id: str
    line: str
    date: str
    shift: str
    text: str
    by: str
    at: str


class ShiftAlertView(BaseModel):
    summary: str
    severity: str
    fired_at: str
    acked_by: str | None
    time_to_ack_s: float | None
    resolved_at: str | None


class ShiftAlertsView(BaseModel):
    raised: int
    acknowledged: int
    resolved: int
    mean_time_to_ack_s: float | None
    max_time_to_ack_s: float | None
    list: list[ShiftAlertView]


class HandoverView(BaseModel):
    line: str
    date: str
    shift: str
    notes: list[NoteView]
    alerts: ShiftAlertsView
    alerts_complete: bool = Field(
        description="false for a shift that ended more than 24 h ago: resolved alerts are "
        "kept 24 h, so some of its alerts may be gone"
    )


class MatcherBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="label name, e.g. machine")
    value: str = Field(max_length=512, description="the label's value (a regex with `regex`)")
    regex: bool = Field(default=False, description="`value` is a regular expression")


class SilenceBody(BaseModel):
    """A maintenance window: matching alerts change state as usual but page nobody."""

    model_config = ConfigDict(extra="forbid")

    matchers: list[MatcherBody] = Field(
        min_length=1, max_length=32, description="alerts whose labels match every matcher"
    )
    starts_at: AwareDatetime | None = Field(
        default=None, description="start, RFC 3339 with an offset; default: now"
    )
    ends_at: AwareDatetime = Field(description="end, RFC 3339 with an offset, in the future")
    created_by: str = Field(min_length=1, max_length=128, description="who sets the silence")
    comment: str = Field(min_length=1, max_length=2000, description="why (e.g. maintenance)")


class SilenceView(BaseModel):
    """A silence as the API shows it: the body it was created with, times in UTC."""

    id: str
    matchers: list[MatcherBody]
    starts_at: str = Field(description=_TIME)
    ends_at: str = Field(description=_TIME)
    created_by: str
    comment: str


class Health(BaseModel):
    status: Literal["ok"]


class ReplicaView(BaseModel):
    """Which instance of a replicated alerts service answered, and which one is active."""

    role: Literal["single", "active", "standby"] = Field(
        description="single: not replicated; active: evaluates and pages; standby: follows"
    )
    instance: str | None = Field(description="this instance (host:pid); null when single")
    active_instance: str | None = Field(description="the active instance, as Kafka last said")
    active_url: str | None = Field(description="where the active instance's API answers")
    active_since: str | None = Field(description=f"when it took over, {_TIME}")


class Replica(Protocol):
    """What the API asks of a replicated service (services/alerts/failover.py)."""

    instance: str

    def writes_here(self) -> bool: ...

    @property
    def role(self) -> Literal["standby", "active"]: ...

    @property
    def active(self) -> ActiveInstance | None: ...


def _alert(alert: Alert) -> dict[str, Any]:
    wire = alert.as_dict()
    for key in _ALERT_TIMES:
        if wire[key] is not None:
            wire[key] = rfc3339(wire[key])
    return wire


def _silence(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [vars(m) for m in silence.matchers],
        "starts_at": rfc3339(silence.starts_at),
        "ends_at": rfc3339(silence.ends_at),
        "created_by": silence.created_by,
        "comment": silence.comment,
    }


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def create_app(
    engine: AlertEngine,
    registry: CollectorRegistry,
    token: str | None,
    *,
    clock: Callable[[], float] = time.time,
    on_change: Callable[[], None] | None = None,
    cors_origins: Sequence[str] = (),
    access: ApiAccess | None = None,
    replica: Replica | None = None,
) -> FastAPI:
    """`replica`: the role of an instance of a replicated service; a standby passes
    writes on to the active instance (services/alerts/forwarding.py).

    `on_change` is called after an ack or a silence change, so the service evaluates
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
    plant = engine.plant
    app = create_api(
        title="LinePulse alerts API",
        description=DESCRIPTION,
        responses=GUARD_RESPONSES,
    )
    if replica is not None:
        active_url = lambda: None if replica.active is None else replica.active.url  # noqa: E731
        app.add_middleware(ForwardWrites, writes_here=replica.writes_here, active_url=active_url)
    # The live board (another origin) reads alerts and acks them with the bearer token;
    # no cookies are involved, so CORS credentials stay off. The guard is outside the
    # forwarding: a standby refuses what the active instance would.
    install(app, access)

    notes = ShiftNotes(engine.store, engine.duty.calendar)

    def now_ms() -> int:
        return int(clock() * 1000)

    def changed() -> None:
        if on_change is not None:
            on_change()

    @app.get(
        "/v1/alerts",
        response_model=list[AlertView],
        summary="Alerts, newest first",
        description="Open alerts and those resolved in the last 24 h, newest first.",
        responses={404: _error("a line or machine the plant does not have")},
    )
    async def list_alerts(
        state: StateParam = None,
        line: LineParam = None,
        machine: MachineParam = None,
        severity: SeverityParam = None,
    ) -> list[dict[str, Any]]:
        check_scope(plant, line, machine)
        alerts = engine.alerts(state=state, line=line, severity=severity)
        if machine is not None:
            alerts = [a for a in alerts if a.machine == machine]
        return [_alert(a) for a in sorted(alerts, key=lambda a: -a.pending_since)]

    @app.post(
        "/v1/alerts/{fingerprint}/ack",
        response_model=AlertView,
        summary="Acknowledge: stops escalation",
        responses={
            404: _error("no alert with this fingerprint"),
            409: _error("the alert is pending or resolved: nothing to acknowledge"),
        },
    )
    async def ack(fingerprint: FingerprintParam, body: AckBody) -> dict[str, Any]:
        try:
            alert = engine.ack(fingerprint, body.who, body.comment, now_ms())
        except KeyError:
            raise UnknownAlert(fingerprint) from None
        except ValueError as error:
            raise AlertConflict(str(error)) from None
        changed()
        return _alert(alert)

    @app.get(
        "/v1/silences",
        response_model=list[SilenceView],
        summary="Silences that have not ended, by start",
    )
    async def list_silences() -> list[dict[str, Any]]:
        return [_silence(s) for s in engine.silences(now_ms())]

    @app.post(
        "/v1/silences",
        response_model=SilenceView,
        status_code=201,
        summary="Silence matching alerts for a while",
    )
    async def add_silence(body: SilenceBody) -> dict[str, Any]:
        check_matchers(plant, body.matchers)
        now = now_ms()
        starts = now if body.starts_at is None else _ms(body.starts_at)
        ends = _ms(body.ends_at)
        if ends <= max(starts, now):
            raise InvalidSilence("ends_at must be after starts_at and in the future")
        matchers = tuple(Matcher(m.name, m.value, m.regex) for m in body.matchers)
        try:
            silence = engine.add_silence(matchers, starts, ends, body.created_by, body.comment, now)
        except ValueError as error:
            raise InvalidSilence(str(error)) from None
        changed()
        return _silence(silence)

    @app.delete(
        "/v1/silences/{silence_id}",
        status_code=204,
        summary="End a silence now",
        responses={404: _error("no such silence")},
    )
    async def delete_silence(
        silence_id: Annotated[str, Path(description="the silence's `id`")],
    ) -> Response:
        if not engine.delete_silence(silence_id):
            raise UnknownSilence(silence_id)
        changed()
        return Response(status_code=204)

    @app.post(
        "/v1/notes",
        response_model=NoteView,
        status_code=201,
        summary="Write a shift note: it goes out with the shift's report",
        responses={
            404: _error("a line the plant does not have"),
            422: _error("a shift the line does not have that day"),
        },
    )
    async def add_note(body: NoteBody) -> dict[str, Any]:
        check_scope(plant, body.line, None)
        return notes.add(body.line, body.text, body.by, now_ms(), body.date, body.shift)

    @app.get(
        "/v1/notes",
        response_model=list[NoteView],
        summary="The notes of one shift, oldest first",
        responses={404: _error("a line the plant does not have")},
    )
    async def list_notes(
        line: Annotated[str, Query(description="the line (`lines[].id`)")],
        date_: Annotated[dt.date, Query(alias="date", description="production day")],
        shift: Annotated[str, Query(description="the shift's name")],
    ) -> list[dict[str, Any]]:
        check_scope(plant, line, None)
        return notes.of_shift(line, date_, shift)

    @app.get(
        "/v1/handover",
        response_model=HandoverView,
        summary="What a shift hands over: its notes and its alerts",
        description=(
            "The notes written for the shift, and the line's alerts that fired during it "
            "(how many were acknowledged, how fast, and resolved): what the mailed shift "
            "report carries, for the KPI API's report (docs/reports.md)."
        ),
        responses={
            404: _error("a line the plant does not have"),
            422: _error("a shift the line does not have that day"),
        },
    )
    async def handover_answer(
        line: Annotated[str, Query(description="the line (`lines[].id`)")],
        date_: Annotated[dt.date, Query(alias="date", description="production day")],
        shift: Annotated[str, Query(description="the shift's name")],
    ) -> dict[str, Any]:
        check_scope(plant, line, None)
        now = now_ms()
        span = notes.shift_of(line, now, date_, shift)
        written = notes.of_shift(line, date_, shift)
        return {
            "line": line,
            "date": date_.isoformat(),
            "shift": shift,
            **handover(engine.alerts(line=line), written, span, now),
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response(registry)

    @app.get(
        "/v1/replica",
        response_model=ReplicaView,
        summary="This instance's role, and the active instance",
    )
    async def replica_view() -> dict[str, Any]:
        if replica is None:
            return {
                "role": "single",
                "instance": None,
                "active_instance": None,
                "active_url": None,
                "active_since": None,
            }
        active = replica.active
        return {
            "role": replica.role,
            "instance": replica.instance,
            "active_instance": None if active is None else active.instance,
            "active_url": None if active is None else active.url,
            "active_since": None if active is None else rfc3339(active.since),
        }

    @app.get("/healthz", response_model=Health, summary="Liveness: 200 while the process runs")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


DESCRIPTION: Final = """\
Alerts raised by the plant's rules; acknowledgements and silences.

- Times are RFC 3339 in UTC with a `Z` in responses; request times need an offset.
- Errors are `{"detail": "..."}`, as in the KPI API: 404 for a line, machine, alert or
  silence that does not exist, 409 for an ack the alert's state forbids, 422 for a
  parameter or body that cannot be used; the message says what to do next.
- Writes (acks, silences) need a token: `Authorization: Bearer <token>` or `X-API-Key`.
- This page works offline: Swagger UI is served by the API itself.
"""


def check_scope(plant: PlantConfig, line: str | None, machine: str | None) -> None:
    """404 for a line or machine the plant does not have, or a machine not on `line`."""
    lines = {li.id: li for li in plant.lines}
    if line is not None and line not in lines:
        raise UnknownLine(line, lines)
    if machine is None:
        return
    machines = {m: li.id for m, (li, _) in plant.machines().items()}
    if machine not in machines:
        raise UnknownMachine.in_plant(machine, machines)
    if line is not None and machines[machine] != line:
        raise UnknownMachine.on_line(machine, machines[machine], line)


def check_matchers(plant: PlantConfig, matchers: Sequence[MatcherBody]) -> None:
    """A silence on a line or machine the plant does not have would silence nothing: 422."""
    known = {"line": [li.id for li in plant.lines], "machine": list(plant.machines())}
    for index, matcher in enumerate(matchers):
        ids = known.get(matcher.name)
        if ids is not None and not matcher.regex and matcher.value not in ids:
            raise InvalidSilence(
                f"matchers[{index}]: the plant has no {matcher.name} {matcher.value!r} "
                f"(its {matcher.name}s: {', '.join(ids)}); the silence would match nothing"
            )
