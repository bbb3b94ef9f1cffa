"""The alerts service as a component: KPI records and telemetry in, pages out.

`open_alerts` opens the engine's store and the outbox (two SQLite files in the state
directory) and closes them on the way out; the composition root runs its `tasks` and
serves its app (linepulse/runtime.py `run_until_stop`). On stop the outbox keeps what is
undelivered for the next start.

Two group-less consumers follow the `kpi` and `telemetry` topics from their ends (alerts
are about now; what was firing before a restart is in the engine's store, and open
windows are republished every second). Every `EVALUATE_EVERY_S`, and at once after an
ack or a silence change, the engine evaluates its rules and the resulting notifications
go to the durable outbox, which delivers them through the channels with retries.

With `alerts.high_availability.enabled`, several instances share the work through Kafka
(services/alerts/failover.py): one is active and does all of the above; the others follow
its state on the `alerts.state` topic, answer reads from it, pass writes on to it, and
take over when it stops.

The service never creates a topic (its clients cannot: linepulse/bus/clients.py): at start
it waits up to `TOPIC_WAIT_S` for `kpi` and `telemetry`, which `linepulse kpi` creates,
and refuses to start if they do not come or are laid out differently from the plant
config (linepulse/bus/topics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from linepulse.bus import AIOKAFKA, KafkaClients
from linepulse.bus.topics import TopicRole, check_topics
from linepulse.config import PlantConfig
from linepulse.events import reading_as_float
from linepulse.http.settings import ApiAccess
from linepulse.runtime import HttpSettings, Served, StartRefused, Task, wait_set
from linepulse.spc_stream import Point
from linepulse.wire import decode_records
from services.alerts.api import create_app
from services.alerts.engine import AlertEngine
from services.alerts.failover import Failover, Role
from services.alerts.metrics import AlertMetrics
from services.alerts.model import Notification
from services.alerts.notes import ShiftNotes
from services.alerts.outbox import Outbox
from services.alerts.replication import NotActiveError, StateWriter
from services.alerts.reports import ShiftReportSender
from services.alerts.store import AlertStore

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 1.0
# How long a starting alerts service waits for its topics (the KPI service creating them
# may start at the same moment, as in the compose stack).
TOPIC_WAIT_S = 60.0


class AlertService:
    TOPICS: tuple[TopicRole, ...] = ("telemetry", "kpi")  # what the followers read

    def __init__(
        self,
        plant: PlantConfig,
        bootstrap: str,
        state_dir: Path,
        clients: KafkaClients = AIOKAFKA,
        registry: CollectorRegistry | None = None,
        url: str | None = None,
    ) -> None:
        """Opens the engine's store and the outbox in `state_dir`: `close()` them (or use
        `open_alerts`, which does). Metrics go to `registry` (a fresh one if None). `url`:
        where this instance's API answers, for the standbys of a replicated service."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.plant = plant
        self.clients = clients
        self.bootstrap = bootstrap
        self.registry = CollectorRegistry() if registry is None else registry
        self.metrics = AlertMetrics.create(self.registry)
        self.metrics.active.set(1)
        self.store = AlertStore.in_dir(state_dir)
        try:
            self.engine = AlertEngine(plant, self.store)
            self.outbox = Outbox(state_dir / "outbox.sqlite", plant.alerts, self.metrics)
        except BaseException:
            self.store.close()
            raise
        for name, stream in self.engine.charts.items():
            limits = stream.limits
            for which, value in (
                ("center", limits.center),
                ("ucl", limits.ucl),
                ("lcl", limits.lcl),
            ):
                self.metrics.spc_limit.labels(name, which).set(value)
        self._wake = asyncio.Event()
        self.failover: Failover | None = None
        ha = plant.alerts.high_availability
        if ha.enabled:
            self.failover = Failover(
                clients=clients,
                bootstrap=bootstrap,
                topic=plant.kafka.alerts.name,
                failover_s=ha.failover,
                engine=self.engine,
                outbox=self.outbox,
                url=url,
                act=self._act,
                on_role=self._show_role,
            )
            self.outbox.may_deliver = self.failover.may_deliver
            self._show_role("standby")
        else:
            self._recover()

    def _recover(self) -> None:
        """Notifications the engine committed just before a crash may not have reached the
        outbox: hand it the last day's again (it ignores keys it already holds)."""
        since = int(time.time() * 1000) - 24 * 3600 * 1000
        recovered = self.outbox.enqueue(self.store.notifications(since))
        if recovered:
            log.info("%d notification(s) recovered from the engine's log", recovered)

    def _show_role(self, role: Role) -> None:
        self.metrics.active.set(1 if role == "active" else 0)

    def close(self) -> None:
        """Close the outbox and the engine's store (their SQLite files)."""
        try:
            self.outbox.close()
        finally:
            self.store.close()

    @property
    def tasks(self) -> tuple[Task, ...]:
        followers = (
            Task("alerts-kpi", self.follow_kpi),
            Task("alerts-telemetry", self.follow_telemetry),
        )
        if self.failover is not None:
            return (*followers, Task("alerts-failover", self.failover.run))
        return (
            *followers,
            Task("alerts-evaluate", self.evaluate_loop),
            Task("alerts-outbox", self.outbox.run),
            Task("alerts-shift-reports", self.send_reports),
        )

    @property
    def topics(self) -> tuple[TopicRole, ...]:
        """The topics this service reads (and, replicated, writes)."""
        return (*self.TOPICS, "alerts") if self.failover is not None else self.TOPICS

    def _observing(self) -> bool:
        """A standby takes its observations from the active instance's state."""
        return self.failover is None or self.failover.role == "active"

    async def _act(self, done: asyncio.Event, writer: StateWriter) -> None:
        """The active instance's duties (services/alerts/failover.py), until `done`."""
        self._recover()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.outbox.run(done), name="alerts-outbox")
            tasks.create_task(self.evaluate_loop(done, writer), name="alerts-evaluate")
            tasks.create_task(self.send_reports(done), name="alerts-shift-reports")

    async def wait_for_topics(self, stop: asyncio.Event, wait_s: float = TOPIC_WAIT_S) -> bool:
        """Wait for the topics the followers read, never creating them; False if `stop`
        came first. Raises `TopicLayoutError` (missing after `wait_s`, or laid out
        otherwise): a consumer of a missing topic fails only after aiokafka's 40 s request
        timeout, with no word of which topic or why."""
        layout = await check_topics(
            self.bootstrap,
            self.plant.kafka,
            self.clients,
            roles=self.topics,
            service="linepulse alerts",
            wait_s=wait_s,
            stop=stop,
        )
        return bool(layout)

    async def send_reports(self, stop: asyncio.Event) -> None:
        """Shift reports into the outbox when shifts end (alerts.reports; nothing without
        it): the active instance's duty, as paging is."""
        reports = self.plant.alerts.reports
        if reports is None:
            await stop.wait()
            return
        notes = ShiftNotes(self.engine.store, self.engine.duty.calendar)
        sender = ShiftReportSender(
            self.plant,
            reports,
            self.outbox,
            alerts=lambda line: self.engine.alerts(line=line),
            notes=notes.of_shift,
        )
        await sender.run(stop)

    def poke(self) -> None:
        """Evaluate now (after an ack or a silence change)."""
        self._wake.set()

    async def follow_kpi(self, stop: asyncio.Event) -> None:
        consumer = self.clients.consumer(
            self.plant.kafka.kpi.name,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            client_id="linepulse-alerts",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                if not self._observing():
                    continue
                now = int(time.time() * 1000)
                for messages in batch.values():
                    for message in messages:
                        if message.value is None:
                            continue
                        try:
                            record = orjson.loads(message.value)
                        except orjson.JSONDecodeError:
                            log.warning("kpi record at offset %d is not JSON", message.offset)
                            continue
                        self.engine.observe_record(record, now)
        finally:
            await consumer.stop()

    async def follow_telemetry(self, stop: asyncio.Event) -> None:
        consumer = self.clients.consumer(
            self.plant.kafka.telemetry.name,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            client_id="linepulse-alerts",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if not batch or not self._observing():
                    continue
                frames = []
                for tp, messages in batch.items():
                    decoded = decode_records(
                        ((m.value, m.headers, m.offset) for m in messages), tp.topic
                    )
                    frames.append(decoded.events)
                events = pl.concat(frames)
                if events.is_empty():
                    continue
                # Every sample of a live chart, in order.
                self._count_spc(self.engine.observe_spc(events))
                # Rules look at each signal's latest value: one row per (machine, signal).
                latest = (
                    events.sort("ts")
                    .group_by("machine", "signal", maintain_order=True)
                    .last()
                    .select("ts", "machine", "signal", reading_as_float(), "value_str")
                )
                self.engine.observe_samples(latest.iter_rows(), int(time.time() * 1000))
        finally:
            await consumer.stop()

    def _count_spc(self, formed: dict[str, list[Point]]) -> None:
        """The live charts' new subgroups into /metrics."""
        m = self.metrics
        for name, points in formed.items():
            m.spc_subgroups.labels(name).inc(len(points))
            m.spc_mean.labels(name).set(points[-1].x)
            for point in points:
                for rule in point.broken:
                    m.spc_broken.labels(name, rule).inc()

    async def evaluate_loop(self, stop: asyncio.Event, writer: StateWriter | None = None) -> None:
        """Evaluate every `EVALUATE_EVERY_S` (or when poked) and queue what is due. With
        `writer` (the active instance of a replicated service), the engine's changes are
        on Kafka before their notifications reach the outbox: nothing is paged that a
        successor would not know was."""
        unwritten: list[Notification] = []
        while not stop.is_set():
            if self.failover is None or self.failover.may_act():
                unwritten += self.engine.evaluate(int(time.time() * 1000))
            held = False
            if writer is not None and (unwritten or writer.dirty):
                try:
                    await writer.flush()
                except NotActiveError:
                    return  # the failover's writer loop sees it too and steps down
                except KafkaError as error:
                    log.warning("alerts: state not written to Kafka, pages held: %s", error)
                    held = True
            if unwritten and not held:
                added = self.outbox.enqueue(unwritten)
                log.info("%d notification(s) queued (%d new)", len(unwritten), added)
                unwritten = []
            counts: dict[str, int] = {}
            for alert in self.engine.alerts():
                counts[alert.state.value] = counts.get(alert.state.value, 0) + 1
            for state in ("pending", "firing", "acknowledged", "resolved"):
                self.metrics.alerts.labels(state=state).set(counts.get(state, 0))
            self._wake.clear()
            await wait_set(self._wake, EVALUATE_EVERY_S)


@dataclass(frozen=True)
class AlertsSettings:
    plant: PlantConfig
    bootstrap: str
    state_dir: Path  # alert state, notification log and outbox (resolved by the caller)
    http: HttpSettings | None  # where the API listens; None: no API
    access: ApiAccess | None = None  # tokens, limits, CORS; None: from the config (`alerts:`)
    # Where other instances reach this one's API (replicated service); None: from `http`.
    advertise_url: str | None = None

    def own_url(self) -> str | None:
        """This instance's API as the standbys of a replicated service call it: the
        advertised URL, else the listening address (this host's name for a wildcard)."""
        if self.advertise_url is not None or self.http is None:
            return self.advertise_url
        host = self.http.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"{self.http.scheme}://{host}:{self.http.port}"


@dataclass(frozen=True)
class Alerts:
    """An opened alerts service: the loops to run and the API to serve."""

    service: AlertService
    served: tuple[Served, ...]

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.service.tasks

    async def wait_for_start(self, stop: asyncio.Event) -> bool:
        """The topics the followers read (see `AlertService.wait_for_topics`): False if
        `stop` came first."""
        return await self.service.wait_for_topics(stop)


@contextlib.asynccontextmanager
async def open_alerts(
    settings: AlertsSettings, clients: KafkaClients, registry: CollectorRegistry
) -> AsyncIterator[Alerts]:
    """The alerts service on `clients`, keeping its state in `settings.state_dir`, its
    metrics in `registry`. Raises `StartRefused` for an unreadable token file. On the way
    out it logs what the outbox still holds, then closes its files."""
    plant = settings.plant
    with contextlib.closing(
        AlertService(
            plant, settings.bootstrap, settings.state_dir, clients, registry, settings.own_url()
        )
    ) as service:
        log.info("alerts: state, notification log and outbox in %s", settings.state_dir)
        try:
            access = settings.access or plant.alerts.api_access()
        except ValueError as error:
            raise StartRefused(str(error)) from None
        if not access.tokens:
            log.warning(
                "no alerts API token: ack and silences are refused with 403; %s",
                access.configure_hint,
            )
        served: tuple[Served, ...] = ()
        if settings.http is not None:
            app = create_app(
                service.engine,
                service.registry,
                None,
                on_change=service.poke,
                access=access,
                replica=service.failover,
            )
            served = (Served("alerts-http", app, settings.http),)
            http = settings.http
            log.info("alerts: %s://%s:%d/docs", http.scheme, http.host, http.port)
        yield Alerts(service, served)
        log.info(
            "alerts stopped; %d notification(s) undelivered in the outbox", service.outbox.depth()
        )
