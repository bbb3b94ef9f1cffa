"""The batch trace (services/kpi/trace.py) on a real Kafka broker: the worker's and the
materializer's stamps can be joined by offsets, as bench/trace.py joins them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from bench.trace import batch_of, read_trace
from linepulse.bus.topics import ensure_topics
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from services.kpi.trace import TRACE_ENV, TRACE_KEY_ENV, BatchTrace
from services.kpi.worker import KpiWorker
from tests.integration.test_kpi_worker import classic_on_kafka, produce_json

pytestmark = pytest.mark.integration

TRACED = "line-1/filler-1/shift/"


async def read_at(bootstrap: str, topic: str, partition: int, offset: int) -> Any:
    """The record at `offset` of `topic[partition]`, as JSON."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        async with asyncio.timeout(30):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                for message in batch.get(tp, []):
                    return message.key, orjson.loads(message.value)
    finally:
        await consumer.stop()


def test_tracing_is_off_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    assert BatchTrace.from_env("worker") is None


async def test_worker_and_materializer_stamps_join_by_offset(
    kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = tmp_path / "trace"
    monkeypatch.setenv(TRACE_ENV, str(traces))
    monkeypatch.setenv(TRACE_KEY_ENV, TRACED)
    config, _, events = classic_on_kafka(tmp_path)
    await ensure_topics(kafka, config.kafka)
    await produce_json(kafka, config.kafka.telemetry.name, events)
    metrics = KpiMetrics.create(CollectorRegistry())
    worker = KpiWorker(
        Core.from_config(config), config.kafka, kafka, DirectoryStore(tmp_path), metrics
    )
    store = KpiStore(":memory:", config)
    materializer = Materializer(config.kafka, kafka, store, metrics)
    stop = asyncio.Event()

    def final_record() -> dict[str, Any] | None:
        """The worker's trace line of the shift's final record, once it was acknowledged."""
        for line in read_trace(traces, "worker"):
            if line["kind"] == "record" and line["record"]["final"]:
                return line
        return None

    def materialized(partition: int, offset: int) -> dict[str, Any] | None:
        where = f"{config.kafka.kpi.name}[{partition}]"
        return batch_of(read_trace(traces, "materializer"), where, offset)

    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(materializer.run(stop))]
    try:
        async with asyncio.timeout(90):
            while (record_line := final_record()) is None:
                await asyncio.sleep(0.05)
            at = record_line["partition"], record_line["offset"]
            while (mat := materialized(*at)) is None:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        store.close()

    # The offset the trace names holds the traced record.
    key, value = await read_at(
        kafka, config.kafka.kpi.name, record_line["partition"], record_line["offset"]
    )
    assert key.decode().startswith(TRACED)
    assert value == record_line["record"]
    assert record_line["appended"] <= record_line["sent"] <= record_line["acked"]
    # The worker's batches: each partition's offsets read once, in order, from the first;
    # stages stamped in order.
    batches = [b for b in read_trace(traces, "worker") if b["kind"] == "batch"]
    spans: dict[str, list[tuple[int, int]]] = {}
    for batch in batches:
        for where, part in batch["parts"].items():
            assert batch["fetched"] <= part["decoded"] <= batch["stepped"] <= part["built"]
            assert part["ts_min"] <= part["ts_max"]
            assert part["last"] - part["first"] + 1 == part["records"]
            spans.setdefault(where, []).append((part["first"], part["last"]))
    for read in spans.values():
        assert [first for first, _ in read] == [0] + [last + 1 for _, last in read[:-1]]
    assert sum(last + 1 for *_, (_, last) in spans.values()) >= len(events)
    # The materializer batch that read that offset: after the record was sent; its
    # stages in order.
    assert record_line["sent"] <= mat["fetched"] <= mat["decoded"] <= mat["upserted"]
