"""Values keep their type through a real Kafka (issue 14, item 3): from an ingester's
`SampleBatch`, through the disk spool left by an earlier run and the Kafka sink's Arrow
records, and as JSON and msgpack records another producer writes, to what the KPI worker
decodes. Text stays text ("0042"), integers exact (2**53 + 1, 2**63 - 1), floats floats.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
from linepulse.events import to_json_events
from linepulse.sources import IngestSettings
from linepulse.wire import MSGPACK, decode_records, encode_msgpack
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import SampleBatch
from services.ingest.spool import Kind, Spool, encode_samples
from services.ingest.spooled_sink import SpooledSink

pytestmark = pytest.mark.integration

WAIT_S = 120.0  # generous: the machine is shared
T0 = 1_793_599_200_000
VALUES: list[Any] = ["0042", "1e3", "NaN", 2**53 + 1, 2**63 - 1, 0.1, 3.0, True]


def make_plant(prefix: str) -> PlantConfig:
    return parse_config(
        {
            "site": "types",
            "lines": [{"id": "line-1", "machines": [{"id": "m1"}]}],
            "kafka": {
                "telemetry": {"name": f"{prefix}-telemetry", "partitions": 1},
                "dlq": {"name": f"{prefix}-dlq", "partitions": 1},
                "kpi": {"name": f"{prefix}-kpi"},
                "status": {"name": f"{prefix}-status"},
            },
        }
    )


def events(first_ts: int) -> list[dict[str, Any]]:
    return [
        {"ts": first_ts + i, "machine": "m1", "signal": "reading", "value": value}
        for i, value in enumerate(VALUES)
    ]


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    """The first `count` records of partition 0 of `topic`, waiting for them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        records: list[Any] = []
        async with asyncio.timeout(WAIT_S):
            while len(records) < count:
                fetched = await consumer.getmany(partition, timeout_ms=500)
                records.extend(fetched.get(partition, []))
        return records
    finally:
        await consumer.stop()


async def test_values_keep_their_type_through_the_spool_kafka_and_every_format(
    kafka: str, tmp_path: Path
) -> None:
    plant = make_plant(f"types-{uuid.uuid4().hex[:8]}")
    topic = plant.kafka.telemetry.name
    settings = IngestSettings(spool_dir=tmp_path / "spool", batch_samples=500)

    def ingested(first_ts: int) -> Any:
        batch = SampleBatch(["m1"], "test")
        for event in events(first_ts):
            assert batch.add(event["ts"], "m1", "reading", event["value"])
        frame, letters = batch.take()
        assert letters == []
        return frame

    # What an earlier run left in its spool when it closed during a broker outage.
    left = Spool(settings.spool_dir, settings.spool_max_bytes)
    spooled = ingested(T0)
    left.append(Kind.SAMPLES, 0, spooled.height, encode_samples(spooled))
    left.close()

    sink = SpooledSink(plant, kafka, settings, IngestMetrics.create(CollectorRegistry()))
    await sink.start()  # sends the spool first
    await sink.put(ingested(T0 + 100))
    await sink.close(timeout_s=WAIT_S)
    assert sink.sent_samples == 2 * len(VALUES)

    producer = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True)
    await producer.start()
    try:
        for event in events(T0 + 200):  # one JSON event a record
            await producer.send_and_wait(topic, orjson.dumps(event), partition=0)
        await producer.send_and_wait(
            topic,
            encode_msgpack(events(T0 + 300)),
            partition=0,
            headers=[("content-type", MSGPACK.encode())],
        )
    finally:
        await producer.stop()

    records = await read_all(kafka, topic, 2 + len(VALUES) + 1)
    decoded = decode_records((r.value, r.headers, r.offset) for r in records)
    assert decoded.rejected == []
    got = sorted(to_json_events(decoded.events), key=lambda e: e["ts"])
    assert [e["ts"] for e in got] == [
        first + i for first in (T0, T0 + 100, T0 + 200, T0 + 300) for i in range(len(VALUES))
    ]
    want = [(type(v), v) for v in VALUES] * 4
    assert [(type(e["value"]), e["value"]) for e in got] == want
