"""SpooledSink against real brokers: rows, partitions and order on the telemetry topic, dead
letters on the DLQ, and no loss through a broker outage, a restart with a spool on disk and
a full spool.

Every sample's `ts` is its put number, so "same rows, each once, in put order per
partition" is a check on one column.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from linepulse.bus.partitions import machine_homes
from linepulse.config import PlantConfig, parse_config
from linepulse.sources import IngestSettings
from linepulse.wire import ARROW, content_type, decode_records
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import DeadLetter
from services.ingest.spooled_sink import KEEP_WAIT_S, SpooledSink
from tests.integration.conftest import KafkaBroker
from tests.telemetry_samples import numbered_samples as samples

pytestmark = pytest.mark.integration

PARTITIONS = 3
LINES = 4
MACHINES_PER_LINE = 3
GHOST = "ghost-1"  # not in the plant: partition 0
WAIT_S = 180.0  # generous: the machine is shared


def make_plant(prefix: str) -> PlantConfig:
    return parse_config(
        {
            "site": "sink-test",
            "lines": [
                {"id": f"line-{n}", "machines": [{"id": f"m{n}-{j}"} for j in range(3)]}
                for n in range(LINES)
            ],
            "kafka": {
                "telemetry": {"name": f"{prefix}-telemetry", "partitions": PARTITIONS},
                "dlq": {"name": f"{prefix}-dlq", "partitions": 1},
                "kpi": {"name": f"{prefix}-kpi"},
                "status": {"name": f"{prefix}-status"},
            },
        }
    )


def machines(plant: PlantConfig) -> list[str]:
    return [m.id for line in plant.lines for m in line.machines]


def make_settings(tmp_path: Path, **overrides: Any) -> IngestSettings:
    base: dict[str, Any] = {"spool_dir": tmp_path / "spool", "batch_samples": 500}
    return IngestSettings(**{**base, **overrides})


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, Any]]:
    """Every record of `topic` up to its end offsets now, as (partition, record), in offset
    order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[int, Any]] = []
        async with asyncio.timeout(WAIT_S):
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    out.extend((tp.partition, r) for r in records if r.offset < ends[tp])
        return out
    finally:
        await consumer.stop()


async def telemetry(bootstrap: str, plant: PlantConfig) -> list[tuple[int, pl.DataFrame]]:
    """(partition, decoded rows) per record, checking each record's header and key."""
    out = []
    for partition, record in await read_topic(bootstrap, plant.kafka.telemetry.name, PARTITIONS):
        assert content_type(record.headers) == ARROW
        decoded = decode_records([(record.value, record.headers, record.offset)])
        assert decoded.rejected == []
        rows = decoded.events
        assert record.key == rows.item(0, "machine").encode()
        out.append((partition, rows))
    return out


def check_delivery(
    plant: PlantConfig, records: list[tuple[int, pl.DataFrame]], expected: int
) -> dict[str, int]:
    """Every sample 0..expected-1 arrived, on its home partition, first copies in put order
    per partition; returns counts of lost, duplicated (identical) samples."""
    homes = machine_homes(plant, PARTITIONS)
    seen: Counter[int] = Counter()
    order: dict[int, list[int]] = {}
    for partition, rows in records:
        for ts, machine, value in rows.select("ts", "machine", "value_num").iter_rows():
            assert partition == homes.get(machine, 0), (machine, partition)
            assert value == float(ts)  # the row is intact
            if ts not in seen:
                order.setdefault(partition, []).append(ts)
            seen[ts] += 1
    for partition, stamps in order.items():
        assert stamps == sorted(stamps), f"partition {partition} out of put order"
    lost = [ts for ts in range(expected) if ts not in seen]
    assert lost == [], f"{len(lost)} samples lost, first {lost[:10]}"
    assert set(seen) == set(range(expected))
    return {"duplicates": sum(n - 1 for n in seen.values())}


async def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def sample_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- the shared broker ---------------------------------------------------------------------


async def test_samples_arrive_on_their_home_partition_in_put_order(
    kafka: str, tmp_path: Path
) -> None:
    plant = make_plant(f"sink-{uuid.uuid4().hex[:8]}")
    names = [*machines(plant), GHOST]
    registry = CollectorRegistry()
    sink = SpooledSink(plant, kafka, make_settings(tmp_path), IngestMetrics.create(registry))
    await sink.start()
    total = 0
    for size in (1, 7, 499, 500, 501, 2_000, 3_333):
        await sink.put(samples(total, size, names))
        total += size
    await sink.close(timeout_s=WAIT_S)

    records = await telemetry(kafka, plant)
    assert check_delivery(plant, records, total) == {"duplicates": 0}
    assert max(rows.height for _, rows in records) <= 500  # settings.batch_samples
    assert {p for p, _ in records} == set(range(PARTITIONS))
    assert sink.sent_samples == total
    assert sample_value(registry, "linepulse_ingest_sent_total") == total
    assert sample_value(registry, "linepulse_ingest_kafka_up") == 1
    assert sample_value(registry, "linepulse_ingest_buffer_samples") == 0
    assert sample_value(registry, "linepulse_ingest_spool_bytes") == 0
    assert not (tmp_path / "spool").exists() or list((tmp_path / "spool").iterdir()) == []


