"""The bus side of `linepulse ingest` (and of `linepulse demo`): samples and dead letters
onto Kafka, in order, without loss through broker outages and restarts.

The records are the telemetry writer's (linepulse/bus/telemetry_writer.py: Arrow records on
each line's home partition); this module adds what keeps them through an outage. Its
producer comes from the bus's clients factory, so the same sink runs on the in-process bus
(`linepulse demo`), whose broker is never away and whose spool stays empty.

How data moves:

    put(frame) ──> memory (≤ memory_samples) ──spill──> disk spool (≤ spool_max_bytes)
                        │                                   │
                        └──────────> sender <───────────────┘ (spool first: it is older)
                                       │ one unit at a time: split by line home partition,
                                       ▼ records of ≤ batch_samples, idempotent producer
                                     Kafka

- **Order.** Memory holds the newest samples, the spool the older ones: a spill moves all
  of memory, oldest first, to the spool's tail; the sender takes from memory only when
  the spool is empty. The sender has one unit in flight at a time (a spool entry, or up to
  `batch_samples × partitions` samples from memory); aiokafka keeps the order of sends
  per partition, so per partition samples reach Kafka in `put` order.
- **No loss, no duplicates.** With `enable_idempotence=True` aiokafka never expires a
  batch: while the broker is away the unit's sends stay pending and are delivered, once,
  when it returns (measured: a 20 s and a 300 s outage, every pending send delivered in
  order after the restart, none twice). Meanwhile `put` goes on into memory, then the
  spool. A spool entry is forgotten only after all its records are acknowledged, and its
  segment file deleted when all its entries are.
- **A stuck producer** (the broker reachable again for `STUCK_AFTER_S` while the unit still
  makes no progress) is dropped and a fresh one resends what was not acknowledged. That
  is the one path that can duplicate a record: one the old producer wrote but never heard
  back about. It is logged.
- **Backpressure.** When the spool holds `spool_max_bytes`, `put` waits (gauge
  `backpressure` 1, `backpressure_seconds` counting) instead of growing memory.
- **Close** (bounded): sends what it can within the timeout, then fails what is still
  pending, writes every unacknowledged sample (the unit in flight included, ahead of the
  rest) to the spool, and the next `start()` sends it first.
- **Dead letters** share the path as their own unit kind (a kind marker in the spool),
  so they get the same ordering, durability and limits: a JSON value per letter on the
  dead-letter topic, keyed by source. Memory holds at most `MEMORY_LETTERS` of them.
- **Topics** (telemetry and dead letters) are created if missing, with the plant config's
  layout, at each connect, and never used laid out otherwise (linepulse/bus/topics.py):
  at `start()` with the broker reachable that is a `TopicLayoutError` (the service
  refuses to start); found on a later connect, it is logged and everything stays
  buffered, checked again with the connect backoff, until the topic is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import polars as pl
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerClosed

from linepulse.bus.clients import AioKafkaClients, KafkaClients, Producer
from linepulse.bus.telemetry_writer import TelemetryRecord, TelemetryWriter
from linepulse.bus.topics import TopicLayoutError, TopicRole, ensure_topics
from linepulse.config import PlantConfig
from linepulse.events import EVENT_SCHEMA, reason_kind
from linepulse.runtime import wait_set
from linepulse.sources import IngestSettings
from services.ingest.errors import (
    SinkClosedError as SinkClosedError,  # raised here; defined with its kin
)
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import DeadLetter
from services.ingest.spool import (
    Entry,
    Kind,
    Spool,
    decode_letters,
    decode_samples,
    encode_letters,
    encode_samples,
)

log = logging.getLogger(__name__)

# Kafka producer settings. gzip is the one codec aiokafka has without an extra package; on
# top of the lz4 inside the Arrow records it still takes ~35 % off (7.2 -> 4.5 bytes a
# sample) for ~0.4 µs a sample.
COMPRESSION: Final = "gzip"
PRODUCER_LINGER_MS: Final = 5  # lets a unit's records for one partition share a batch
MAX_BATCH_BYTES: Final = 512 * 1024  # under the broker's default message.max.bytes (1 MiB)
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
# aiokafka's own retry interval while a broker is away (its default, 100 ms, logs 20
# connection errors a second).
RETRY_BACKOFF_MS: Final = 1000

BACKOFF_START_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.5  # how often a waiting send looks at the broker's state
LOST_AFTER_S: Final = 5.0  # no acknowledgement for this long: the broker counts as lost
STUCK_AFTER_S: Final = 30.0  # broker reachable, no progress for this long: new producer
# What a `kept` waiter (an MQTT QoS 1 acknowledgement) waits for Kafka before the sink writes
# what it holds to the spool instead.
KEEP_WAIT_S: Final = 1.0
CLOSE_TIMEOUT_S: Final = 10.0
MEMORY_LETTERS: Final = 1_000  # dead letters carry up to 4 KiB of raw payload each
# Samples per spool entry: large entries make the drain fast (one round trip each), and
# the sender splits them into records of `batch_samples` per partition anyway.
SPOOL_ENTRY_SAMPLES: Final = 50_000
SPOOL_LOG_STEP: Final = 0.1  # log the spool's growth at each 10 % of its limit
FULL_LOG_S: Final = 60.0  # "spool full" at most once a minute (it flaps while draining)
TOPICS: Final[tuple[TopicRole, ...]] = ("telemetry", "dlq")


@dataclass
class _Item:
    """What one `put` or `dead_letter` call left in memory."""

    kind: Kind
    seq: int
    count: int
    frame: pl.DataFrame | None = None
    records: list[dict[str, Any]] | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Chunk:
    """One Kafka record of a unit, telemetry or a dead letter; `done` once the broker
    acknowledged it. Each keeps what it encodes, to spool what is left at close."""

    count: int
    telemetry: TelemetryRecord | None = None
    letter: dict[str, Any] | None = None
    done: bool = False
    error: BaseException | None = None

    def settle(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.error = ProducerClosed()
        elif future.exception() is not None:
            self.error = future.exception()
        else:
            self.done = True


@dataclass
class _Unit:
    """What the sender has in flight: a spool entry or samples taken from memory."""

    kind: Kind
    seq: int
    count: int
    frame: pl.DataFrame | None = None
    records: list[dict[str, Any]] | None = None
    entry: Entry | None = None  # set when it came from the spool
    chunks: list[_Chunk] = field(default_factory=list)

    def pending(self) -> list[_Chunk]:
        return [chunk for chunk in self.chunks if not chunk.done]

    def left(self) -> tuple[int, bytes] | None:
        """(count, spool payload) of what is not acknowledged; None when nothing is."""
        pending = self.pending() if self.chunks else None
        if pending == []:
            return None
        if self.kind is Kind.LETTERS:
            records = (self.records or []) if pending is None else [c.letter for c in pending]
            kept = [r for r in records if r is not None]
            return len(kept), encode_letters(kept)
        if pending is None:
            frame = self.frame if self.frame is not None else pl.DataFrame()
        else:
            frame = pl.concat([c.telemetry.rows for c in pending if c.telemetry is not None])
        return frame.height, encode_samples(frame)


class SpooledSink:
    """Validated samples and dead letters onto the bus through outages; see the module doc.

    `clients` makes the producer (default: aiokafka's, with the plant's `kafka.security`);
    on the in-process bus (`linepulse demo`) the same sink runs and its broker is never away.
    """

    def __init__(
        self,
        plant: PlantConfig,
        bootstrap: str,
        settings: IngestSettings,
        metrics: IngestMetrics,
        *,
        clients: KafkaClients | None = None,
    ) -> None:
        self.plant = plant
        self.bootstrap = bootstrap
        self.settings = settings
        self.metrics = metrics
        self.topic = plant.kafka.telemetry.name
        self.dlq_topic = plant.kafka.dlq.name
        # TLS/SASL from kafka.security; a bad setting fails here, at start, not in a retry.
        self._clients = clients or AioKafkaClients(plant.kafka.security)
        self._spool: Spool | None = None
        self._memory: deque[_Item] = deque()
        self._memory_samples = 0
        self._memory_letters = 0
        self._seq = 0
        self._unit: _Unit | None = None
        self._writer: TelemetryWriter | None = None  # its producer, while connected
        self._partitions = 1
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # something to send, or closing
        self._kept_moved = asyncio.Event()  # `kept_through` went up (or the sink closed)
        self._room = asyncio.Event()  # memory or spool has room again
        self._closing = False  # send everything, then stop
        self._stopping = False  # stop now: close() ran out of time
        self._closed = False
        self._up = False
        self._down_since: float | None = None  # since when sends fail (or connects)
        self._waiters = 0  # puts held by a full spool
        self._spool_logged = 0  # the last 10 % step of the spool limit logged
        self._spooled_since: float | None = None  # when the spool last became non-empty
        self._from_spool = 0  # samples sent from the spool since then
        self._connect_failures = 0
        self._full_logged = -FULL_LOG_S  # when "spool full" was last logged
        self.sent_samples = 0
        self.sent_letters = 0

    # -- health ----------------------------------------------------------------------------

    @property
    def kafka_up(self) -> bool:
        """True while sends are acknowledged; False from start until the first success, and
        from `LOST_AFTER_S` without an acknowledgement until the next."""
        return self._up

    @property
    def buffered_samples(self) -> int:
        """Samples in memory, the unit in flight included (not those in the spool)."""
        unit = self._unit
        in_flight = unit.count if unit and unit.entry is None and unit.kind is Kind.SAMPLES else 0
        return self._memory_samples + in_flight

    @property
    def spooled_samples(self) -> int:
        return self._spool.samples if self._spool else 0

    @property
    def spool_bytes(self) -> int:
        return self._spool.size_bytes if self._spool else 0

    @property
    def backpressure(self) -> bool:
        """True while `put` callers wait on a full spool."""
        return self._waiters > 0

    def position(self) -> int:
        """The sequence number of the last `put` or `dead_letter` (-1: none yet)."""
        return self._seq - 1

    @property
    def kept_through(self) -> int:
        """Every put up to this sequence number is kept: acknowledged by Kafka, or in the
        spool (written, so a killed process keeps it; fsync'd at rotation and close).
        What is not: memory, and a unit taken from memory that is still in flight."""
        waiting = [self._memory[0].seq] if self._memory else []
        unit = self._unit
        if unit is not None and unit.entry is None:
            waiting.append(unit.seq)
        return min(waiting) - 1 if waiting else self._seq - 1

    async def kept(self, position: int) -> None:
        """Return once `kept_through` reaches `position`; `SinkClosedError` if the sink
        closes first without keeping it (close spools what it holds, so that is a spool
        that could not be written). If Kafka has not acknowledged it within `KEEP_WAIT_S`
        (away, or slow), it is written to the spool (`_secure`): a source waiting to
        acknowledge its sender must not wait for the broker's return, or the sender's own
        queue would overflow instead of our spool."""
        while self.kept_through < position:
            if self._closed:
                raise SinkClosedError("the Kafka sink closed before keeping what was put")
            self._kept_moved.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns normally when
            # it is cancelled in the same step as the event is set, and the caller (the
            # MQTT acknowledger, cancelled at stop) then waited forever for its next batch.
            try:
                async with asyncio.timeout(KEEP_WAIT_S):
                    await self._kept_moved.wait()
            except TimeoutError:
                self._secure()

    def _secure(self) -> None:
        """Everything put so far to the spool: memory spilled, and what is left of a unit
        in flight from memory written ahead of it, as the spool entry that unit now is (its
        acknowledgement acknowledges the entry; a producer recreated meanwhile may send
        that part twice, which the stuck-producer path can do anyway)."""
        spool = self._spool
        if spool is None or self._closed:
            return
        self._spill(why=f"Kafka has not acknowledged for {KEEP_WAIT_S:.0f} s")
        unit = self._unit
        if unit is not None and unit.entry is None:
            left = unit.left()
            if left is not None and left[0]:
                spool.prepend(unit.kind, unit.seq, left[0], left[1])
                unit.entry = spool.next_unread()  # the head: older than everything spilled
        self._kept_moved.set()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the spool, try the broker once, and start sending in the background; a
        broker that is away is retried with backoff (1 s doubling to 30 s)."""
        folder = self.settings.spool_dir
        self._spool = await asyncio.to_thread(Spool, folder, self.settings.spool_max_bytes)
        self._seq = self._spool.next_seq
        self._spool_logged = self._spool_step()
        if not self._spool.is_empty:
            self._spooled_since = time.monotonic()
        try:
            await self._connect()
        except TopicLayoutError:
            self._spool.close()
            self._spool = None
            raise
        self._gauges()
        self._runner = asyncio.create_task(self._run(), name="kafka-sink")

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what can be sent within `timeout_s`; keep the rest in the spool."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        runner = self._runner
        if runner is not None and not runner.done():
            done, _ = await asyncio.wait({runner}, timeout=timeout_s)
            if not done:
                # Fail what aiokafka still holds, so each record's fate is known before the
                # rest is written to disk; a record delivered meanwhile counts as done.
                self._stopping = True
                self._wake.set()
                await self._drop_producer("closing")
                done, _ = await asyncio.wait({runner}, timeout=CONNECT_TIMEOUT_S)
                if not done:
                    runner.cancel()
                    await asyncio.wait({runner})
        if runner is not None and not runner.cancelled() and runner.exception() is not None:
            log.error("kafka sink: the sender failed", exc_info=runner.exception())
        await self._drop_producer(None)
        self._closed = True
        self._room.set()  # release puts still waiting: they raise SinkClosedError
        self._kept_moved.set()  # and `kept` waiters: kept now, or never
        if self._spool is not None:
            kept = self._persist()
            self._spool.close()
            if kept:
                log.warning(
                    "kafka sink closed with %d samples and %d dead letters kept in the spool "
                    "(%d bytes at %s): the next start sends them first",
                    self._spool.samples,
                    self._spool.letters,
                    self._spool.size_bytes,
                    self._spool.folder,
                )
            else:
                log.info("kafka sink closed; nothing waiting")
        self._gauges()

    def _persist(self) -> bool:
        """Write the unacknowledged part of the unit in flight, then memory, to the spool."""
        spool = self._running_spool()
        unit, self._unit = self._unit, None
        if unit is not None:
            left = unit.left()
            if unit.entry is not None:
                if left is None:
                    spool.ack(unit.entry)
                elif left[0] != unit.entry.count:
                    spool.settle(unit.entry, *left)
            elif left is not None and left[0]:
                # Taken from memory before anything was spooled: older than every entry.
                spool.prepend(unit.kind, unit.seq, left[0], left[1])
        self._spill(closing=True)
        return not spool.is_empty

    # -- input -----------------------------------------------------------------------------

    async def put(self, events: pl.DataFrame) -> None:
        """Queue `EVENT_SCHEMA` events; waits while memory and spool are both full."""
        if events.is_empty():
            return
        await self._make_room(Kind.SAMPLES, events.height)
        self._memory.append(_Item(Kind.SAMPLES, self._next_seq(), events.height, frame=events))
        self._memory_samples += events.height
        self._wake.set()
        self._gauges()

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        """Queue dead letters for the DLQ topic (JSON, keyed by source); counted in
        `rejected{source, reason}` here, where they enter."""
        if not letters:
            return
        await self._make_room(Kind.LETTERS, len(letters))
        records = [letter.as_record() for letter in letters]
        self._memory.append(_Item(Kind.LETTERS, self._next_seq(), len(records), records=records))
        self._memory_letters += len(records)
        counts: dict[tuple[str, str], int] = {}
        for letter in letters:
            # The source id without the topic or node after the colon: a bounded label.
            label = (letter.source.split(":", 1)[0], reason_kind(letter.reason))
            counts[label] = counts.get(label, 0) + 1
        for (source, reason), n in counts.items():
            self.metrics.rejected.labels(source=source, reason=reason).inc(n)
        self._wake.set()

    def _running_spool(self) -> Spool:
        if self._spool is None:
            raise SinkClosedError("the Kafka sink is not started")
        return self._spool

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    async def _make_room(self, kind: Kind, count: int) -> None:
        if self._closed or self._spool is None:
            raise SinkClosedError("the Kafka sink is not running (start() it; or it was closed)")
        waited_from: float | None = None
        try:
            while self._over(kind, count):
                if not self._spool.full:
                    self._spill()
                    break
                if waited_from is None:
                    waited_from = time.monotonic()
                    self._waiters += 1
                    self._gauges()
                    if self._waiters == 1 and waited_from - self._full_logged >= FULL_LOG_S:
                        self._full_logged = waited_from
                        log.warning(
                            "spool full (%d bytes, limit %d): ingesters wait until Kafka "
                            "takes %d samples waiting",
                            self._spool.size_bytes,
                            self._spool.max_bytes,
                            self._spool.samples + self._memory_samples,
                        )
                self._room.clear()
                await self._room.wait()
                if self._closed:
                    raise SinkClosedError("the Kafka sink closed while a put waited for room")
        finally:
            if waited_from is not None:
                self._waiters -= 1
                self.metrics.backpressure_seconds.inc(time.monotonic() - waited_from)
                self._gauges()

    def _over(self, kind: Kind, count: int) -> bool:
        if not self._memory:
            return False
        if kind is Kind.LETTERS:
            return self._memory_letters + count > MEMORY_LETTERS
        return self._memory_samples + count > self.settings.memory_samples

    def _spill(self, *, closing: bool = False, why: str | None = None) -> None:
        """Move all of memory, oldest first, to the spool's tail (behind what is there);
        `why` it spills, for the log, if not because memory is full."""
        spool = self._running_spool()
        if not self._memory:
            return
        was_empty = spool.is_empty
        cap = max(self._unit_cap(), SPOOL_ENTRY_SAMPLES)
        samples = 0
        while self._memory:
            first = self._memory.popleft()
            if first.kind is Kind.LETTERS:
                records = list(first.records or [])
                while self._memory and self._memory[0].kind is Kind.LETTERS:
                    records.extend(self._memory.popleft().records or [])
                spool.append(Kind.LETTERS, first.seq, len(records), encode_letters(records))
                continue
            frames = [first.frame] if first.frame is not None else []
            count = first.count
            while self._memory and self._memory[0].kind is Kind.SAMPLES:
                if count + self._memory[0].count > cap:
                    break
                item = self._memory.popleft()
                if item.frame is not None:
                    frames.append(item.frame)
                count += item.count
            spool.append(Kind.SAMPLES, first.seq, count, encode_samples(pl.concat(frames)))
            samples += count
        self._memory_samples = self._memory_letters = 0
        self._kept_moved.set()
        if was_empty:
            self._spooled_since = time.monotonic()
            self._from_spool = 0
        if was_empty and not closing:
            log.warning(
                "%s (%d samples): spilling to the spool at %s (Kafka %s)",
                why or "memory full",
                samples,
                spool.folder,
                "up" if self._up else "not acknowledging",
            )
        step = self._spool_step()
        if step > self._spool_logged:
            self._spool_logged = step
            log.warning(
                "spool growing: %d bytes, %.0f%% of its limit; %d samples waiting",
                spool.size_bytes,
                100 * spool.size_bytes / spool.max_bytes,
                spool.samples,
            )
        self._gauges()

    def _spool_step(self) -> int:
        spool = self._spool
        return 0 if spool is None else int(spool.size_bytes / spool.max_bytes / SPOOL_LOG_STEP)

    def _unit_cap(self) -> int:
        return self.settings.batch_samples * max(1, self._partitions)

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stopping:
            if self._unit is None:
                self._unit = await self._next_unit()
                if self._unit is None:
                    return  # closing, and nothing is left
            if self._writer is None:
                if await self._reconnect():
                    backoff = BACKOFF_START_S
                else:
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
            if await self._deliver(self._unit):
                self._acknowledged(self._unit)
                self._unit = None

    async def _pause(self, seconds: float) -> None:
        """Sleep before the next connection attempt (not cut short by puts: that would
        retry at their rate); while closing, retry every `POLL_S` until close gives up."""
        await asyncio.sleep(min(seconds, POLL_S) if self._closing else seconds)

    async def _next_unit(self) -> _Unit | None:
        """The oldest waiting unit: the spool's next entry, else (with the spool empty)
        memory's head once `batch_samples` wait or the oldest has waited `linger_ms`."""
        spool = self._running_spool()
        while not self._stopping:
            if spool.unread:
                entry = spool.next_unread()
                if entry is not None:
                    return self._from_entry(entry)
            if self._memory and spool.is_empty:
                head = self._memory[0]
                linger = head.at + self.settings.linger_ms / 1000 - time.monotonic()
                if (
                    head.kind is Kind.LETTERS
                    or self._memory_samples >= self.settings.batch_samples
                    or linger <= 0
                    or self._closing
                ):
                    return self._take_memory()
            elif self._closing and not self._memory and spool.is_empty:
                return None
            else:
                linger = BACKOFF_MAX_S
            self._wake.clear()
            await wait_set(self._wake, max(linger, 0.001))
        return None

    def _from_entry(self, entry: Entry) -> _Unit:
        if entry.kind is Kind.LETTERS:
            records = decode_letters(entry.payload)
            return _Unit(entry.kind, entry.seq, entry.count, records=records, entry=entry)
        frame = decode_samples(entry.payload)
        return _Unit(entry.kind, entry.seq, entry.count, frame=frame, entry=entry)

    def _take_memory(self) -> _Unit:
        first = self._memory.popleft()
        if first.kind is Kind.LETTERS:
            self._memory_letters -= first.count
            return _Unit(Kind.LETTERS, first.seq, first.count, records=first.records)
        frames = [first.frame] if first.frame is not None else []
        count = first.count
        cap = self._unit_cap()
        while self._memory and self._memory[0].kind is Kind.SAMPLES:
            if count + self._memory[0].count > cap:
                break
            item = self._memory.popleft()
            if item.frame is not None:
                frames.append(item.frame)
            count += item.count
        self._memory_samples -= count
        self._room.set()
        self._gauges()
        return _Unit(Kind.SAMPLES, first.seq, count, frame=pl.concat(frames))

    def _chunks(self, unit: _Unit, writer: TelemetryWriter) -> list[_Chunk]:
        if unit.kind is Kind.LETTERS:
            return [_Chunk(1, letter=record) for record in unit.records or []]
        frame = unit.frame if unit.frame is not None else pl.DataFrame(schema=EVENT_SCHEMA)
        return [_Chunk(r.rows.height, telemetry=r) for r in writer.records(frame)]

    async def _deliver(self, unit: _Unit) -> bool:
        """Send the unit's unacknowledged records and wait for them; False if the producer
        had to be dropped (the rest is resent by a new one)."""
        writer = self._writer
        if writer is None:
            return False
        if not unit.chunks:
            unit.chunks = self._chunks(unit, writer)
        task = asyncio.create_task(self._send(writer, unit), name="kafka-sink-send")
        try:
            await self._watch(task)
        finally:
            if not task.done():  # the runner is cancelled, or the send ignored a dropped producer
                task.cancel()
                await asyncio.wait({task})
        failed = [chunk for chunk in unit.chunks if not chunk.done]
        if not failed:
            self._set_up()
            return True
        errors = {type(c.error).__name__ for c in failed if c.error is not None}
        if not self._stopping:
            log.warning(
                "%d of %d Kafka records not delivered (%s); reconnecting",
                len(failed),
                len(unit.chunks),
                ", ".join(sorted(errors)) or "not sent",
            )
        self._set_down(time.monotonic())
        await self._drop_producer("send failed")
        for chunk in failed:
            chunk.error = None
        return False

    async def _watch(self, task: asyncio.Task[None]) -> None:
        """Wait for a unit's sends; meanwhile notice a lost broker, probe it with backoff,
        and drop a producer that stays stuck once the broker answers again."""
        started = time.monotonic()
        next_probe = started + LOST_AFTER_S
        backoff = BACKOFF_START_S
        reachable_since: float | None = None
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return
            now = time.monotonic()
            if self._up and now - started >= LOST_AFTER_S:
                self._set_down(now)
            if not self._up and now >= next_probe:
                reachable = await self._clients.reachable(self.bootstrap)
                next_probe = time.monotonic() + backoff
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                if not reachable:
                    reachable_since = None
                    if backoff == BACKOFF_MAX_S:  # every 30 s once the backoff is at its top
                        log.info(
                            "Kafka still away after %.0f s; waiting: %d samples in memory, %d "
                            "in the spool (%d bytes)",
                            now - (self._down_since or now),
                            self.buffered_samples,
                            self.spooled_samples,
                            self.spool_bytes,
                        )
                elif reachable_since is None:
                    reachable_since = now
                    backoff = BACKOFF_START_S
                elif now - reachable_since >= STUCK_AFTER_S:
                    log.warning(
                        "Kafka answers again but the producer delivered nothing for %.0f s: "
                        "replacing it; records it wrote without hearing back may be sent "
                        "twice",
                        now - reachable_since,
                    )
                    await self._drop_producer("stuck")
                    await asyncio.wait({task}, timeout=CONNECT_TIMEOUT_S)
                    return

    async def _send(self, writer: TelemetryWriter, unit: _Unit) -> None:
        """Hand the records to aiokafka in order and wait until each is settled."""
        futures: list[asyncio.Future[Any]] = []
        for chunk in unit.pending():
            while True:
                try:
                    future = await self._send_chunk(writer, chunk)
                    break
                except KafkaTimeoutError:
                    continue  # the partition's batch is full while the broker is away
                except KafkaError as error:  # the producer is closing or failed
                    chunk.error = error
                    if futures:
                        await asyncio.wait(futures)
                    return
            future.add_done_callback(chunk.settle)
            futures.append(future)
        if futures:
            await asyncio.wait(futures)  # never cancels aiokafka's futures

    async def _send_chunk(self, writer: TelemetryWriter, chunk: _Chunk) -> asyncio.Future[Any]:
        if chunk.telemetry is not None:
            return await writer.send(chunk.telemetry)
        letter = chunk.letter or {}
        return await writer.producer.send(
            self.dlq_topic, value=orjson.dumps(letter), key=str(letter.get("source", "")).encode()
        )

    def _acknowledged(self, unit: _Unit) -> None:
        self._kept_moved.set()  # the caller clears `_unit`, before any waiter runs
        spool = self._running_spool()
        if unit.entry is not None:
            spool.ack(unit.entry)
            self._room.set()
            if unit.kind is Kind.SAMPLES:
                self._from_spool += unit.count
            if spool.is_empty:
                log.info(
                    "spool drained: %d samples sent from disk, %.1f s after the first was "
                    "spooled; %d samples wait in memory",
                    self._from_spool,
                    time.monotonic() - (self._spooled_since or time.monotonic()),
                    self._memory_samples,
                )
                self._spooled_since = None
                self._from_spool = 0
                self._spool_logged = 0
        if unit.kind is Kind.SAMPLES:
            self.sent_samples += unit.count
            self.metrics.sent.inc(unit.count)
        else:
            self.sent_letters += unit.count
        self._gauges()

    # -- the broker ------------------------------------------------------------------------

    async def _reconnect(self) -> bool:
        """`_connect`, with a topic laid out otherwise logged (it is fixed by hand while
        this keeps buffering) instead of raised."""
        try:
            return await self._connect()
        except TopicLayoutError as error:
            self._down_since = self._down_since or time.monotonic()
            self._connect_failures += 1
            log.error("%s Buffering meanwhile; checking again.", error)
            return False

    async def _connect(self) -> bool:
        """A started producer and the topic's partition count, or False (logged); raises
        `TopicLayoutError` for a topic laid out differently from the plant config."""
        if self._stopping:
            return False
        if not await self._clients.reachable(self.bootstrap):
            self._down_since = self._down_since or time.monotonic()
            self._connect_failures += 1
            level = logging.WARNING if self._connect_failures == 1 else logging.DEBUG
            log.log(level, "Kafka at %s not reachable; buffering, retrying", self.bootstrap)
            return False
        producer = self._clients.producer(
            bootstrap_servers=self.bootstrap,
            client_id="linepulse-ingest",
            enable_idempotence=True,  # forces acks="all"
            compression_type=COMPRESSION,
            linger_ms=PRODUCER_LINGER_MS,
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=MAX_REQUEST_BYTES,
            retry_backoff_ms=RETRY_BACKOFF_MS,
        )
        writer = TelemetryWriter(producer, self.plant, record_samples=self.settings.batch_samples)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await ensure_topics(self.bootstrap, self.plant.kafka, self._clients, roles=TOPICS)
                await writer.start()
        except TopicLayoutError:
            await self._stop_quietly(producer)
            raise
        except (KafkaError, OSError, TimeoutError) as error:
            self._down_since = self._down_since or time.monotonic()
            self._connect_failures += 1
            log.warning("Kafka at %s: cannot connect yet (%r)", self.bootstrap, error)
            await self._stop_quietly(producer)
            return False
        if self._stopping:
            await self._stop_quietly(producer)
            return False
        self._connect_failures = 0
        self._writer = writer
        self._partitions = writer.partitions
        log.info(
            "producing to %s (%d partitions) on %s", self.topic, self._partitions, self.bootstrap
        )
        return True

    async def _drop_producer(self, why: str | None) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if why is not None:
            # Fail what it still holds, so that each record's fate is known.
            await self._clients.fail_pending(writer.producer)
        await self._stop_quietly(writer.producer)
        await asyncio.sleep(0)  # let the failed futures' callbacks mark their chunks

    async def _stop_quietly(self, producer: Producer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), CONNECT_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as error:
            log.warning("Kafka producer did not stop cleanly: %r", error)

    def _set_down(self, now: float) -> None:
        if not self._up:
            return
        self._up = False
        self._down_since = now
        log.warning(
            "Kafka lost (no acknowledgement for %.0f s); waiting: %d samples in memory, %d "
            "in the spool (%d bytes)",
            LOST_AFTER_S,
            self.buffered_samples,
            self.spooled_samples,
            self.spool_bytes,
        )
        self._gauges()

    def _set_up(self) -> None:
        if self._up:
            return
        self._up = True
        if self._down_since is not None:
            log.info(
                "Kafka back after %.1f s; waiting: %d samples in memory, %d in the spool (%d "
                "bytes)",
                time.monotonic() - self._down_since,
                self.buffered_samples,
                self.spooled_samples,
                self.spool_bytes,
            )
            self._down_since = None
        self._gauges()

    def _gauges(self) -> None:
        metrics = self.metrics
        metrics.buffer_samples.set(self.buffered_samples)
        metrics.spool_bytes.set(self.spool_bytes)
        metrics.backpressure.set(1 if self._waiters else 0)
        metrics.kafka_up.set(1 if self._up else 0)
