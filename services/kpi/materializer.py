"""The `kpi`, machine-status and stop-reasons topics, materialised into the API's store.

The API reads every partition from the beginning (the topics are compacted, so this is
the latest record per key plus what has not been compacted yet) and then follows them.
Everything the API serves comes from them, so any number of API replicas answer alike
and one started on an empty database catches up.
It is ready once it has caught up with the end offsets it saw at start. It starts only on
topics laid out as configured (both compacted, the configured partition counts), and
creates none: its service does (linepulse/bus/topics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from linepulse.bus import AIOKAFKA, Consumer, KafkaClients
from linepulse.bus.clients import Fetched
from linepulse.bus.polling import poll_fresh
from linepulse.bus.topics import TopicRole, check_topics
from linepulse.config import KafkaSettings
from linepulse.errors import LinePulseError
from services.kpi.trace import BatchTrace

log = logging.getLogger(__name__)


class Table(Protocol):
    """A store table the materializer writes: `InvalidRecord` for a batch it refuses."""

    def upsert(self, rows: list[dict[str, Any]], /) -> None: ...


# Messages per poll. KPI records go into the store in one statement per poll, whose own
# ~25 ms is most of the cost of a small batch (services/kpi/history.py): a worker's burst
# of open-window records (~5,000 at 1,000 machines) is one upsert, not three, so the last
# record of a burst waits for one statement, not three.
MAX_BATCH = 20_000
# Bytes per partition a fetch may return: a burst of open-window records is ~1.2 KB each,
# over 1 MB (aiokafka's default) a partition at 1,000 machines; one fetch then, not two.
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024


class Corrections(Protocol):
    """The stop log (services/kpi/stops.py): corrections as read from the reasons topic."""

    def apply_corrections(
        self, entries: Sequence[Mapping[str, Any]], withdrawn: Sequence[tuple[str, int]]
    ) -> None: ...


class Store(Protocol):
    """What the materializer writes to: services/kpi/store.py's `KpiStore`."""

    @property
    def history(self) -> Table: ...
    @property
    def status(self) -> Table: ...
    @property
    def spc(self) -> Table: ...
    @property
    def stops(self) -> Corrections: ...


class RecordObserver(Protocol):
    def observe_records(self, records: list[dict[str, Any]]) -> None: ...


# How long a correction waits for the reasons topic to be read to its end.
REASONS_READ_TIMEOUT_S = 10.0


