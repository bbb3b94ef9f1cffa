"""Reason coding over HTTP: stops, reason trees, corrections and their audit trail.

`POST /v1/stops/{id}/reason` records the correction (services/kpi/stops.py), sends its
audit entry to the compacted `stops.reasons` topic (key `{stop id}#{n}`), from which every
API replica rebuilds the codes and the audit, and sends it to the KPI core as a telemetry
event on the machine's home partition:

    {"ts": <the stop's start, epoch ms>, "machine", "line", "site", "signal": "reason",
     "reason": <code>, "value": <n>, "seq": <n>, "source": "operator:<who>"}

where n is the stop's correction number (1, 2, ...). The core reads the code from
`reason` and the number from `value`: telemetry events as the core sees them
(linepulse.events.EVENT_SCHEMA) keep no `seq`. It re-codes the machine's state sample at
`ts` (the highest number wins, whatever the arrival order) and
restates the windows it touches, with a new revision where they were final. A stop that
started before the core's restatement horizon (`kpi.restate_horizon_s` +
`kpi.lateness_s` behind the latest event time the API knows) can no longer be restated:
409. Without a producer (an API built without Kafka) corrections answer 503.

Before it numbers a correction, the API has read the `stops.reasons` topic to its end
(`reasons_read`, the materializer's), so that a correction made on another replica is
counted. Two corrections of one stop made on two replicas within the same few
milliseconds can still take the same number; the later record on the topic is the one
the audit keeps. If either send fails, the correction is withdrawn (a tombstone on the
topic) and the answer is 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from linepulse.bus import AIOKAFKA, KafkaClients, Producer
from linepulse.bus.partitions import home_partition
from linepulse.config import DowntimeState, PlantConfig
from linepulse.events import parse_ts
from linepulse.production import UNASSIGNED, ReasonCategory
from services.kpi.errors import BadRequest, Conflict, NotFound, Unavailable
from services.kpi.status_store import StatusStore
from services.kpi.stops import StopLog

log = logging.getLogger(__name__)

SEND_TIMEOUT_S: Final = 15.0
MAX_LIMIT: Final = 1000


class CorrectionProducer:
    """Sends correction events onto the telemetry topic, keyed and partitioned as the
    ingesters send that machine's telemetry. Started on first use (a broker that is
    down at start-up only fails the corrections made while it is down)."""

    def __init__(
        self, plant: PlantConfig, bootstrap: str, clients: KafkaClients = AIOKAFKA
    ) -> None:
        self.plant = plant
        self.bootstrap = bootstrap
        self.clients = clients
        self.topic = plant.kafka.telemetry.name
        self.reasons_topic = plant.kafka.reasons.name
        self._lines = {m: line.id for m, (line, _) in plant.machines().items()}
        self._producer: Producer | None = None
        self._partitions = 0
        self._lock = asyncio.Lock()

    async def send(self, event: dict[str, Any]) -> None:
        """Send one event and wait for the broker's acknowledgement."""
        producer = await self._started()
        partition = home_partition(self._lines[event["machine"]], self._partitions)
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await producer.send_and_wait(
                self.topic,
                value=orjson.dumps(event),
                key=event["machine"].encode(),
                partition=partition,
            )

    async def send_audit(self, stop: str, seq: int, entry: dict[str, Any] | None) -> None:
        """The audit record of correction `seq` of `stop` (None: withdraw it), acknowledged."""
        producer = await self._started()
        async with asyncio.timeout(SEND_TIMEOUT_S):
            await producer.send_and_wait(
                self.reasons_topic,
                value=None if entry is None else orjson.dumps(entry),
                key=f"{stop}#{seq}".encode(),
                partition=0,
            )

    async def _started(self) -> Producer:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            producer = self.clients.producer(
                bootstrap_servers=self.bootstrap,
                enable_idempotence=True,
                client_id="linepulse-api",
            )
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await producer.start()
                    self._partitions = len(await producer.partitions_for(self.topic))
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            return producer

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


# -- shapes ------------------------------------------------------------------------------


class Stop(BaseModel):
    id: str = Field(description="`{machine}@{start in epoch ms}`")
    machine: str
    line: str
    start: str = Field(description="when the downtime state began, RFC 3339 UTC")
    end: str | None = Field(description="when the machine's next state began; null while open")
    duration_s: float | None = Field(description="end - start; null while open")
    state: DowntimeState = Field(description="`down`, `idle` or `changeover`")
    reason: str = Field(description="the current reason code (`unassigned` without one)")
    original_reason: str = Field(description="the code the machine sent (`unassigned` if none)")
    planned: bool = Field(description="the reason is a planned code of the machine's tree")
    corrections: int = Field(ge=0, description="how many times an operator coded it")
    corrected_by: str | None
    corrected_at: str | None = Field(description="when the latest correction was made")