async def test_dead_letters_arrive_with_reason_and_raw(kafka: str, tmp_path: Path) -> None:
    plant = make_plant(f"sink-{uuid.uuid4().hex[:8]}")
    registry = CollectorRegistry()
    sink = SpooledSink(plant, kafka, make_settings(tmp_path), IngestMetrics.create(registry))
    await sink.start()
    letters = [
        DeadLetter("mqtt-1:plant/l1/zz/state", "unknown machine 'zz'", b'{"value": 1}'),
        DeadLetter("opcua-1:ns=2;i=7", "temperature: value must be finite, got nan", "nan"),
        DeadLetter("mqtt-1:spBv1.0/g/DDATA/e/d", "bad Sparkplug payload", b"\xff\x00\x81"),
    ]
    await sink.dead_letter(letters[:2])
    await sink.put(samples(0, 10, machines(plant)))
    await sink.dead_letter(letters[2:])
    await sink.close(timeout_s=WAIT_S)

    got = await read_topic(kafka, plant.kafka.dlq.name, 1)
    values = [orjson.loads(record.value) for _, record in got]
    assert [v["reason"] for v in values] == [letter.reason for letter in letters]
    assert [record.key for _, record in got] == [letter.source.encode() for letter in letters]
    assert values[0]["raw"] == '{"value": 1}'
    assert values[1]["raw"] == "nan"
    assert values[2]["raw_base64"] == "/wCB"
    assert values[2]["raw_bytes"] == 3
    assert sink.sent_letters == 3
    rejected = "linepulse_ingest_rejected_total"
    assert sample_value(registry, rejected, source="mqtt-1", reason="unknown machine") == 1
    assert sample_value(registry, rejected, source="opcua-1", reason="temperature") == 1
    assert sample_value(registry, rejected, source="mqtt-1", reason="bad Sparkplug payload") == 1
    check_delivery(plant, await telemetry(kafka, plant), 10)


# -- brokers of their own --------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    own = KafkaBroker(tmp_path / "kafka")
    own.start()
    try:
        yield own
    finally:
        own.stop()