class Materializer:
    TOPICS: tuple[TopicRole, ...] = ("kpi", "status", "reasons", "spc")

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap: str,
        store: Store,
        metrics: RecordObserver,
        clients: KafkaClients = AIOKAFKA,
    ) -> None:
        self.kafka = kafka
        self.clients = clients
        self.bootstrap = bootstrap
        self.store = store
        self.metrics = metrics
        self.ready = False
        self.records = 0
        self.bad = 0
        self._trace = BatchTrace.from_env("materializer")  # None unless LINEPULSE_TRACE
        self._reasons_tp = TopicPartition(kafka.reasons.name, 0)
        self._waiting: list[asyncio.Future[None]] = []  # `reasons_read` callers

    async def reasons_read(self) -> None:
        """Return once the reasons topic has been read and applied up to the end it has
        now (so a correction counts those made on other replicas); TimeoutError after
        `REASONS_READ_TIMEOUT_S`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        async with asyncio.timeout(REASONS_READ_TIMEOUT_S):
            await waiter

    async def _release_readers(self, consumer: Consumer) -> None:
        """Resolve the `reasons_read` callers once the position reaches the end offset
        taken now (callers that came later wait for the next round)."""
        waiting, self._waiting = self._waiting, []
        try:
            end = (await consumer.end_offsets([self._reasons_tp]))[self._reasons_tp]
            while await consumer.position(self._reasons_tp) < end:
                await self._apply(await consumer.getmany(self._reasons_tp, timeout_ms=100))
        except BaseException as error:
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(TimeoutError(str(error)))
            if not isinstance(error, Exception):
                raise
            return
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    async def run(self, stop: asyncio.Event) -> None:
        layout = await check_topics(
            self.bootstrap, self.kafka, self.clients, roles=self.TOPICS, service="the KPI API"
        )
        consumer = self.clients.consumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="linepulse-api",
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        )
        await consumer.start()
        try:
            partitions = await self._assign(consumer, layout)
            ends = await consumer.end_offsets(partitions)
            pending = {tp: end for tp, end in ends.items() if end > 0}
            self.ready = not pending
            while not stop.is_set():
                batch = await poll_fresh(consumer, 100, MAX_BATCH)
                await self._apply(batch)
                if self._waiting:
                    await self._release_readers(consumer)
                if not self.ready:
                    for tp in list(pending):
                        if await consumer.position(tp) >= pending[tp]:
                            del pending[tp]
                    if not pending:
                        self.ready = True
                        log.info(
                            "api: caught up with %s (%d records)", self.kafka.kpi.name, self.records
                        )
        finally:
            await consumer.stop()

    async def _apply(self, batch: Fetched) -> None:
        """One poll's records into the store: KPI records, statuses, corrections."""
        stamps = None if self._trace is None or not batch else self._trace.batch()
        records: list[dict[str, Any]] = []
        statuses: list[dict[str, Any]] = []
        subgroups: list[dict[str, Any]] = []  # control charts' (the spc topic)
        corrections: list[dict[str, Any]] = []
        withdrawn: list[tuple[str, int]] = []
        for tp, messages in batch.items():
            if stamps is not None and messages:
                stamps.records(f"{tp.topic}[{tp.partition}]", messages)
            if tp == self._reasons_tp:
                self._read_corrections(tp, messages, corrections, withdrawn)
                continue
            target = {self.kafka.status.name: statuses, self.kafka.spc.name: subgroups}.get(
                tp.topic, records
            )
            for message in messages:
                try:
                    target.append(orjson.loads(message.value))
                except orjson.JSONDecodeError:
                    self.bad += 1
                    log.warning("%s@%d: not JSON; skipped", tp, message.offset)
        if stamps is not None:
            stamps.mark("decoded")
        if records:
            store = self._store if stamps is None else stamps.timed("upserted", self._store)
            records = await asyncio.to_thread(store, records)
            self.records += len(records)
        if statuses:  # a few statements per poll, whatever its size (stops.py)
            await asyncio.to_thread(self._upsert_each, self.store.status, statuses, "status")
        if subgroups:
            await asyncio.to_thread(self._upsert_each, self.store.spc, subgroups, "subgroup")
        if corrections or withdrawn:
            await asyncio.to_thread(self.store.stops.apply_corrections, corrections, withdrawn)
        if stamps is not None:
            stamps.write()

    def _read_corrections(
        self,
        tp: TopicPartition,
        messages: list[ConsumerRecord[bytes, bytes]],
        corrections: list[dict[str, Any]],
        withdrawn: list[tuple[str, int]],
    ) -> None:
        """Audit entries (and tombstones, by their key `{stop}#{n}`) of the reasons topic;
        one that cannot be read is counted and skipped."""
        for message in messages:
            try:
                if message.value is None:
                    stop, _, seq = (message.key or b"").decode().rpartition("#")
                    withdrawn.append((stop, int(seq)))
                else:
                    entry = orjson.loads(message.value)
                    for field in ("stop_id", "machine", "stop_start", "seq", "new_reason", "at"):
                        if field not in entry:
                            raise ValueError(f"no {field}")
                    corrections.append(entry)
            except (ValueError, UnicodeDecodeError) as error:
                self.bad += 1
                log.warning("%s@%d: not a correction (%s); skipped", tp, message.offset, error)

    def _upsert_each(self, table: Table, rows: list[dict[str, Any]], what: str) -> None:
        """Like `_upsert`: a malformed status or subgroup is logged and skipped, never
        fatal."""
        try:
            table.upsert(rows)
            return
        except LinePulseError as error:
            log.warning("a batch of %d %s records was refused (%s)", len(rows), what, error)
        for row in rows:
            try:
                table.upsert([row])
            except LinePulseError as error:
                self.bad += 1
                log.warning("%s skipped: %s", what, error)

    def _store(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upsert a batch and set the KPI gauges from what was kept, off the event loop:
        at thousands of records a poll the gauges alone take tens of milliseconds, which
        the API's answers would otherwise wait for (prometheus_client is thread-safe)."""
        kept = self._upsert(records)
        self.metrics.observe_records(kept)
        return kept

    def _upsert(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upsert a batch; if the store refuses it, retry one by one and skip the bad ones,
        so one malformed record on the topic never stops the API from following it."""
        try:
            self.store.history.upsert(records)
            return records
        except LinePulseError as error:
            log.warning(
                "a batch of %d records was refused (%s); retrying one by one", len(records), error
            )
        kept = []
        for record in records:
            try:
                self.store.history.upsert([record])
                kept.append(record)
            except LinePulseError as error:
                self.bad += 1
                log.warning("record skipped: %s: %s", error, str(record)[:300])
        return kept

    async def _assign(
        self, consumer: Consumer, layout: dict[TopicRole, int]
    ) -> list[TopicPartition]:
        """Every partition of both topics, as checked at start."""
        partitions = [
            TopicPartition(getattr(self.kafka, role).name, number)
            for role in self.TOPICS
            for number in range(layout[role])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return partitions
