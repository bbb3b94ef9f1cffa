"""What the KPI worker writes to the bus: KPI records, machine statuses, dead letters and
telemetry forwarded to its line's home partition, on one producer.

Kept apart from the consume loop because it holds its own state and its own rules:
final records go out at once; an open-window record goes out when its window changed, at
most one cadence later (`KafkaSettings.open_cadence`: `open_deadline_s`, 0.2 s, for 1m and
15m windows; slower for the kinds in `open_cadence_s`), and the changes within a cadence
coalesce (the latest record of a key wins). KPI records go out in keyed batches per
partition; sends are not awaited one by one (a round trip per batch would pace the loop)
but settled before a checkpoint, and a failed send stops the worker.

The cadence is kept per window kind, not per key: every pending record of a kind goes out
together once the kind's last send is a cadence old, so each key is sent at most once a
cadence, a change waits at most a cadence, the records of a kind share produce batches,
and the loop's timer (`open_due_in`) is one minimum over five kinds, not over thousands of
keys. The `kpi` topic then carries at most (open keys of a kind / its cadence) records a
second per kind, whatever the event rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import polars as pl
from aiokafka.partitioner import murmur2

from linepulse.bus import Producer
from linepulse.bus.telemetry_writer import send_telemetry, telemetry_record
from linepulse.config import KafkaSettings, WindowKind
from linepulse.events import Decoded
from linepulse.spc_stream import spc_key
from services.kpi.machine_status import StatusRecord, status_key
from services.kpi.metrics import KpiMetrics

# Keys whose kpi partition is remembered (murmur2 per record is a cost at thousands of open
# windows a second); past this many the cache starts afresh rather than grow.
MAX_CACHED_KEYS: Final = 1_000_000


def record_key(record: dict[str, Any]) -> bytes:
    """`kpi` topic key: scope (machine, or `*` for the line), window kind and start."""
    scope = record["machine"] or "*"
    return f"{record['line']}/{scope}/{record['window']}/{record['window_start']}".encode()


@dataclass
class WorkerStats:
    """Cumulative counts of this worker process, for logs and tests."""

    batches: int = 0
    events: int = 0
    forwarded: int = 0
    dead_letters: int = 0
    published: int = 0
    checkpoints: int = 0


class KpiPublisher:
    """The worker's sends on a started producer, counted in `stats` and `metrics`.

    `kpi_partitions` is the kpi topic's partition count: a keyed record goes to Kafka's
    default partition for its key (murmur2), as any other producer would put it. `clock`
    is monotonic seconds (a test passes its own).
    """

    def __init__(
        self,
        producer: Producer,
        kafka: KafkaSettings,
        kpi_partitions: int,
        metrics: KpiMetrics,
        stats: WorkerStats,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self.kafka = kafka
        self.kpi_partitions = kpi_partitions
        self.metrics = metrics
        self.stats = stats
        self._clock = clock
        # Per window kind: the latest unsent open-window record per key, and the clock
        # time the kind's open records were last sent (absent: never, so the next go now).
        self._open: dict[WindowKind, dict[bytes, bytes]] = {}
        self._open_sent: dict[WindowKind, float] = {}
        self._partitions: dict[bytes, int] = {}  # kpi partition per key
        self._inflight: list[asyncio.Future[Any]] = []

    # -- KPI records --------------------------------------------------------------------

    async def records(self, records: list[dict[str, Any]]) -> None:
        """Finals go out now (replacing their key's unsent open record); open-window
        records wait for their kind's cadence (`publish_due_open`)."""
        finals = []
        pending = self._open
        for record in records:
            key = record_key(record)
            value = orjson.dumps(record)
            if record["final"]:
                waiting = pending.get(record["window"])
                if waiting is not None:
                    waiting.pop(key, None)
                finals.append((key, value))
            else:
                kind = record["window"]
                waiting = pending.get(kind)
                if waiting is None:
                    waiting = pending[kind] = {}
                waiting[key] = value
        self.stats.published += len(finals)
        if finals:
            self.metrics.records_published.labels(final="true").inc(len(finals))
        await self._send_kpi(finals)

    def kinds_due(self, kinds: Iterable[WindowKind]) -> frozenset[WindowKind]:
        """The window kinds among `kinds` whose cadence has passed since their last send:
        the worker has the core build the open records of those only (building a record
        costs more than sending it; a kind left out is built, every open window of it,
        once it is due). What a step builds for them is still due at the publish that
        follows it, so it goes out then, not a cadence later."""
        now = self._clock()
        return frozenset(kind for kind in kinds if not self._wait_s(kind, now))

    def due_in(self, kinds: Iterable[WindowKind]) -> float | None:
        """Seconds until the first of `kinds` is due (0: now), None for no kinds."""
        now = self._clock()
        return min((self._wait_s(kind, now) for kind in kinds), default=None)

    def open_due_in(self) -> float | None:
        """Seconds until the next open-window records are due (0: now), None with none
        waiting: how long the loop may wait for telemetry before it must publish."""
        return self.due_in(kind for kind, waiting in self._open.items() if waiting)

    def _wait_s(self, kind: WindowKind, now: float) -> float:
        """Seconds from `now` until `kind`'s cadence has passed since its last send (0:
        it has, or nothing of it was sent yet): the one test of every "due" here."""
        sent = self._open_sent.get(kind)
        return 0.0 if sent is None else max(0.0, sent + self.kafka.open_cadence(kind) - now)

    async def publish_due_open(self, *, force: bool = False) -> None:
        """The open-window records of every kind whose cadence has passed since its last
        send (of every kind with `force`: before a checkpoint that covers them, or on
        leaving)."""
        now = self._clock()
        items: list[tuple[bytes, bytes]] = []
        for kind, waiting in self._open.items():
            if waiting and (force or not self._wait_s(kind, now)):
                items.extend(waiting.items())
                waiting.clear()
                self._open_sent[kind] = now
        if not items:
            return
        self.stats.published += len(items)
        self.metrics.records_published.labels(final="false").inc(len(items))
        await self._send_kpi(items)
        self.reap()

    async def _send_kpi(self, items: list[tuple[bytes, bytes]]) -> None:
        """(key, value) records onto the kpi topic, in batches per partition.

        The partition of a key is cached: open-window keys repeat every cadence. aiokafka's
        batch API skips most of its per-message cost, which matters at thousands of open
        windows a second.
        """
        producer = self.producer
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in items:
            partition = self._partitions.get(key)
            if partition is None:
                if len(self._partitions) > MAX_CACHED_KEYS:
                    self._partitions.clear()
                partition = (murmur2(key) & 0x7FFFFFFF) % self.kpi_partitions
                self._partitions[key] = partition
            by_partition.setdefault(partition, []).append((key, value))
        topic = self.kafka.kpi.name
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    self._inflight.append(
                        await producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            self._inflight.append(await producer.send_batch(batch, topic, partition=partition))

    # -- statuses, forwarded telemetry, dead letters --------------------------------------

    async def statuses(self, records: list[StatusRecord]) -> None:
        """Machine status records, in the order given, keyed by the state they report
        (`status_key`: machine and since), so compaction keeps every state change."""
        topic = self.kafka.status.name
        for record in records:
            self._inflight.append(
                await self.producer.send(topic, value=orjson.dumps(record), key=status_key(record))
            )

    async def spc_points(self, records: list[dict[str, Any]]) -> None:
        """Control chart subgroups (linepulse/spc_stream.py `spc_record`), keyed by chart
        and end: a subgroup published again after a restart replaces itself."""
        topic = self.kafka.spc.name
        for record in records:
            self._inflight.append(
                await self.producer.send(topic, value=orjson.dumps(record), key=spc_key(record))
            )

    async def forward(self, topic: str, home: int, events: pl.DataFrame) -> None:
        """Events of one line's machines to that line's home partition of `topic`, as one
        telemetry record (the home is given, not derived)."""
        record = telemetry_record(events, home)
        self._inflight.append(await send_telemetry(self.producer, topic, record))
        self.stats.forwarded += events.height

    def dead_letters(self, decoded: Decoded, source: str) -> None:
        """Records the decoder refused, each with where it was and why."""
        self._dead_letters(
            [
                {"where": where, "reason": reason, "raw": raw, "source": source}
                for where, reason, raw in decoded.rejected
            ]
        )

    def dead_letters_core(self, rejected: pl.DataFrame, source: str, where: str) -> None:
        """Events the core refused (`ts`, `machine`, `signal`, `reason` rows)."""
        self._dead_letters(
            [
                {
                    "where": where,
                    "reason": reason,
                    "event": {"ts": ts, "machine": machine, "signal": signal},
                    "source": source,
                }
                for ts, machine, signal, reason in rejected.iter_rows()
            ]
        )

    def _dead_letters(self, letters: list[dict[str, Any]]) -> None:
        if not letters:
            return
        topic = self.kafka.dlq.name
        for letter in letters:
            self._inflight.append(
                asyncio.ensure_future(
                    self.producer.send_and_wait(topic, value=orjson.dumps(letter))
                )
            )
        self.stats.dead_letters += len(letters)
        self.metrics.dlq.inc(len(letters))

    # -- sends in flight ----------------------------------------------------------------

    def reap(self) -> None:
        """Forget the sends that are done, raising the first one's error if any failed:
        the loop does not wait for acks, but a failed send stops the worker."""
        pending = []
        for sent in self._inflight:
            if sent.done():
                sent.result()  # raises the send's error
            else:
                pending.append(sent)
        self._inflight = pending

    async def settle(self) -> None:
        """Every send flushed and acknowledged (or its error raised): records land before
        the checkpoint of the state that produced them is saved."""
        await self.producer.flush()
        inflight, self._inflight = self._inflight, []
        if inflight:
            await asyncio.gather(*inflight)