async def test_a_broker_outage_loses_nothing_and_keeps_order(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    plant = make_plant("outage")
    names = [*machines(plant), GHOST]
    registry = CollectorRegistry()
    settings = make_settings(tmp_path, memory_samples=5_000, batch_samples=1_000, linger_ms=50)
    sink = SpooledSink(plant, broker.bootstrap, settings, IngestMetrics.create(registry))
    await sink.start()
    step, every_s = 100, 0.05  # about 2,000 samples/s
    total = 0
    seen = {"down": False, "spooled": 0}

    async def feed(seconds: float) -> None:
        nonlocal total
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await sink.put(samples(total, step, names))
            total += step
            seen["down"] |= not sink.kafka_up
            seen["spooled"] = max(seen["spooled"], sink.spool_bytes)
            await asyncio.sleep(every_s)

    await feed(4)
    await asyncio.to_thread(broker.stop)
    await feed(10)  # ~20,000 samples while away: memory holds 5,000, the rest spills
    await wait_for(lambda: not sink.kafka_up, "the sink to notice the broker is away")
    assert sink.spooled_samples > 0
    await asyncio.gather(asyncio.to_thread(broker.start), feed(6))
    await feed(4)
    await sink.close(timeout_s=WAIT_S)

    assert seen["down"]
    assert seen["spooled"] > 0
    records = await telemetry(broker.bootstrap, plant)
    # The idempotent producer keeps its pending sends through the outage and delivers each
    # once; only a replaced (stuck) producer could duplicate, and it did not happen here.
    assert check_delivery(plant, records, total) == {"duplicates": 0}
    assert sample_value(registry, "linepulse_ingest_sent_total") == total
    assert sample_value(registry, "linepulse_ingest_kafka_up") == 1
    assert sample_value(registry, "linepulse_ingest_spool_bytes") == 0
    assert list(settings.spool_dir.iterdir()) == []


async def test_kept_during_an_outage_means_in_the_spool_and_all_arrive_once(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    """What an MQTT QoS 1 acknowledgement waits for (`kept`) does not wait for Kafka's
    return: after KEEP_WAIT_S without an acknowledgement the sink writes memory, and what
    is left of the unit in flight, to the spool. Once Kafka is back every sample arrives
    once, in order, and the spool is empty."""
    plant = make_plant("kept")
    names = machines(plant)
    settings = make_settings(tmp_path, memory_samples=100_000, batch_samples=1_000, linger_ms=20)
    sink = SpooledSink(plant, broker.bootstrap, settings, IngestMetrics.create(CollectorRegistry()))
    await sink.start()
    total = 0
    await sink.put(samples(total, 500, names))
    total += 500
    await asyncio.wait_for(sink.kept(sink.position()), WAIT_S)  # Kafka up: acknowledged
    await asyncio.to_thread(broker.stop)
    waits = []
    for _ in range(5):
        await sink.put(samples(total, 700, names))
        total += 700
        started = time.monotonic()
        await asyncio.wait_for(sink.kept(sink.position()), WAIT_S)
        waits.append(time.monotonic() - started)
    assert sink.spooled_samples > 0  # kept by the spool, not by Kafka
    assert max(waits) < KEEP_WAIT_S + 2, waits
    await asyncio.to_thread(broker.start)
    await sink.put(samples(total, 300, names))
    total += 300
    await sink.close(timeout_s=WAIT_S)
    records = await telemetry(broker.bootstrap, plant)
    counts = check_delivery(plant, records, total)
    assert counts["duplicates"] <= 700, counts  # at most the unit in flight, sent twice
    assert list(settings.spool_dir.iterdir()) == []


async def test_a_restart_sends_the_spool_left_by_a_close_during_an_outage(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    plant = make_plant("restart")
    names = [*machines(plant), GHOST]
    settings = make_settings(tmp_path, memory_samples=2_000, batch_samples=400)
    first = SpooledSink(
        plant, broker.bootstrap, settings, IngestMetrics.create(CollectorRegistry())
    )
    await first.start()
    await first.put(samples(0, 1_000, names))
    await wait_for(lambda: first.sent_samples == 1_000, "the first samples to be acknowledged")
    await asyncio.to_thread(broker.stop)
    for n in range(1_000, 10_000, 500):
        await first.put(samples(n, 500, names))
    await first.close(timeout_s=2)
    assert first.sent_samples == 1_000
    spooled = sorted(p.name for p in settings.spool_dir.iterdir())
    assert spooled, "a close during an outage must leave the rest on disk"

    await asyncio.to_thread(broker.start)
    second = SpooledSink(
        plant, broker.bootstrap, settings, IngestMetrics.create(CollectorRegistry())
    )
    await second.start()
    assert second.spooled_samples == 9_000
    await second.put(samples(10_000, 500, names))
    await second.close(timeout_s=WAIT_S)

    records = await telemetry(broker.bootstrap, plant)
    assert check_delivery(plant, records, 10_500) == {"duplicates": 0}
    assert list(settings.spool_dir.iterdir()) == []


async def test_a_full_spool_holds_put_until_the_broker_returns(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    broker.stop()  # away from the start: the sink starts without it
    plant = make_plant("full")
    names = [*machines(plant), GHOST]
    registry = CollectorRegistry()
    settings = make_settings(
        tmp_path, memory_samples=2_000, batch_samples=1_000, spool_max_bytes=1024 * 1024
    )
    sink = SpooledSink(plant, broker.bootstrap, settings, IngestMetrics.create(registry))
    await sink.start()
    assert not sink.kafka_up
    step = 1_000
    frames = 600  # far more than 1 MiB of spool
    fed = 0

    async def feed() -> None:
        nonlocal fed
        for n in range(frames):
            await sink.put(samples(n * step, step, names))
            fed += 1

    feeder = asyncio.create_task(feed())
    await wait_for(lambda: sink.backpressure or feeder.done(), "put to wait on the full spool")
    assert not feeder.done(), "put never waited: the spool limit did not hold"
    held_at = fed
    assert sink.spool_bytes >= settings.spool_max_bytes
    assert sample_value(registry, "linepulse_ingest_backpressure") == 1
    # Memory, plus the unit the sender took before the first spill (one record here).
    assert sink.buffered_samples <= settings.memory_samples + settings.batch_samples

    await asyncio.to_thread(broker.start)
    await asyncio.wait_for(feeder, WAIT_S)
    assert fed == frames > held_at
    assert sample_value(registry, "linepulse_ingest_backpressure") == 0
    assert sample_value(registry, "linepulse_ingest_backpressure_seconds_total") > 0
    await sink.close(timeout_s=WAIT_S)

    records = await telemetry(broker.bootstrap, plant)
    assert check_delivery(plant, records, frames * step) == {"duplicates": 0}
