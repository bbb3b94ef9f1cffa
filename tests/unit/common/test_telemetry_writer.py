"""The one telemetry writer, on the in-process bus: Arrow records keyed by their first
machine on each line's home partition, `record_samples` at most, in event order; machines
not in the plant on partition 0 in order with that partition's own. And every telemetry
producer (the ingest sink, `linepulse produce`, the worker's forwarding) goes through it,
with producers made only by the bus's clients factory."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients, StoredRecord
from linepulse.bus.partitions import machine_homes
from linepulse.bus.telemetry_writer import TelemetryWriter
from linepulse.config import PlantConfig
from linepulse.wire import ARROW, content_type, decode_records
from services.kpi.metrics import KpiMetrics
from services.kpi.publisher import KpiPublisher, WorkerStats
from tests.telemetry_samples import four_line_plant
from tests.telemetry_samples import numbered_samples as samples

PARTITIONS = 3
GHOST = "ghost-1"  # not in the plant
ROOT = Path(__file__).resolve().parents[3]


def make_plant() -> PlantConfig:
    return four_line_plant("writer-test", PARTITIONS)


def bus(plant: PlantConfig) -> tuple[InProcessBroker, InProcessClients]:
    broker = InProcessBroker()
    broker.create_topic(plant.kafka.telemetry.name, PARTITIONS)
    return broker, InProcessClients(broker)


def topic_rows(broker: InProcessBroker, topic: str) -> dict[int, list[pl.DataFrame]]:
    """Decoded rows per record per partition, checking each record's header and key."""
    out: dict[int, list[pl.DataFrame]] = {}
    for partition in range(PARTITIONS):
        for record in broker.log(topic, partition):
            assert content_type(record.headers) == ARROW
            decoded = decode_records([(record.value, record.headers, record.offset)])
            assert decoded.rejected == []
            assert record.key == decoded.events.item(0, "machine").encode()
            out.setdefault(partition, []).append(decoded.events)
    return out


async def test_events_go_to_their_home_partition_in_order_in_bounded_records() -> None:
    plant = make_plant()
    broker, clients = bus(plant)
    names = [m.id for line in plant.lines for m in line.machines] + [GHOST]
    async with TelemetryWriter(clients.producer(), plant, record_samples=100) as writer:
        assert writer.partitions == PARTITIONS
        await writer.write(samples(0, 1_000, names))
        await writer.write(samples(1_000, 7, names))

    homes = machine_homes(plant, PARTITIONS)
    records = topic_rows(broker, plant.kafka.telemetry.name)
    seen = []
    for partition, frames in records.items():
        assert max(frame.height for frame in frames) <= 100
        rows = pl.concat(frames)
        assert {homes.get(m, 0) for m in rows["machine"]} == {partition}
        assert rows["ts"].to_list() == sorted(rows["ts"].to_list()), "out of event order"
        seen.extend(rows["ts"].to_list())
    assert sorted(seen) == list(range(1_007))
    # The ghost's rows share partition 0's records, in order, not records of their own.
    zero = records[0]
    assert any(GHOST in f["machine"].to_list() and f["machine"].n_unique() > 1 for f in zero)


async def test_the_workers_forwarding_writes_the_writers_records() -> None:
    plant = make_plant()
    broker, clients = bus(plant)
    line = plant.lines[0]
    events = samples(0, 10, [m.id for m in line.machines])
    async with TelemetryWriter(clients.producer(), plant, record_samples=100) as writer:
        await writer.write(events)
        home = writer.records(events)[0].partition
    producer = clients.producer()
    await producer.start()
    metrics = KpiMetrics.create(CollectorRegistry(), plant)
    publisher = KpiPublisher(producer, plant.kafka, 1, metrics, WorkerStats())
    await publisher.forward(plant.kafka.telemetry.name, home, events)
    await publisher.settle()
    await producer.stop()

    written, forwarded = broker.log(plant.kafka.telemetry.name, home)
    assert (forwarded.key, forwarded.headers) == (written.key, written.headers)
    assert decoded(forwarded).equals(decoded(written))
    assert decoded(forwarded).equals(events)


def decoded(record: StoredRecord) -> pl.DataFrame:
    """The record's rows (Arrow IPC bytes may differ in buffer layout for equal rows)."""
    return decode_records([(record.value, record.headers, record.offset)]).events


def test_producers_are_made_only_by_the_bus_clients_factory() -> None:
    """No module but linepulse/bus/clients.py builds aiokafka's producer itself."""
    builders = []
    for package in ("linepulse", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    if name == "AIOKafkaProducer":
                        builders.append(str(path.relative_to(ROOT)))
    assert sorted(set(builders)) == ["linepulse/bus/clients.py"]
