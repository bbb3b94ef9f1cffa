"""The ingesters' Kafka side when the topics live in this process (`linepulse demo`).

Same records as `KafkaSink` writes (Arrow IPC batches on each line's home partition, keyed
by the first machine, dead letters as JSON on the DLQ topic), without the outage
machinery: an in-process bus cannot be away, so there is nothing to buffer or spool.
"""

from __future__ import annotations

import orjson
import polars as pl

from linepulse.bus import KafkaClients, Producer
from linepulse.bus.partitions import HomePartitions
from linepulse.config import PlantConfig
from linepulse.events import reason_kind
from linepulse.wire import ARROW, encode_arrow
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import DeadLetter


class BusSink:
    def __init__(
        self,
        plant: PlantConfig,
        clients: KafkaClients,
        bootstrap: str,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.plant = plant
        self.metrics = metrics
        self._producer: Producer = clients.producer(bootstrap_servers=bootstrap)
        self._homes = HomePartitions(plant, plant.kafka.telemetry.partitions)
        self._batch = plant.ingest.batch_samples
        self.sent = 0

    async def start(self) -> None:
        await self._producer.start()
        partitions = await self._producer.partitions_for(self.plant.kafka.telemetry.name)
        self._homes = HomePartitions(self.plant, len(partitions))

    async def close(self) -> None:
        await self._producer.stop()

    async def put(self, events: pl.DataFrame) -> None:
        topic = self.plant.kafka.telemetry.name
        for home, group in self._homes.split(events).items():
            for offset in range(0, group.height, self._batch):
                chunk = group.slice(offset, self._batch)
                sent = await self._producer.send(
                    topic,
                    value=encode_arrow(chunk),
                    key=chunk.item(0, "machine").encode(),
                    partition=home or 0,
                    headers=[("content-type", ARROW.encode())],
                )
                await sent
        self.sent += events.height
        if self.metrics is not None:
            self.metrics.sent.inc(events.height)

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            sent = await self._producer.send(
                self.plant.kafka.dlq.name,
                value=orjson.dumps(letter.as_record()),
                key=letter.source.encode(),
            )
            await sent
            if self.metrics is not None:
                source = letter.source.split(":")[0]
                self.metrics.rejected.labels(source=source, reason=reason_kind(letter.reason)).inc()