class AuditEntry(BaseModel):
    stop_id: str
    machine: str
    stop_start: str
    seq: int = Field(ge=1, description="the stop's correction number, 1, 2, ...")
    old_reason: str
    new_reason: str
    by: str
    at: str = Field(description="when the correction was made (wall clock), RFC 3339 UTC")
    note: str | None


class StopDetail(Stop):
    audit: list[AuditEntry] = Field(description="the stop's corrections, oldest first")


class Corrected(StopDetail):
    correction: AuditEntry = Field(description="the correction just made")


class Category(BaseModel):
    name: str
    planned: bool = Field(description="its codes make a stop planned time, not downtime")
    codes: list[str]


class ReasonTree(BaseModel):
    machine: str | None = Field(description="null: the site's tree")
    categories: list[Category] = Field(description="empty: no tree, any code is accepted")


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=64, description="a code of the machine's tree")
    by: str = Field(min_length=1, max_length=64, description="who codes the stop")
    note: str | None = Field(default=None, max_length=500)


# -- routes ------------------------------------------------------------------------------


def stops_router(
    plant: PlantConfig,
    stop_log: StopLog,
    status: StatusStore,
    producer: CorrectionProducer | None,
    *,
    check_scope: Callable[[str | None, str | None], None],
    parse_time: Callable[[str, str], datetime],
    reasons_read: Callable[[], Awaitable[None]] | None = None,
) -> APIRouter:
    """The stop and reason endpoints; `check_scope` and `parse_time` are the API's own
    (404 for an unknown line or machine, times as RFC 3339 or epoch ms). `reasons_read`
    returns once the `stops.reasons` topic has been read to its end (None: nothing to
    wait for, an API without a materializer)."""
    router = APIRouter(tags=["stops"])
    machines = plant.machines()
    horizon = timedelta(seconds=plant.kpi.restate_horizon_s + plant.kpi.lateness_s)

    def tree(machine: str | None) -> tuple[ReasonCategory, ...]:
        return plant.reasons if machine is None else plant.reasons_for(machines[machine][1])

    @router.get(
        "/v1/stops",
        response_model=list[Stop],
        summary="Stops, newest first",
        description=(
            "Downtime (`down`, `idle`, `changeover`) per machine, from the machine states, "
            "newest first; `since`/`until` bound the stop's start, [since, until). "
            "`unassigned=true`: only stops without a reason; `false`: only coded ones. "
            "`state` (repeatable): only stops in these states, e.g. `state=down&state=idle` "
            "for the stops an operator codes."
        ),
    )
    def list_stops(
        line: Annotated[str | None, Query(description="a line id")] = None,
        machine: Annotated[str | None, Query(description="a machine id")] = None,
        since: Annotated[str | None, Query(description="start, inclusive")] = None,
        until: Annotated[str | None, Query(description="end, exclusive")] = None,
        unassigned: Annotated[bool | None, Query(description="only (un)coded stops")] = None,
        state: Annotated[
            list[DowntimeState] | None, Query(description="only stops in these states")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> Response:
        check_scope(line, machine)
        start = None if since is None else parse_time(since, "since")
        end = None if until is None else parse_time(until, "until")
        stops = stop_log.query(
            line=line,
            machine=machine,
            since=start,
            until=end,
            unassigned=unassigned,
            states=state,
            limit=limit,
        )
        return _json(stops)

    @router.get(
        "/v1/stops/{stop_id}",
        response_model=StopDetail,
        summary="One stop with its reason corrections",
    )
    def get_stop(stop_id: Annotated[str, Path(description="the stop's id")]) -> Response:
        stop = stop_log.get(stop_id)
        if stop is None:
            raise NotFound(_unknown(stop_id))
        return _json(stop)

    @router.get(
        "/v1/reasons",
        response_model=ReasonTree,
        summary="A machine's reason tree",
        description="The machine's reason tree from the plant config (the site's without "
        "`machine`): categories, whether their codes are planned, and the codes.",
    )
    def reasons(machine: Annotated[str | None, Query(description="a machine id")] = None) -> Any:
        check_scope(None, machine)
        return ReasonTree(
            machine=machine,
            categories=[
                Category(name=c.name, planned=c.planned, codes=list(c.codes)) for c in tree(machine)
            ],
        )

    @router.get(
        "/v1/reasons/audit",
        response_model=list[AuditEntry],
        summary="Reason corrections, newest first",
    )
    def audit(
        machine: Annotated[str | None, Query(description="a machine id")] = None,
        since: Annotated[str | None, Query(description="corrections made since")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> Response:
        check_scope(None, machine)
        start = None if since is None else parse_time(since, "since")
        return _json(stop_log.audit(machine, start, limit))

    @router.post(
        "/v1/stops/{stop_id}/reason",
        response_model=Corrected,
        status_code=202,
        summary="Code or correct a stop's reason",
        description=(
            "Records the correction (audit trail) and sends it to the KPI core, which "
            "restates the windows the stop touches (a new revision where final). 202: "
            "the stop with its audit and the new entry; the KPI figures follow within "
            "seconds. 404: unknown stop; 422: a code not in the machine's reason tree or "
            "`unassigned`; 409: the stop is older than the restatement horizon; 503: no "
            "Kafka producer."
        ),
        responses={
            404: {"description": "unknown stop"},
            409: {"description": "too old to restate"},
            422: {"description": "not a code of the machine's tree"},
            503: {"description": "corrections cannot be sent"},
        },
    )
    async def correct(
        stop_id: Annotated[str, Path(description="the stop's id")], body: ReasonBody
    ) -> Response:
        stop = await asyncio.to_thread(stop_log.get, stop_id)
        if stop is None:
            raise NotFound(_unknown(stop_id))
        machine = stop["machine"]
        _check_code(body.reason, machine, tree(machine) if machine in machines else ())
        start = datetime.fromisoformat(stop["start"])
        latest = await asyncio.to_thread(status.latest_event_time)
        if latest is not None and start < latest - horizon:
            raise Conflict(
                f"stop {stop_id} started at {stop['start']}, more than "
                f"{horizon.total_seconds():g} s before the latest event "
                f"({latest:%Y-%m-%dT%H:%M:%SZ}): too old to restate; the KPI core restates "
                "windows back to kpi.restate_horizon_s + kpi.lateness_s"
            )
        if producer is None:
            raise Unavailable(
                "reason corrections are sent to the KPI core through Kafka, and this API "
                "runs without a producer (create_app(..., bootstrap=...)); nothing was recorded"
            )
        if reasons_read is not None:
            try:
                await reasons_read()
            except TimeoutError:
                raise Unavailable(
                    "the corrections made on other API replicas could not be read from "
                    f"Kafka ({plant.kafka.reasons.name}); nothing was recorded, retry"
                ) from None
        at = datetime.now(UTC)
        done = await asyncio.to_thread(
            stop_log.correct, stop_id, body.reason, body.by, body.note, at
        )
        if done is None:
            raise NotFound(_unknown(stop_id))
        updated, entry = done
        seq = entry["seq"]
        event = correction_event(plant.site, stop, body.reason, body.by, seq)
        sent = False
        try:
            await producer.send_audit(stop_id, seq, entry)
            sent = True
            await producer.send(event)
        except Exception as error:
            log.warning("correction %s #%d not sent: %r", stop_id, seq, error)
            await asyncio.to_thread(stop_log.withdraw, stop_id, seq)
            if sent:
                await _withdraw_audit(producer, stop_id, seq)
            raise Unavailable(
                f"the correction could not be sent to Kafka ({type(error).__name__}: {error}); "
                "nothing was recorded, retry"
            ) from None
        log.info(
            "stop %s coded %r by %s (was %r, correction %d)",
            stop_id,
            body.reason,
            body.by,
            entry["old_reason"],
            entry["seq"],
        )
        return _json({**updated, "correction": entry}, status_code=202)

    return router


async def _withdraw_audit(producer: CorrectionProducer, stop: str, seq: int) -> None:
    """Best effort: a tombstone for an audit record whose event did not reach the core."""
    try:
        await producer.send_audit(stop, seq, None)
    except Exception as error:
        log.error(
            "correction %s #%d: its audit record is on the reasons topic but its event did "
            "not reach the KPI core, and withdrawing it failed too (%r); other replicas "
            "show it until it is corrected again",
            stop,
            seq,
            error,
        )


def correction_event(
    site: str, stop: dict[str, Any], code: str, by: str, seq: int
) -> dict[str, Any]:
    """The telemetry event that re-codes the stop's state sample in the KPI core.

    The code travels in `reason` and the correction number in `value` (the core ranks
    corrections of one sample by it: telemetry events keep no `seq` column) and in `seq`.
    """
    return {
        "ts": parse_ts(stop["start"]),
        "machine": stop["machine"],
        "line": stop["line"],
        "site": site,
        "signal": "reason",
        "value": seq,
        "reason": code,
        "seq": seq,
        "source": f"operator:{by}",
    }


def _check_code(code: str, machine: str, categories: tuple[ReasonCategory, ...]) -> None:
    if code == UNASSIGNED:
        raise BadRequest(f"{UNASSIGNED!r} is what a stop without a reason is; choose a code")
    codes = [c for category in categories for c in category.codes]
    if codes and code not in codes:
        raise BadRequest(
            f"reason {code!r} is not in the reason tree of {machine!r}; use one of "
            f"{', '.join(codes)} (GET /v1/reasons?machine={machine})"
        )
    if not codes:  # free text: still a code the config could hold
        try:
            ReasonCategory(name="free", codes=(code,))
        except ValidationError as error:
            problem = error.errors()[0].get("msg", "invalid").removeprefix("Value error, ")
            raise BadRequest(problem) from None


def _unknown(stop_id: str) -> str:
    return f"unknown stop {stop_id!r}; GET /v1/stops lists stops with their ids"


def _json(body: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")
