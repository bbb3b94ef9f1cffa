"""Telemetry on the bus the way LinePulse writes it: Arrow records on each line's home
partition.

One record carries up to `record_samples` events of one partition as an Arrow IPC stream
(linepulse/wire.py), keyed by its first machine, with the `content-type` header that tells
the decoder so. The home partition is the line's (linepulse/bus/partitions.py), so one KPI
core sees all of a line's machines. Every telemetry producer goes through here: the ingest
sink (which adds buffering and the spool around it), `linepulse produce`, and the KPI
worker forwarding an event that arrived off its home.

The writer runs on the bus's `Producer` protocol, so the same code writes to Kafka or to
the in-process broker; which producer it is, and its settings, are the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import polars as pl
from aiokafka.structs import RecordMetadata

from linepulse.bus.clients import Producer
from linepulse.bus.partitions import HomePartitions
from linepulse.config import PlantConfig
from linepulse.wire import ARROW, encode_arrow

__all__ = ["HEADERS", "TelemetryRecord", "TelemetryWriter", "send_telemetry", "telemetry_record"]

HEADERS: Final = [("content-type", ARROW.encode())]
UNKNOWN_PARTITION: Final = 0  # machines not in the plant: the worker there rejects them


@dataclass(frozen=True)
class TelemetryRecord:
    """One Kafka record of telemetry, and the rows it encodes (to keep what was not sent)."""

    partition: int
    key: bytes
    value: bytes
    rows: pl.DataFrame


def telemetry_record(rows: pl.DataFrame, partition: int) -> TelemetryRecord:
    """`EVENT_SCHEMA` rows (at least one) as one Arrow record keyed by the first machine."""
    return TelemetryRecord(partition, rows.item(0, "machine").encode(), encode_arrow(rows), rows)


async def send_telemetry(
    producer: Producer, topic: str, record: TelemetryRecord
) -> asyncio.Future[RecordMetadata]:
    """Hand `record` to `producer`; the future settles when the broker has it."""
    return await producer.send(
        topic, value=record.value, key=record.key, partition=record.partition, headers=HEADERS
    )


class TelemetryWriter:
    """Events onto the telemetry topic through `producer`, which the writer starts and
    stops; the topic's partition count is read at `start()`."""

    def __init__(self, producer: Producer, plant: PlantConfig, *, record_samples: int) -> None:
        self.producer = producer
        self.plant = plant
        self.topic = plant.kafka.telemetry.name
        self.record_samples = record_samples
        self.partitions = plant.kafka.telemetry.partitions  # replaced by the topic's own
        self._homes = HomePartitions(plant, self.partitions)

    async def start(self) -> None:
        await self.producer.start()
        self.partitions = len(await self.producer.partitions_for(self.topic))
        self._homes = HomePartitions(self.plant, self.partitions)

    async def stop(self) -> None:
        await self.producer.stop()

    async def __aenter__(self) -> TelemetryWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def records(self, events: pl.DataFrame) -> list[TelemetryRecord]:
        """`events` as records: per home partition in their order, `record_samples` each."""
        size = self.record_samples
        return [
            telemetry_record(group.slice(offset, size), partition)
            for partition, group in self._by_home(events)
            for offset in range(0, group.height, size)
        ]

    async def send(self, record: TelemetryRecord) -> asyncio.Future[RecordMetadata]:
        return await send_telemetry(self.producer, self.topic, record)

    async def write(self, events: pl.DataFrame) -> None:
        """Send `events`; returns once the broker has acknowledged every record."""
        sent = [await self.send(record) for record in self.records(events)]
        if sent:
            await asyncio.gather(*sent)

    def _by_home(self, events: pl.DataFrame) -> Iterator[tuple[int, pl.DataFrame]]:
        """Rows by home partition in their order; machines not in the plant go to
        `UNKNOWN_PARTITION`, interleaved in order with that partition's own."""
        groups = self._homes.split(events.with_row_index("_row"))
        unknown = groups.pop(None, None)
        if unknown is not None:
            own = groups.get(UNKNOWN_PARTITION)
            groups[UNKNOWN_PARTITION] = (
                unknown if own is None else pl.concat([own, unknown]).sort("_row")
            )
        for partition, group in groups.items():
            yield partition or UNKNOWN_PARTITION, group.drop("_row")
