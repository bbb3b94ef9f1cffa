"""The streaming KPI worker: telemetry from Kafka through the core, KPI records back out.

One core state per telemetry partition, so a partition's state moves with it on a
rebalance. The loop: poll a micro-batch, decode it, forward events that belong to another
line's home partition, step each partition's core, publish records (finals at once, open
windows at most once per `open_interval_s` per key) and dead letters, flush, and every
`checkpoint_interval_s` save each partition's state with the offset it covers, then commit.

Exactly-once effect: a worker that takes a partition over (after a crash, a rebalance or a
restart) loads the checkpoint and seeks to its offset, so every event is applied to the
state exactly once. Records published after the last checkpoint are published again with
the same keys (the `kpi` topic is compacted), and repeated samples are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord

from linepulse.bus import AIOKAFKA, Consumer, KafkaClients, Producer
from linepulse.bus.topics import TOPIC_ROLES, check_topics
from linepulse.config import KafkaSettings
from linepulse.events import EARLIEST_MS, Decoded, reason_kind
from linepulse.wire import ARROW, decode_records, encode_arrow
from services.kpi.checkpoint import CheckpointError, DirectoryStore, dump_state, load_state
from services.kpi.core.engine import Core, CoreState, StepOutput, initial_state, step
from services.kpi.metrics import KpiMetrics
from services.kpi.topics import HomePartitions

log = logging.getLogger(__name__)

MAX_BATCH_RECORDS = 50_000
LAST_SEEN_STEP_MS = 5_000
# Events from a clock a day ahead of the worker's, or from before 2000 (a PLC reset to
# 1970), go to the DLQ: see linepulse.events.EARLIEST_MS.
MAX_AHEAD_MS = 86_400_000


SHUTDOWN_STEP_S = 30.0


async def _bounded(step: Any, what: str) -> None:
    """A shutdown step that cannot hang the exit: logged and abandoned after a while."""
    try:
        async with asyncio.timeout(SHUTDOWN_STEP_S):
            await step
    except TimeoutError:
        log.error("%s took over %.0f s; exiting without it", what, SHUTDOWN_STEP_S)


def record_key(record: dict[str, Any]) -> bytes:
    """`kpi` topic key: scope (machine, or `*` for the line), window kind and start."""
    scope = record["machine"] or "*"
    return f"{record['line']}/{scope}/{record['window']}/{record['window_start']}".encode()


class LoopClock:
    """Where the consume loop spends its time, logged every LOG_EVERY_S: what an operator
    looks at first when KPIs lag behind the events."""

    LOG_EVERY_S = 10.0

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.loops = self.records = 0
        self.started = time.monotonic()
        self._last = ""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - begin
            self.spent[name] = self.spent.get(name, 0.0) + took
            self._last = f"{self._last} {name} {took * 1000:.0f} ms"

    def tick(self, records: int) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("poll: %d records;%s", records, self._last)
        self._last = ""
        self.loops += 1
        self.records += records
        elapsed = time.monotonic() - self.started
        if elapsed >= self.LOG_EVERY_S:
            phases = ", ".join(f"{k} {v / elapsed:.0%}" for k, v in sorted(self.spent.items()))
            log.info(
                "loop: %d polls, %d records in %.0f s (%.2f s a poll); %s",
                self.loops,
                self.records,
                elapsed,
                elapsed / self.loops,
                phases,
            )
            self.__init__()  # type: ignore[misc]


@dataclass
class MachineStatus:
    """A machine's latest state, as the status topic carries it. Checkpoints hold these
    as `vars()`; a field added later needs a default (older checkpoints lack it)."""

    line: str
    state: str | None = None
    since: int | None = None  # epoch ms the current state began
    last_seen: int | None = None  # epoch ms of the latest event of any signal
    published_seen: int | None = None  # last_seen as last published
    reason: str | None = None  # the current state sample's reason code

    def as_dict(self, machine: str, last_seen: int | None = None) -> dict[str, Any]:
        return {
            "machine": machine,
            "line": self.line,
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "last_seen": self.last_seen if last_seen is None else last_seen,
        }


@dataclass
class Partition:
    """What the worker holds for one telemetry partition it owns."""

    state: CoreState
    offset: int  # the next offset to read; the checkpoint covers everything before it
    statuses: dict[str, MachineStatus] = field(default_factory=dict)
    dirty: bool = False


@dataclass
class WorkerStats:
    """Cumulative counts of this worker process, for logs and tests."""

    batches: int = 0
    events: int = 0
    forwarded: int = 0
    dead_letters: int = 0
    published: int = 0
    checkpoints: int = 0


class KpiWorker:
    def __init__(
        self,
        core: Core,
        kafka: KafkaSettings,
        bootstrap: str,
        store: DirectoryStore,
        metrics: KpiMetrics | None = None,
        clients: KafkaClients = AIOKAFKA,
    ) -> None:
        self.core = core
        self.clients = clients
        self.kafka = kafka
        self.bootstrap = bootstrap
        self.store = store
        self.metrics = metrics
        self.parts: dict[int, Partition] = {}
        self.stats = WorkerStats()
        self._homes: HomePartitions | None = None
        self._lines = {m: line.id for m, (line, _) in core.plant.machines().items()}
        self._open: dict[bytes, bytes] = {}  # latest unsent open-window record per key
        self._open_sent: dict[bytes, float] = {}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._last_checkpoint = time.monotonic()
        self._partitions: dict[bytes, int] = {}
        self._kpi_count = 1
        self._inflight: list[asyncio.Future[Any]] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; then finish the batch, checkpoint, commit, leave.

        Starts only on topics laid out as configured (`TopicLayoutError` otherwise): the
        line homes follow the telemetry topic's partition count, and records are only
        restated in place on a compacted kpi topic. It creates none: its service does."""
        layout = await check_topics(
            self.bootstrap, self.kafka, self.clients, roles=TOPIC_ROLES, service="the KPI worker"
        )
        producer = self.clients.producer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,  # forces acks=all
            linger_ms=5,
            # A second's open windows of a thousand machines are ~2 MB of records: in 16 KB
            # batches (the default) they take a hundred produce requests, one at a time.
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
            client_id="linepulse-kpi",
        )
        consumer = self.clients.consumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.kafka.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="linepulse-kpi",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            await consumer.start()
            self._producer, self._consumer = producer, consumer
            self._kpi_count = len(await producer.partitions_for(self.kafka.kpi.name))
            try:
                self._homes = HomePartitions(self.core.plant, layout["telemetry"])
                consumer.subscribe([self.kafka.telemetry.name], listener=_Rebalance(self))
                clock = LoopClock()
                while not stop.is_set():
                    with clock.phase("poll"):
                        batch = await consumer.getmany(
                            timeout_ms=200, max_records=MAX_BATCH_RECORDS
                        )
                    if batch:
                        with clock.phase("process"):
                            await self._process(batch)
                    with clock.phase("publish"):
                        await self._publish_due_open()
                    if time.monotonic() - self._last_checkpoint >= self.kafka.checkpoint_interval_s:
                        with clock.phase("checkpoint"):
                            await self._checkpoint(list(self.parts))
                    clock.tick(sum(len(m) for m in batch.values()))
                log.info("stopping: checkpointing %d partitions", len(self.parts))
                async with asyncio.timeout(SHUTDOWN_STEP_S):
                    await self._publish_due_open(force=True)
                    await self._checkpoint(list(self.parts))
                log.info("stopping: checkpoints saved; leaving the group")
            finally:
                await _bounded(consumer.stop(), "leaving the consumer group")
        finally:
            await _bounded(producer.stop(), "flushing and closing the producer")
            self._producer = self._consumer = None
            log.info("stopped")

    # -- partitions come and go ---------------------------------------------------------

    async def adopt(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101 - only called while running
        for tp in assigned:
            name = self._checkpoint_name(tp.partition)
            data = self.store.load(name)
            state: CoreState | None = None
            offset = 0
            statuses: dict[str, MachineStatus] = {}
            if data is not None:
                try:
                    state, offset, extra = load_state(self.core, data)
                    statuses = {
                        m: MachineStatus(**fields)
                        for m, fields in extra.get("statuses", {}).items()
                    }
                except CheckpointError as error:
                    log.error("partition %d: %s; starting from the beginning", tp.partition, error)
            if state is None:
                # A partition's core makes the records of the lines whose home it is,
                # every machine of them included, sending or not.
                homes = self._homes
                lines = None if homes is None else homes.lines_of(tp.partition)
                state, offset = initial_state(self.core, lines), 0
                # A plain seek: awaiting seek_to_beginning while the consumer is already
                # fetching lets some records through twice (aiokafka).
                consumer.seek(tp, 0)
            else:
                consumer.seek(tp, offset)
            self.parts[tp.partition] = Partition(state, offset, statuses)
            log.info("partition %d: resuming at offset %d", tp.partition, offset)

    async def release(self, revoked: Iterable[TopicPartition]) -> None:
        numbers = [tp.partition for tp in revoked if tp.partition in self.parts]
        await self._publish_due_open(force=True)
        await self._checkpoint(numbers)
        for number in numbers:
            self.parts.pop(number, None)

    # -- the loop body ------------------------------------------------------------------

    async def _process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        producer = self._producer
        assert producer is not None  # noqa: S101
        started = time.perf_counter()
        sends: list[asyncio.Future[Any]] = []
        work: list[tuple[TopicPartition, Partition, Decoded, pl.DataFrame, int]] = []
        for tp, messages in batch.items():
            part = self.parts.get(tp.partition)
            if part is None or not messages:
                continue
            now_ms = int(time.time() * 1000)
            decoded = decode_records(
                ((m.value, m.headers, m.offset) for m in messages),
                f"{tp.topic}[{tp.partition}]",
                accept=(EARLIEST_MS, now_ms + MAX_AHEAD_MS),
            )
            sends += self._dead_letters(decoded, tp)
            local, forwards = self._split_home(decoded.events, tp.partition)
            for home, events in forwards.items():
                sends.append(
                    await producer.send(
                        tp.topic,
                        value=encode_arrow(events),
                        key=events.item(0, "machine").encode(),
                        partition=home,
                        headers=[("content-type", ARROW.encode())],
                    )
                )
                self.stats.forwarded += events.height
            work.append((tp, part, decoded, local, messages[-1].offset + 1))
        # Partitions have independent states and Polars releases the GIL while it works:
        # their steps run side by side in threads. Every step asks for its open windows
        # (a small part of a step's cost); _publish_due_open throttles them per key.
        outputs = await asyncio.gather(
            *(asyncio.to_thread(step, self.core, p.state, local) for _, p, _, local, _ in work)
        )
        for (tp, part, decoded, local, offset), (state, output) in zip(work, outputs, strict=True):
            part.state = state
            part.offset = offset
            part.dirty = True
            sends += self._dead_letters_core(output.rejected, tp)
            sends += self._dead_letters_core(
                output.jumps.select("ts", "machine", "signal", "reason"), tp
            )
            sends += await self._records(output.records)
            sends += await self._status(part, local, output)
            self.stats.events += decoded.events.height + len(decoded.rejected)
            if self.metrics is not None:
                self._observe(decoded, output, tp.partition)
        self._track(sends)
        self.stats.batches += 1
        if self.metrics is not None:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _split_home(
        self, events: pl.DataFrame, partition: int
    ) -> tuple[pl.DataFrame, dict[int, pl.DataFrame]]:
        """Events of this partition's lines (and of unknown machines, for the core to
        reject), and the rest by the home partition they are forwarded to."""
        if events.is_empty() or self._homes is None:
            return events, {}
        groups = self._homes.split(events)
        stay = [g for g in (groups.pop(partition, None), groups.pop(None, None)) if g is not None]
        local = pl.concat(stay) if stay else events.clear()
        return local, {home: group for home, group in groups.items() if home is not None}

    async def _records(self, records: list[dict[str, Any]]) -> list[asyncio.Future[Any]]:
        """Finals go out now; open-window records wait for their key's turn."""
        finals = []
        for record in records:
            key = record_key(record)
            value = orjson.dumps(record)
            if record["final"]:
                self._open.pop(key, None)
                self._open_sent.pop(key, None)
                finals.append((key, value))
            else:
                self._open[key] = value
        self.stats.published += len(finals)
        return await self._send_kpi(finals)

    async def _publish_due_open(self, *, force: bool = False) -> None:
        if self._producer is None or not self._open:
            return
        now = time.monotonic()
        interval = self.kafka.open_interval_s
        due = [k for k in self._open if force or now - self._open_sent.get(k, 0.0) >= interval]
        items = []
        for key in due:
            items.append((key, self._open.pop(key)))
            self._open_sent[key] = now
        self.stats.published += len(items)
        if self.metrics is not None and items:
            self.metrics.records_published.labels(final="false").inc(len(items))
        self._track(await self._send_kpi(items))

    def _track(self, sends: list[asyncio.Future[Any]]) -> None:
        """Sends in flight: the loop does not wait for their acks (a round trip per batch
        would pace it); the next checkpoint does, and a failed send stops the worker."""
        pending = []
        for sent in self._inflight:
            if sent.done():
                sent.result()  # raises the send's error
            else:
                pending.append(sent)
        self._inflight = pending + sends

    async def _settle(self) -> None:
        """Every send acknowledged (or its error raised): before a checkpoint commits."""
        inflight, self._inflight = self._inflight, []
        if inflight:
            await asyncio.gather(*inflight)

    async def _send_kpi(self, items: list[tuple[bytes, bytes]]) -> list[asyncio.Future[Any]]:
        """(key, value) records onto the kpi topic, in batches per partition.

        A keyed record goes to Kafka's default partition for its key (murmur2, cached:
        open-window keys repeat every second). aiokafka's batch API skips most of its
        per-message cost, which matters at thousands of open windows a second.
        """
        producer = self._producer
        assert producer is not None  # noqa: S101
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in items:
            partition = self._partitions.get(key)
            if partition is None:
                if len(self._partitions) > 1_000_000:
                    self._partitions.clear()
                partition = (murmur2(key) & 0x7FFFFFFF) % self._kpi_count
                self._partitions[key] = partition
            by_partition.setdefault(partition, []).append((key, value))
        sends: list[asyncio.Future[Any]] = []
        topic = self.kafka.kpi.name
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    sends.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            sends.append(await producer.send_batch(batch, topic, partition=partition))
        return sends

    def _dead_letters(self, decoded: Decoded, tp: TopicPartition) -> list[asyncio.Future[Any]]:
        return [
            self._dead_letter({"where": where, "reason": reason, "raw": raw, "source": tp.topic})
            for where, reason, raw in decoded.rejected
        ]

    def _dead_letters_core(
        self, rejected: pl.DataFrame, tp: TopicPartition
    ) -> list[asyncio.Future[Any]]:
        return [
            self._dead_letter(
                {
                    "where": f"{tp.topic}[{tp.partition}]",
                    "reason": reason,
                    "event": {"ts": ts, "machine": machine, "signal": signal},
                    "source": tp.topic,
                }
            )
            for ts, machine, signal, reason in rejected.iter_rows()
        ]

    def _dead_letter(self, letter: dict[str, Any]) -> asyncio.Future[Any]:
        producer = self._producer
        assert producer is not None  # noqa: S101
        self.stats.dead_letters += 1
        sent: asyncio.Future[Any] = asyncio.ensure_future(
            producer.send_and_wait(self.kafka.dlq.name, value=orjson.dumps(letter))
        )
        return sent

    async def _status(
        self, part: Partition, events: pl.DataFrame, output: StepOutput
    ) -> list[asyncio.Future[Any]]:
        """Machine status (state, reason, since, last seen): one record per change of
        (state, reason) in the batch, in event-time order, so that every stop reaches the
        API's stop log; and the latest status when only `last_seen` moved on by a step.

        A change that is not the machine's latest in the batch goes out with `last_seen`
        at its own time; the latest one with the machine's `last_seen`.
        """
        producer = self._producer
        assert producer is not None  # noqa: S101
        if events.is_empty():
            return []
        seen_moved: set[str] = set()
        seen = events.group_by("machine").agg(pl.col("ts").max())
        lines = self._lines
        for machine, ts in seen.iter_rows():
            if machine not in lines:
                continue
            status = part.statuses.setdefault(machine, MachineStatus(lines[machine]))
            if status.last_seen is None or ts > status.last_seen:
                # "Last heard from" to the nearest few seconds is enough; a state change
                # below is published at once.
                status.last_seen = ts
                if status.published_seen is None or ts - status.published_seen >= LAST_SEEN_STEP_MS:
                    seen_moved.add(machine)
        changes: dict[str, list[dict[str, Any]]] = {}
        for machine, ts, state, reason in output.states.select(
            "machine", "ts", "state", "reason"
        ).iter_rows():
            status = part.statuses.setdefault(machine, MachineStatus(lines[machine]))
            if status.since is not None and ts < status.since:
                continue
            if (state, reason) != (status.state, status.reason):
                status.state, status.reason, status.since = state, reason, ts
                changes.setdefault(machine, []).append(status.as_dict(machine, last_seen=ts))
        out: list[tuple[int, str, dict[str, Any]]] = []
        for machine in seen_moved | changes.keys():
            status = part.statuses[machine]
            status.published_seen = status.last_seen
            records = changes.get(machine) or [status.as_dict(machine)]
            records[-1] = status.as_dict(machine)
            out += [(r["since"] or r["last_seen"] or 0, machine, r) for r in records]
        out.sort(key=lambda item: item[:2])
        topic = self.kafka.status.name
        return [
            await producer.send(topic, value=orjson.dumps(r), key=machine.encode())
            for _, machine, r in out
        ]

    def _observe(self, decoded: Decoded, output: StepOutput, partition: int) -> None:
        """Per batch, never per event: a labelled inc costs about a microsecond."""
        metrics = self.metrics
        assert metrics is not None  # noqa: S101 - called only with metrics
        metrics.events_in.labels(source="kafka").inc(decoded.events.height + len(decoded.rejected))
        kinds: dict[str, int] = {}
        for reason in [r for _, r, _ in decoded.rejected] + output.rejected["reason"].to_list():
            kind = reason_kind(reason)
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            metrics.events_rejected.labels(reason=kind).inc(count)
        if kinds:
            metrics.dlq.inc(sum(kinds.values()))
        if output.late:
            metrics.events_late.inc(output.late)
        if output.too_late:
            metrics.events_too_late.inc(output.too_late)
        if output.jumps.height:
            for machine, jumps in output.jumps.group_by("machine").len().iter_rows():
                metrics.counter_jumps.labels(machine=machine).inc(jumps)
            metrics.dlq.inc(output.jumps.height)
        finals = sum(1 for r in output.records if r["final"])
        if finals:
            metrics.records_published.labels(final="true").inc(finals)
        consumer = self._consumer
        part = self.parts.get(partition)
        if consumer is not None and part is not None:
            tp = TopicPartition(self.kafka.telemetry.name, partition)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.consumer_lag.labels(partition=str(partition)).set(highwater - part.offset)

    async def _checkpoint(self, numbers: list[int]) -> None:
        consumer = self._consumer
        producer = self._producer
        if consumer is None or producer is None:
            return
        await producer.flush()  # records land before the state that produced them is saved
        await self._settle()
        started = time.perf_counter()
        offsets = {}
        for number in numbers:
            part = self.parts.get(number)
            if part is None or not part.dirty:
                continue
            statuses = {m: dict(vars(status)) for m, status in part.statuses.items()}
            # The state is immutable: serialise and write it off the event loop.
            await asyncio.to_thread(
                self._save, self._checkpoint_name(number), part.state, part.offset, statuses
            )
            part.dirty = False
            offsets[TopicPartition(self.kafka.telemetry.name, number)] = part.offset
            self.stats.checkpoints += 1
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as error:  # a commit lost in a rebalance is harmless
                log.warning("offset commit failed (%s); the checkpoints hold the offsets", error)
        self._last_checkpoint = time.monotonic()
        if self.metrics is not None and offsets:
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _save(
        self, name: str, state: CoreState, offset: int, statuses: dict[str, dict[str, Any]]
    ) -> None:
        self.store.save(name, dump_state(state, offset, {"statuses": statuses}))

    def _checkpoint_name(self, partition: int) -> str:
        return f"{self.kafka.group}.{self.kafka.telemetry.name}.{partition}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: KpiWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.adopt(assigned)
