"""The KPI worker follows the plant's control charts (`spc:` with fixed limits) on the
partition of each machine's line and puts every subgroup on the `spc` topic: the points
`linepulse spc` gives over the same samples, also across a restart from the checkpoint
(the charts' samples waiting for event time are saved with the partition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.calendar import utc_text
from linepulse.config import PlantConfig, parse_config
from linepulse.events import parse_ts
from linepulse.spc import SpcChart
from linepulse.spc_chart import study
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.metrics import KpiMetrics
from services.kpi.worker import KpiWorker
from tests.unit.kpi.test_worker_on_bus import NO_BROKER, classic, produce, run_until

T0 = 1_793_613_600_000  # 2026-11-02T06:00:00Z
CHART = {"machine": "filler-1", "signal": "fill_g", "subgroup_size": 4}
LIMITS = {"center": 500.0, "sigma": 1.0}


def charted_plant() -> PlantConfig:
    config, _ = classic()
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spc"] = [{**CHART, "limits": LIMITS}]
    return parse_config(data)


def weights(count: int) -> list[tuple[int, float]]:
    """A fill weight a second, creeping up: the later subgroups break the rules."""
    return [(T0 + i * 1000, round(500.0 + (i % 3) * 0.4 + i * 0.02, 3)) for i in range(count)]


def as_events(samples: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [
        {"ts": utc_text(ts), "machine": "filler-1", "signal": "fill_g", "value": value}
        for ts, value in samples
    ]


def spc_topic(broker: InProcessBroker, plant: PlantConfig) -> list[dict[str, Any]]:
    """The topic's records, the last per key (as compaction keeps them), by end."""
    kept = {r.key: orjson.loads(r.value or b"") for r in broker.log(plant.kafka.spc.name, 0)}
    return sorted(kept.values(), key=lambda record: record["end"])


async def test_subgroups_go_on_the_spc_topic_exactly_across_a_restart(tmp_path: Path) -> None:
    plant = charted_plant()
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, plant.kafka, clients)
    samples = weights(240)
    half = len(samples) // 2
    store = DirectoryStore(tmp_path)
    telemetry = plant.kafka.telemetry.name

    def worker() -> KpiWorker:
        return KpiWorker(
            Core.from_config(plant),
            plant.kafka,
            NO_BROKER,
            store,
            KpiMetrics.create(CollectorRegistry()),
            clients=clients,
        )

    def committed(end: int) -> bool:
        partitions = range(plant.kafka.telemetry.partitions)
        done = sum(
            broker.committed(plant.kafka.group, TopicPartition(telemetry, n)) or 0
            for n in partitions
        )
        return done >= end

    # A first worker takes half the samples and stops (checkpoint, commit); a second
    # takes the rest from the checkpoint.
    await produce(clients, telemetry, as_events(samples[:half]))
    first = worker()
    await run_until(first, lambda: first.stats.events >= half and committed(half))
    before = len(spc_topic(broker, plant))
    assert before > 0
    await produce(clients, telemetry, as_events(samples[half:]))
    second = worker()
    await run_until(second, lambda: second.stats.events >= len(samples) - half)
    assert second.stats.events == len(samples) - half, "nothing read twice"

    # Every subgroup below the last watermark, as the study of the same samples has it.
    water = samples[-1][0] - round(plant.kpi.lateness_s * 1000)
    expected = study(SpcChart.model_validate({**CHART, "limits": LIMITS}), samples)["points"]
    expected = [p for p in expected if parse_ts(p["end"]) < water]
    got = spc_topic(broker, plant)
    assert len(got) > before
    # (The record keeps the end to the millisecond, the study's text to the second: the
    # samples are whole seconds apart, so the instants compare.)
    assert [(parse_ts(r["end"]), r["x"], r["spread"], r["broken"]) for r in got] == [
        (parse_ts(p["end"]), p["x"], p["spread"], p["broken"]) for p in expected
    ]
    assert any(r["broken"] for r in got), "the creep breaks the chart's rules"
    record = got[0]
    assert (record["chart"], record["line"], record["kind"], len(record["values"])) == (
        "filler-1/fill_g",
        "line-1",
        "xbar_r",
        4,
    )
    assert record["limits"]["center"] == 500.0
