"""Telemetry onto Kafka the way LinePulse's own producers write it.

Events are batched into Arrow IPC records (one record carries thousands of samples) on
their line's home partition, keyed by the first machine of the batch, with an idempotent
producer (acks=all), so a retried send never duplicates a record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from linepulse.bus.clients import AioKafkaClients
from linepulse.bus.partitions import HomePartitions
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig
from linepulse.event_files import read_batches
from linepulse.wire import ARROW, encode_arrow

RECORD_SAMPLES = 5_000


class TelemetryProducer:
    def __init__(self, plant: PlantConfig, bootstrap: str) -> None:
        self.plant = plant
        self.topic = plant.kafka.telemetry.name
        self._homes = HomePartitions(plant, 1)  # replaced once the topic is known
        self._producer = AioKafkaClients(plant.kafka.security).producer(
            bootstrap_servers=bootstrap,
            enable_idempotence=True,
            linger_ms=20,
            max_request_size=8 * 1024 * 1024,
            client_id="linepulse-producer",
        )
        self.sent = 0

    async def __aenter__(self) -> TelemetryProducer:
        await self._producer.start()
        partitions = await self._producer.partitions_for(self.topic)
        self._homes = HomePartitions(self.plant, len(partitions))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, events: pl.DataFrame) -> None:
        """Send a batch of `EVENT_SCHEMA` events; returns once the broker has them all."""
        if events.is_empty():
            return
        sends = []
        # Unknown machines still go through (partition 0): the worker rejects them.
        for home, group in self._homes.split(events).items():
            for offset in range(0, group.height, RECORD_SAMPLES):
                chunk = group.slice(offset, RECORD_SAMPLES)
                sends.append(
                    await self._producer.send(
                        self.topic,
                        value=encode_arrow(chunk),
                        key=chunk.item(0, "machine").encode(),
                        partition=home or 0,
                        headers=[("content-type", ARROW.encode())],
                    )
                )
        for sent in sends:
            await sent
        self.sent += events.height


async def produce_file(
    plant: PlantConfig,
    bootstrap: str,
    path: Path,
    on_reject: Callable[[str, str], None],
) -> int:
    """Send a telemetry file (.jsonl or .parquet) to the telemetry topic; events sent.
    Creates the topic if missing; `TopicLayoutError` if it is laid out otherwise."""
    clients = AioKafkaClients(plant.kafka.security)
    await ensure_topics(bootstrap, plant.kafka, clients, roles=("telemetry",))
    async with TelemetryProducer(plant, bootstrap) as producer:
        for decoded, _ in read_batches(path, batch_events=200_000):
            for where, reason, _raw in decoded.rejected:
                on_reject(where, reason)
            await producer.send(decoded.events)
        return producer.sent
