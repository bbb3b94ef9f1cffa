"""The KPI worker, on the in-process bus, sends events from a broken clock to the DLQ.

Found by the decoder-to-core property: one event at 9999-12-31 made the core raise, and
one from 1970 or 2999 beside today's made it walk every minute in between. The worker
now refuses them with a reason before the core sees them, and keeps going.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.metrics import KpiMetrics
from services.kpi.worker import KpiWorker
from tests.unit.kpi.test_worker_on_bus import NO_BROKER, classic, produce, run_until


async def test_events_from_a_broken_clock_go_to_the_dlq_and_the_rest_is_used(
    tmp_path: Path,
) -> None:
    config, _ = classic()
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, config.kafka, clients)
    now = int(time.time() * 1000)
    event = {"machine": "filler-1", "signal": "state", "value": "running"}
    broken = [253_402_300_799_999, 32_503_680_000_000, 0, now + 2 * 86_400_000]
    events = [{**event, "ts": ts} for ts in [*broken, now]]
    await produce(clients, config.kafka.telemetry.name, events)

    worker = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    await run_until(worker, lambda: worker.stats.events >= len(events), timeout_s=60)

    letters = [
        orjson.loads(r.value or b"null")
        for n in range(config.kafka.dlq.partitions)
        for r in broker.log(config.kafka.dlq.name, n)
    ]
    assert len(letters) == len(broken)
    assert all(r["reason"].startswith("ts outside the accepted range: ") for r in letters)
    assert sorted(int(r["raw"].rsplit("ts=", 1)[1]) for r in letters) == sorted(broken)
    assert worker.stats.dead_letters == len(broken)
    assert worker.stats.events == len(events)  # today's event reached the core
