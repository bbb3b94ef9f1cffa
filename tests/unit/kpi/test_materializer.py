"""The materializer keeps following the kpi topic past a record the store refuses, and
hands the store what a poll returned in one batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.config import KafkaSettings
from services.kpi.materializer import Materializer, Table
from services.kpi.metrics import KpiMetrics
from services.kpi.publisher import record_key
from services.kpi.store import KpiStore
from tests.unit.kpi.test_store import plant_config, record
from tests.unit.kpi.test_worker_on_bus import follow_until_ready


def test_a_refused_record_is_skipped_and_the_rest_of_the_batch_kept(tmp_path: Path) -> None:
    with KpiStore(tmp_path / "kpi.duckdb", plant_config()) as store:
        materializer = Materializer(
            KafkaSettings(), "127.0.0.1:1", store, KpiMetrics.create(CollectorRegistry())
        )
        good = record()
        bad = {**record(), "window": "fortnight"}
        kept = materializer._upsert([good, bad])
        assert kept == [good]
        assert materializer.bad == 1
        assert len(store.history.history(start=_start(good))) == 1


def _start(r: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(r["window_start"]))


class CountingTable:
    """The store's real table, with the size of each batch it was handed."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.batches: list[int] = []

    def upsert(self, rows: list[dict[str, Any]], /) -> None:
        self.batches.append(len(rows))
        self.table.upsert(rows)


class CountingStore:
    def __init__(self, store: KpiStore) -> None:
        self.history = CountingTable(store.history)
        self.status = store.status
        self.spc = store.spc
        self.stops = store.stops


async def test_a_burst_of_open_window_records_is_one_upsert(tmp_path: Path) -> None:
    """A worker's burst (5,000 records: a second's open windows at 1,000 machines) goes into
    the store in one statement, whose fixed cost its last record then waits for once."""
    kafka = KafkaSettings.model_validate({"kpi": {"name": "kpi", "partitions": 1}})
    clients = InProcessClients(InProcessBroker())
    await ensure_topics("in-process", kafka, clients)
    first = datetime(2026, 11, 2, 5, tzinfo=UTC)
    burst = [
        record(machine, window="1m", start=f"{first + timedelta(minutes=n):%Y-%m-%dT%H:%M:%SZ}")
        for n in range(2_500)
        for machine in ("m1", "m2")
    ]
    producer = clients.producer()
    await producer.start()
    for r in burst:
        await producer.send(kafka.kpi.name, orjson.dumps(r), key=record_key(r))
    await producer.stop()

    with KpiStore(tmp_path / "kpi.duckdb", plant_config()) as store:
        counting = CountingStore(store)
        materializer = Materializer(
            kafka, "in-process", counting, KpiMetrics.create(CollectorRegistry()), clients=clients
        )
        await follow_until_ready(materializer)
        assert counting.history.batches == [len(burst)]
        rows = store.history.history(start=first, window="1m")
        assert len(rows) == len(burst)
