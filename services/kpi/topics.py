"""Kafka topics LinePulse needs, created at start when missing, and line home partitions.

Each line has a home partition on the telemetry topic, so that one core sees all of a
line's machines and line records are whole sums (and a line's bottleneck can be found).
Records stay keyed by machine id; LinePulse's producers pick the home partition
explicitly, and the KPI worker forwards an event that arrives elsewhere (a producer that
partitions by machine key) to its line's home.
"""

from __future__ import annotations

import logging

import polars as pl
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from linepulse.bus import AIOKAFKA, KafkaClients
from linepulse.config import KafkaSettings, PlantConfig, Topic

log = logging.getLogger(__name__)


def home_partition(line_id: str, partitions: int) -> int:
    """Kafka's own default partitioner (murmur2, positive) applied to the line id."""
    hashed: int = murmur2(line_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def machine_homes(plant: PlantConfig, partitions: int) -> dict[str, int]:
    return {
        machine.id: home_partition(line.id, partitions)
        for line in plant.lines
        for machine in line.machines
    }


class HomePartitions:
    """Each machine's home partition, for splitting a batch of events by destination."""

    def __init__(self, plant: PlantConfig, partitions: int) -> None:
        homes = machine_homes(plant, partitions)
        self._frame = pl.DataFrame(
            {"machine": list(homes), "_home": list(homes.values())},
            schema={"machine": pl.String, "_home": pl.Int64},
        )

    def split(self, events: pl.DataFrame) -> dict[int | None, pl.DataFrame]:
        """Events by home partition, in their order; `None` for machines not in the plant."""
        if events.is_empty():
            return {}
        tagged = events.join(self._frame, on="machine", how="left", maintain_order="left")
        return {
            None if home is None else int(home): group.drop("_home")
            for (home,), group in tagged.group_by("_home", maintain_order=True)
        }


async def ensure_topics(
    bootstrap: str, kafka: KafkaSettings, clients: KafkaClients = AIOKAFKA
) -> None:
    """Create telemetry, kpi (compacted), dead-letter and status (compacted) topics if missing."""
    wanted: list[tuple[Topic, dict[str, str]]] = [
        (kafka.telemetry, {}),
        (kafka.kpi, {"cleanup.policy": "compact"}),
        (kafka.dlq, {}),
        (kafka.status, {"cleanup.policy": "compact"}),
    ]
    admin = clients.admin(bootstrap_servers=bootstrap, client_id="linepulse-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=topic.name,
                num_partitions=topic.partitions,
                replication_factor=topic.replication,
                topic_configs=configs,
            )
            for topic, configs in wanted
            if topic.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created them first
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
