"""Test telemetry shared by the writer, sink and Kafka-sink tests: a plant of four lines of
three machines, and counter samples numbered by their time, so that a test can tell from
`ts` alone whether every sample arrived, once, in order."""

from __future__ import annotations

import polars as pl

from linepulse.config import PlantConfig, parse_config
from linepulse.events import EVENT_SCHEMA


def four_line_plant(site: str, partitions: int) -> PlantConfig:
    """Lines line-0..line-3, machines m<line>-0..2, a telemetry topic of `partitions`."""
    return parse_config(
        {
            "site": site,
            "lines": [
                {"id": f"line-{n}", "machines": [{"id": f"m{n}-{j}"} for j in range(3)]}
                for n in range(4)
            ],
            "kafka": {"telemetry": {"name": "telemetry", "partitions": partitions}},
        }
    )


def numbered_samples(first: int, count: int, names: list[str]) -> pl.DataFrame:
    """`total_count` samples numbered by `ts` from `first`, machines `names` round robin."""
    ids = range(first, first + count)
    return pl.DataFrame(
        {
            "ts": list(ids),
            "machine": [names[i % len(names)] for i in ids],
            "signal": ["total_count"] * count,
            "value_num": [float(i) for i in ids],
            "value_int": [None] * count,
            "value_str": [None] * count,
            "reason": [None] * count,
            "quality": ["good"] * count,
        },
        schema=EVENT_SCHEMA,
    )
