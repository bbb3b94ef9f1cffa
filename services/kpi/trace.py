"""A debug trace of where a batch's time goes between the telemetry topic and the API.

Off unless the environment variable `LINEPULSE_TRACE` names a directory. Then the KPI
worker and the materializer each append one JSON line per batch to
`{dir}/{role}-{pid}.jsonl`: the partitions and offsets it held, the Kafka timestamps of
its records (the producer's clock when it sent them) and a wall-clock stamp after each
stage. Wall clock (`time.time()`, seconds), not monotonic: the stamps of two processes on
one host are compared, and a benchmark joins them to what it produced (bench/trace.py).
`LINEPULSE_TRACE_KEY` (a `kpi` key prefix, e.g. `line-probe/probe-1/1m/`) also traces
each send of a matching record on its own: when it was appended to a batch, sent, and
acknowledged, at which offset, with the record. Off, the hooks cost one `is None` test a
batch, and the producer is the producer.

Files are opened per line: a handful of lines a poll, only while debugging, and nothing to
close when a service stops.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import orjson
from aiokafka.structs import ConsumerRecord, RecordMetadata

from linepulse.bus import Producer
from linepulse.bus.clients import Headers, RecordBatch

TRACE_ENV: Final = "LINEPULSE_TRACE"
TRACE_KEY_ENV: Final = "LINEPULSE_TRACE_KEY"

P = ParamSpec("P")
R = TypeVar("R")


class BatchTrace:
    """Where one process writes its trace lines; `None` from `from_env` when tracing is off."""

    def __init__(self, path: Path, key_prefix: bytes | None = None) -> None:
        self.path = path
        self.key_prefix = key_prefix

    @classmethod
    def from_env(cls, role: str) -> BatchTrace | None:
        """The trace of `role` ("worker", "materializer") if `LINEPULSE_TRACE` is set."""
        folder = os.environ.get(TRACE_ENV)
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        prefix = os.environ.get(TRACE_KEY_ENV)
        return cls(
            Path(folder) / f"{role}-{os.getpid()}.jsonl", prefix.encode() if prefix else None
        )

    def write(self, entry: dict[str, Any]) -> None:
        with self.path.open("ab") as out:
            out.write(orjson.dumps(entry) + b"\n")

    def batch(self) -> BatchStamps:
        """The stamps of a batch just fetched (the first stamp, `fetched`, is now)."""
        return BatchStamps(self)

    def producer(self, producer: Producer) -> Producer:
        """`producer`, its batch sends traced (when they were sent and acknowledged)."""
        return TracingProducer(producer, self)


class BatchStamps:
    """One batch's line: `mark` stamps a stage, `records` what a partition brought."""

    def __init__(self, trace: BatchTrace) -> None:
        self.trace = trace
        self.entry: dict[str, Any] = {"kind": "batch", "fetched": time.time()}
        self.parts: dict[str, dict[str, Any]] = {}

    def records(self, where: str, messages: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Offsets and producer timestamps (ms) of `messages`, read from `where`."""
        stamps = [m.timestamp for m in messages]
        self.parts[where] = {
            "first": messages[0].offset,
            "last": messages[-1].offset,
            "records": len(messages),
            "ts_min": min(stamps),
            "ts_max": max(stamps),
        }

    def mark(self, stage: str, where: str | None = None) -> None:
        """The wall time a stage ended: of the whole batch, or of one partition's part."""
        target = self.entry if where is None else self.parts.setdefault(where, {})
        target[stage] = time.time()

    def timed(self, stage: str, work: Callable[P, R]) -> Callable[P, R]:
        """`work`, stamping `stage` the moment it returns: in its thread, before the event
        loop resumes the caller (which may wait its turn while the result is already out)."""

        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            result = work(*args, **kwargs)
            self.mark(stage)
            return result

        return run

    def write(self) -> None:
        self.entry["parts"] = self.parts
        self.trace.write(self.entry)


class _TracingBatch:
    """A producer batch that remembers where the traced keys sit in it."""

    def __init__(self, inner: RecordBatch, prefix: bytes | None) -> None:
        self.inner = inner
        self.prefix = prefix
        self.traced: list[tuple[int, float, bytes]] = []  # relative offset, appended, value

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
    ) -> object | None:
        index = self.inner.record_count()
        # aiokafka's record builder takes a list only.
        done = self.inner.append(timestamp=timestamp, key=key, value=value, headers=list(headers))
        prefix = self.prefix
        if done is not None and prefix and key and value and key.startswith(prefix):
            self.traced.append((index, time.time(), value))
        return done

    def record_count(self) -> int:
        return self.inner.record_count()


class TracingProducer:
    """A `Producer` whose `send_batch` writes a `send` line per batch once it is
    acknowledged, and a `record` line per traced key in it."""

    def __init__(self, inner: Producer, trace: BatchTrace) -> None:
        self.inner = inner
        self.trace = trace

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        return await self.inner.send(topic, value, key, partition, timestamp_ms, headers)

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        return await self.inner.send_and_wait(topic, value, key, partition, timestamp_ms, headers)

    def create_batch(self) -> RecordBatch:
        return _TracingBatch(self.inner.create_batch(), self.trace.key_prefix)

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[RecordMetadata]:
        traced = batch if isinstance(batch, _TracingBatch) else None
        inner = batch if traced is None else traced.inner
        count = inner.record_count()
        future = await self.inner.send_batch(inner, topic, partition=partition)
        sent = time.time()

        def acked(done: asyncio.Future[RecordMetadata]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            now, base = time.time(), done.result().offset
            entry = {"topic": topic, "partition": partition, "sent": sent, "acked": now}
            self.trace.write({"kind": "send", **entry, "offset": base, "records": count})
            for index, appended, value in [] if traced is None else traced.traced:
                record = orjson.loads(value)
                line = {"kind": "record", **entry, "offset": base + index, "appended": appended}
                self.trace.write({**line, "record": record})

        future.add_done_callback(acked)
        return future

    async def flush(self) -> None:
        await self.inner.flush()

    async def partitions_for(self, topic: str) -> set[int]:
        return await self.inner.partitions_for(topic)
