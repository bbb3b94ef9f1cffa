"""`linepulse produce`: a telemetry file onto Kafka the way LinePulse's own producers write
it (linepulse/bus/telemetry_writer.py), with an idempotent producer (acks=all), so a
retried send never duplicates a record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from linepulse.bus.clients import AioKafkaClients
from linepulse.bus.telemetry_writer import TelemetryWriter
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig
from linepulse.event_files import read_batches

RECORD_SAMPLES: Final = 5_000
FILE_BATCH_EVENTS: Final = 200_000  # events read from the file per write


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
    producer = clients.producer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        linger_ms=20,
        max_request_size=8 * 1024 * 1024,
        client_id="linepulse-producer",
    )
    sent = 0
    async with TelemetryWriter(producer, plant, record_samples=RECORD_SAMPLES) as writer:
        for decoded, _ in read_batches(path, batch_events=FILE_BATCH_EVENTS):
            for where, reason, _raw in decoded.rejected:
                on_reject(where, reason)
            await writer.write(decoded.events)
            sent += decoded.events.height
    return sent
