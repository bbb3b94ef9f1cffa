"""The streaming KPI worker's consume loop: telemetry from Kafka through the core, KPI
records back out.

One core state per telemetry partition, so a partition's state moves with it on a
rebalance. The loop: poll a micro-batch, decode it, forward events that belong to another
line's home partition, step each partition's core and its machine statuses, hand the
results to the publisher (services/kpi/publisher.py), and every `checkpoint_interval_s`
save each partition's state with the offset it covers, then commit. This module holds the
loop, the partitions it owns and their checkpoints; what is sent, and when, is the
publisher's; the status step is pure (services/kpi/machine_status.py).

Exactly-once effect: a worker that takes a partition over (after a crash, a rebalance or a
restart) loads the checkpoint and seeks to its offset, so every event is applied to the
state exactly once. Records published after the last checkpoint are published again with
the same keys (the `kpi` topic is compacted), and repeated samples are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from linepulse.bus import AIOKAFKA, Consumer, KafkaClients
from linepulse.bus.partitions import HomePartitions
from linepulse.bus.polling import poll_fresh
from linepulse.bus.topics import KPI_ROLES, check_topics
from linepulse.config import KafkaSettings, WindowKind
from linepulse.events import EARLIEST_MS, Decoded, empty_events, reason_kind
from linepulse.spc_stream import SpcStream, follow, spc_record
from linepulse.wire import decode_records
from services.kpi import machine_status
from services.kpi.checkpoint import CheckpointError, DirectoryStore, dump_state, load_state
from services.kpi.core.engine import Core, CoreState, StepOutput, initial_state, step
from services.kpi.loop_clock import LoopClock
from services.kpi.machine_status import MachineStatus
from services.kpi.metrics import KpiMetrics
from services.kpi.publisher import KpiPublisher, WorkerStats
from services.kpi.trace import BatchTrace

log = logging.getLogger(__name__)

MAX_BATCH_RECORDS: Final = 50_000
# The longest a poll waits for telemetry (ms); less when open-window records fall due
# sooner (the publisher's deadline holds with no telemetry coming in).
MAX_POLL_WAIT_MS: Final = 200
# Events from a clock a day ahead of the worker's, or from before 2000 (a PLC reset to
# 1970), go to the DLQ: see linepulse.events.EARLIEST_MS.
MAX_AHEAD_MS: Final = 86_400_000
# The stop's budget, within an orchestrator's grace period (compose: 45 s), also when the
# broker is gone first (podman-compose's `down` stops Kafka before its clients): the final
# checkpoint (its records acknowledged first), then leaving the group and closing the
# producer. A step out of time is logged and abandoned; the last saved checkpoint stands.
CHECKPOINT_AT_STOP_S: Final = 20.0
SHUTDOWN_STEP_S: Final = 5.0
# A partition that has had no telemetry for this long builds the open records its last
# steps left out (`KpiWorker._build_owed`); while telemetry flows, its steps do.
OWED_AFTER_QUIET_S: Final = 0.5


async def _bounded(step: Awaitable[None], what: str) -> None:
    """A shutdown step that cannot hang the exit: logged and abandoned after a while."""
    try:
        async with asyncio.timeout(SHUTDOWN_STEP_S):
            await step
    except TimeoutError:
        log.error("%s took over %.0f s; exiting without it", what, SHUTDOWN_STEP_S)


@dataclass
class Partition:
    """What the worker holds for one telemetry partition it owns."""

    state: CoreState
    offset: int  # the next offset to read; the checkpoint covers everything before it
    statuses: dict[str, MachineStatus] = field(default_factory=dict)
    # The control charts (`spc:` with fixed limits) of its lines' machines, by name.
    charts: dict[str, SpcStream] = field(default_factory=dict)
    dirty: bool = False
    # Window kinds whose open records a step of it left out since they were last built:
    # built by a step without events once due, if no telemetry brings one sooner.
    owed: frozenset[WindowKind] = frozenset()
    stepped_at: float = 0.0  # monotonic s of its last step with telemetry


class KpiWorker:
    """One member of the KPI worker group: `run` consumes until stopped; `adopt` and
    `release` are its rebalance callbacks (a partition's checkpoint in, then out)."""

    def __init__(
        self,
        core: Core,
        kafka: KafkaSettings,
        bootstrap: str,
        store: DirectoryStore,
        metrics: KpiMetrics,
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
        # Charts followed live: those with fixed limits (the others are studies).
        self._charts = [chart for chart in core.plant.spc if chart.limits is not None]
        self._consumer: Consumer | None = None
        self._behind: asyncio.Task[None] | None = None  # the checkpoint behind the loop
        self._publisher: KpiPublisher | None = None
        self._last_checkpoint = time.monotonic()
        self._trace = BatchTrace.from_env("worker")  # None unless LINEPULSE_TRACE is set

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; then finish the batch, checkpoint, commit, leave.

        Starts only on topics laid out as configured (`TopicLayoutError` otherwise): the
        line homes follow the telemetry topic's partition count, and records are only
        restated in place on a compacted kpi topic. It creates none: its service does."""
        layout = await check_topics(
            self.bootstrap, self.kafka, self.clients, roles=KPI_ROLES, service="the KPI worker"
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
        if self._trace is not None:
            producer = self._trace.producer(producer)
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
            self._consumer = consumer
            kpi_partitions = len(await producer.partitions_for(self.kafka.kpi.name))
            self._publisher = KpiPublisher(
                producer, self.kafka, kpi_partitions, self.metrics, self.stats
            )
            try:
                self._homes = HomePartitions(self.core.plant, layout["telemetry"])
                consumer.subscribe([self.kafka.telemetry.name], listener=_Rebalance(self))
                clock = LoopClock()
                while not stop.is_set():
                    with clock.phase("poll"):
                        batch = await poll_fresh(
                            consumer, self._poll_timeout_ms(), MAX_BATCH_RECORDS
                        )
                    if batch:
                        with clock.phase("process"):
                            await self._process(batch)
                    with clock.phase("publish"):
                        await self._build_owed()
                        await self._publisher.publish_due_open()
                    if time.monotonic() - self._last_checkpoint >= self.kafka.checkpoint_interval_s:
                        with clock.phase("checkpoint"):
                            self._checkpoint_behind()
                    clock.tick(sum(len(m) for m in batch.values()))
                log.info("stopping: checkpointing %d partitions", len(self.parts))
                try:
                    async with asyncio.timeout(CHECKPOINT_AT_STOP_S):
                        await self._publisher.publish_due_open(force=True)
                        await self._checkpoint(list(self.parts))
                    log.info("stopping: checkpoints saved; leaving the group")
                except TimeoutError:
                    log.error(
                        "stopping: Kafka did not acknowledge the last records within %.0f s; "
                        "exiting without the final checkpoint (the last one stands, and its "
                        "partitions are read again from there)",
                        CHECKPOINT_AT_STOP_S,
                    )
            finally:
                await self._drop_checkpoint_behind()
                await _bounded(consumer.stop(), "leaving the consumer group")
        finally:
            await _bounded(producer.stop(), "flushing and closing the producer")
            self._publisher = None
            self._consumer = None
            log.info("stopped")

    def _poll_timeout_ms(self) -> int:
        """How long the next poll may wait: until the publisher's next open-window records
        are due, or the next kind a step left out, at most MAX_POLL_WAIT_MS (rounded up,
        so it does not wake just early)."""
        publisher = self._publisher
        if publisher is None:
            return MAX_POLL_WAIT_MS
        waits = [publisher.open_due_in()]
        now = time.monotonic()
        for part in self.parts.values():  # what a quiet partition owes (`_build_owed`)
            due = publisher.due_in(part.owed)
            if due is not None:
                waits.append(max(due, part.stepped_at + OWED_AFTER_QUIET_S - now))
        known = [wait for wait in waits if wait is not None]
        if not known:
            return MAX_POLL_WAIT_MS
        return min(MAX_POLL_WAIT_MS, math.ceil(min(known) * 1000))

    async def _build_owed(self) -> None:
        """The open records of the kinds steps left out and now due, for the partitions
        that owe them and have had no telemetry for `OWED_AFTER_QUIET_S`, by a step
        without events: after the last telemetry of a while, the latest figures of every
        kind still reach the topic within its cadence (and that pause). A partition with
        telemetry owes nothing for long: its next step asks for every kind then due."""
        publisher = self._publisher
        assert publisher is not None  # noqa: S101 - only called while running
        quiet = time.monotonic() - OWED_AFTER_QUIET_S
        owing = [part for part in self.parts.values() if part.owed and part.stepped_at <= quiet]
        if not owing:
            return
        due = publisher.kinds_due(frozenset().union(*(part.owed for part in owing)))
        work = [(part, part.owed & due) for part in owing if part.owed & due]
        if not work:
            return
        none = empty_events()
        outputs = await asyncio.gather(
            *(
                asyncio.to_thread(step, self.core, part.state, none, open_records=kinds)
                for part, kinds in work
            )
        )
        for (part, kinds), (state, output) in zip(work, outputs, strict=True):
            part.state = state
            part.dirty = True
            part.owed -= kinds
            await publisher.records(output.records)

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
            charts = self._charts_of(tp.partition)
            if data is not None:
                try:
                    state, offset, extra = load_state(self.core, data)
                    statuses = {
                        m: MachineStatus(**fields)
                        for m, fields in extra.get("statuses", {}).items()
                    }
                    for name, saved in extra.get("spc", {}).items():
                        if name in charts:  # (a chart since removed from the config is not)
                            charts[name].restore(saved)
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
            self.parts[tp.partition] = Partition(state, offset, statuses, charts)
            log.info("partition %d: resuming at offset %d", tp.partition, offset)

    def _charts_of(self, partition: int) -> dict[str, SpcStream]:
        """New live charts of the machines whose line's home is `partition`."""
        homes = self._homes
        lines = None if homes is None else homes.lines_of(partition)
        return {
            chart.name: SpcStream(chart, self.core.lateness_ms)
            for chart in self._charts
            if lines is None or self._lines[chart.machine] in lines
        }

    async def release(self, revoked: Iterable[TopicPartition]) -> None:
        numbers = [tp.partition for tp in revoked if tp.partition in self.parts]
        if self._publisher is not None:
            await self._publisher.publish_due_open(force=True)
        await self._checkpoint(numbers)
        for number in numbers:
            self.parts.pop(number, None)

    # -- the loop body ------------------------------------------------------------------

    async def _process(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        publisher = self._publisher
        assert publisher is not None  # noqa: S101 - only called while running
        started = time.perf_counter()
        stamps = None if self._trace is None else self._trace.batch()
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
            publisher.dead_letters(decoded, tp.topic)
            local, forwards = self._split_home(decoded.events, tp.partition)
            for home, events in forwards.items():
                await publisher.forward(tp.topic, home, events)
            work.append((tp, part, decoded, local, messages[-1].offset + 1))
            if stamps is not None:
                stamps.records(str(tp.partition), messages)
                stamps.mark("decoded", str(tp.partition))
        # Partitions have independent states and Polars releases the GIL while it works:
        # their steps run side by side in threads. Building the records of open windows is
        # most of a step's cost, so a step asks only for the kinds the publisher will send
        # after it (1m and 15m every 0.2 s, shift and day every 5 s by default).
        kinds = publisher.kinds_due(self.core.windows)
        outputs = await asyncio.gather(
            *(
                asyncio.to_thread(step, self.core, p.state, local, open_records=kinds)
                for _, p, _, local, _ in work
            )
        )
        if stamps is not None:
            stamps.mark("stepped")
        left_out = frozenset(self.core.windows) - kinds
        for (tp, part, decoded, local, offset), (state, output) in zip(work, outputs, strict=True):
            part.state = state
            part.offset = offset
            part.dirty = True
            part.owed = part.owed - kinds | left_out
            part.stepped_at = time.monotonic()
            where = f"{tp.topic}[{tp.partition}]"
            publisher.dead_letters_core(output.rejected, tp.topic, where)
            publisher.dead_letters_core(
                output.jumps.select("ts", "machine", "signal", "reason"), tp.topic, where
            )
            await publisher.records(output.records)
            if stamps is not None:
                stamps.mark("built", str(tp.partition))
            part.statuses, changes = machine_status.step(
                self._lines, part.statuses, local, output.states
            )
            await publisher.statuses(changes)
            if part.charts:
                await publisher.spc_points(self._chart(part, local))
            self.stats.events += decoded.events.height + len(decoded.rejected)
            self._observe(decoded, output, tp.partition)
        publisher.reap()
        if stamps is not None:
            stamps.write()
        self.stats.batches += 1
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _chart(self, part: Partition, events: pl.DataFrame) -> list[dict[str, Any]]:
        """The subgroups the partition's charts complete with `events`, as `spc` records."""
        records = []
        for name, points in follow(part.charts, events).items():
            stream = part.charts[name]
            line = self._lines[stream.chart.machine]
            records += [spc_record(stream, point, line) for point in points]
        return records

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

    def _observe(self, decoded: Decoded, output: StepOutput, partition: int) -> None:
        """What a batch read, by kind: per batch, never per event (a labelled inc costs
        about a microsecond). What it sent the publisher counts."""
        metrics = self.metrics
        metrics.events_in.labels(source="kafka").inc(decoded.events.height + len(decoded.rejected))
        kinds: dict[str, int] = {}
        for reason in [r for _, r, _ in decoded.rejected] + output.rejected["reason"].to_list():
            kind = reason_kind(reason)
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            metrics.events_rejected.labels(reason=kind).inc(count)
        if output.late:
            metrics.events_late.inc(output.late)
        if output.too_late:
            metrics.events_too_late.inc(output.too_late)
        if output.jumps.height:
            for machine, jumps in output.jumps.group_by("machine").len().iter_rows():
                metrics.counter_jumps.labels(machine=machine).inc(jumps)
        consumer = self._consumer
        part = self.parts.get(partition)
        if consumer is not None and part is not None:
            tp = TopicPartition(self.kafka.telemetry.name, partition)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.consumer_lag.labels(partition=str(partition)).set(highwater - part.offset)

    # -- checkpoints --------------------------------------------------------------------

    def _checkpoint_behind(self) -> None:
        """Checkpoint every partition now, in a task behind the loop: the states are
        immutable, so the loop steps on while the snapshot's records are acknowledged
        and its states written (at a checkpoint a second, the loop used to stand still
        for a fifth of its time). Raises the error of the previous one if it failed; does
        nothing while it still runs."""
        running = self._behind
        if running is not None:
            if not running.done():
                return
            self._behind = None
            running.result()
        self._last_checkpoint = time.monotonic()
        snapshot = self._snapshot(list(self.parts))
        self._behind = asyncio.create_task(self._save_snapshot(snapshot), name="kpi-checkpoint")

    async def _checkpoint(self, numbers: list[int]) -> None:
        """Checkpoint `numbers` and return when saved and committed (on a stop, or before
        partitions are revoked), after the checkpoint behind the loop, if one runs."""
        running, self._behind = self._behind, None
        if running is not None:
            await running
        self._last_checkpoint = time.monotonic()
        await self._save_snapshot(self._snapshot(numbers))

    async def _drop_checkpoint_behind(self) -> None:
        """On leaving by an error: the checkpoint behind the loop is abandoned (the last
        saved one stands, and its partitions are read again from there)."""
        running, self._behind = self._behind, None
        if running is not None and not running.done():
            running.cancel()
        if running is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running

    def _snapshot(self, numbers: list[int]) -> list[tuple[int, CoreState, int, dict[str, Any]]]:
        """(partition, state, offset, extra) of the dirty ones among `numbers`, as they
        are now (extra: machine statuses and live charts); a partition the loop steps on
        afterwards is dirty again."""
        snapshot = []
        for number in numbers:
            part = self.parts.get(number)
            if part is None or not part.dirty:
                continue
            extra = {
                "statuses": {m: dict(vars(status)) for m, status in part.statuses.items()},
                "spc": {name: stream.snapshot() for name, stream in part.charts.items()},
            }
            snapshot.append((number, part.state, part.offset, extra))
            part.dirty = False
        return snapshot

    async def _save_snapshot(
        self, snapshot: list[tuple[int, CoreState, int, dict[str, Any]]]
    ) -> None:
        """Wait until every record sent so far is acknowledged (the snapshot's records among
        them: records land before the state that produced them is saved), write each
        state off the event loop, then commit the offsets they cover."""
        consumer = self._consumer
        publisher = self._publisher
        if consumer is None or publisher is None or not snapshot:
            return
        await publisher.settle()
        started = time.perf_counter()
        offsets = {}
        for number, state, offset, extra in snapshot:
            await asyncio.to_thread(self._save, self._checkpoint_name(number), state, offset, extra)
            offsets[TopicPartition(self.kafka.telemetry.name, number)] = offset
            self.stats.checkpoints += 1
        try:
            await consumer.commit(offsets)
        except KafkaError as error:  # a commit lost in a rebalance is harmless
            log.warning("offset commit failed (%s); the checkpoints hold the offsets", error)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _save(self, name: str, state: CoreState, offset: int, extra: dict[str, Any]) -> None:
        self.store.save(name, dump_state(state, offset, extra))

    def _checkpoint_name(self, partition: int) -> str:
        return f"{self.kafka.group}.{self.kafka.telemetry.name}.{partition}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: KpiWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.adopt(assigned)
