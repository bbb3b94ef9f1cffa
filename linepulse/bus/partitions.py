"""Line home partitions on the telemetry topic.

Each line has a home partition on the telemetry topic, so that one core sees all of a
line's machines and line records are whole sums (and a line's bottleneck can be found).
Records stay keyed by machine id; LinePulse's producers pick the home partition
explicitly, and the KPI worker forwards an event that arrives elsewhere (a producer that
partitions by machine key) to its line's home.

The producers (the ingest sink, `linepulse produce`) and the KPI worker (which partitions
it consumes, where it forwards) must agree on this map, so it lives in the bus, beside the
topics' layout (linepulse/bus/topics.py: creation at start, and the check that refuses a
topic laid out otherwise).
"""

from __future__ import annotations

import polars as pl
from aiokafka.partitioner import murmur2

from linepulse.config import PlantConfig

__all__ = ["HomePartitions", "home_partition", "machine_homes"]


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
        self._lines = {line.id: home_partition(line.id, partitions) for line in plant.lines}
        homes = machine_homes(plant, partitions)
        self._frame = pl.DataFrame(
            {"machine": list(homes), "_home": list(homes.values())},
            schema={"machine": pl.String, "_home": pl.Int64},
        )

    def lines_of(self, partition: int) -> frozenset[str]:
        """The lines whose home is `partition`: the records its core makes."""
        return frozenset(line for line, home in self._lines.items() if home == partition)

    def split(self, events: pl.DataFrame) -> dict[int | None, pl.DataFrame]:
        """Events by home partition, in their order; `None` for machines not in the plant."""
        if events.is_empty():
            return {}
        tagged = events.join(self._frame, on="machine", how="left", maintain_order="left")
        return {
            None if home is None else int(home): group.drop("_home")
            for (home,), group in tagged.group_by("_home", maintain_order=True)
        }
