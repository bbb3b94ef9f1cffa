"""The ingest sink on the in-process bus (`linepulse demo`): the same sink as on Kafka,
its producer from the clients factory; samples on their home partitions in put order, dead
letters on the DLQ, the same metrics, and nothing left in the spool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.partitions import machine_homes
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig
from linepulse.sources import IngestSettings
from linepulse.wire import decode_records
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import DeadLetter
from services.ingest.spooled_sink import SpooledSink
from tests.telemetry_samples import four_line_plant
from tests.telemetry_samples import numbered_samples as samples

PARTITIONS = 3


def make_plant() -> PlantConfig:
    return four_line_plant("sink-test", PARTITIONS)


async def test_the_sink_delivers_on_the_in_process_bus(tmp_path: Path) -> None:
    plant = make_plant()
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    await ensure_topics("in-process", plant.kafka, clients)
    registry = CollectorRegistry()
    settings = IngestSettings(spool_dir=tmp_path / "spool", batch_samples=200)
    sink = SpooledSink(
        plant, "in-process", settings, IngestMetrics.create(registry), clients=clients
    )
    names = [m.id for line in plant.lines for m in line.machines]
    await sink.start()
    assert sink.kafka_up is False  # up once the first send is acknowledged
    total = 0
    for size in (1, 199, 200, 201, 1_500):
        await sink.put(samples(total, size, names))
        total += size
    letter = DeadLetter("mqtt-1:plant/l1/zz/state", "unknown machine 'zz'", b"{}")
    await sink.dead_letter([letter])
    await sink.close()

    homes = machine_homes(plant, PARTITIONS)
    stamps: list[int] = []
    for partition in range(PARTITIONS):
        records = broker.log(plant.kafka.telemetry.name, partition)
        assert records, f"partition {partition} got nothing"
        rows = decode_records([(r.value, r.headers, r.offset) for r in records]).events
        assert {homes[m] for m in rows["machine"]} == {partition}
        assert rows["ts"].to_list() == sorted(rows["ts"].to_list())
        heights = [decode_records([(r.value, r.headers, r.offset)]).events.height for r in records]
        assert max(heights) <= 200
        stamps.extend(rows["ts"].to_list())
    assert sorted(stamps) == list(range(total))
    (dead,) = broker.log(plant.kafka.dlq.name, 0)
    assert dead.key == letter.source.encode()
    assert orjson.loads(dead.value or b"")["reason"] == letter.reason
    assert sink.sent_samples == total
    assert registry.get_sample_value("linepulse_ingest_sent_total") == total
    assert registry.get_sample_value("linepulse_ingest_kafka_up") == 1
    assert registry.get_sample_value("linepulse_ingest_spool_bytes") == 0
    assert list(settings.spool_dir.iterdir()) == []


async def test_kept_returns_once_the_bus_acknowledged_what_was_put(tmp_path: Path) -> None:
    """`kept(position)` (what an MQTT QoS 1 acknowledgement waits for) holds while the
    samples are in memory, and returns once the bus acknowledged them; a later put's
    position is not kept by an earlier one's acknowledgement."""
    plant = make_plant()
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    await ensure_topics("in-process", plant.kafka, clients)
    settings = IngestSettings(spool_dir=tmp_path / "spool", batch_samples=10_000, linger_ms=50)
    sink = SpooledSink(
        plant, "in-process", settings, IngestMetrics.create(CollectorRegistry()), clients=clients
    )
    names = [m.id for line in plant.lines for m in line.machines]
    await sink.start()
    try:
        assert sink.position() == -1
        await sink.kept(-1)  # nothing put: nothing to wait for
        await sink.put(samples(0, 10, names))
        first = sink.position()
        assert sink.kept_through < first  # in memory, lingering
        await asyncio.wait_for(sink.kept(first), 5)
        assert sink.sent_samples == 10  # kept means sent and acknowledged
        await sink.put(samples(10, 10, names))
        assert sink.kept_through == first < sink.position()
        await asyncio.wait_for(sink.kept(sink.position()), 5)
        assert sink.sent_samples == 20
    finally:
        await sink.close()
