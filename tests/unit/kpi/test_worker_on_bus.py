"""The KPI worker, unchanged, on the in-process bus: the classic example comes out exact,
and a restart from its checkpoint neither loses nor double counts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, parse_config
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.worker import KpiWorker

ROOT = Path(__file__).parents[3]
CLASSIC = ROOT / "examples" / "classic-oee"
SHIFT = ("line-1", "filler-1", "shift", "2026-11-02T06:00:00Z")
NO_BROKER = "in-process"  # the bootstrap address the worker is given; nothing dials it
Key = tuple[str, str | None, str, str]


def classic() -> tuple[PlantConfig, list[dict[str, Any]]]:
    data = yaml.safe_load((CLASSIC / "plant.yaml").read_text())
    kafka = {
        "telemetry": {"name": "telemetry", "partitions": 3},
        "kpi": {"name": "kpi", "partitions": 2},
        "group": "kpi-workers",
        "open_interval_s": 0.2,
        "checkpoint_interval_s": 0.3,
    }
    config = parse_config({**data, "kafka": kafka})
    events = [json.loads(line) for line in (CLASSIC / "events.jsonl").read_text().splitlines()]
    # A later sample moves the watermark past the shift's end, so the shift closes.
    events.append(
        {
            "ts": "2026-11-02T14:05:00Z",
            "machine": "filler-1",
            "signal": "total_count",
            "value": 519271,
        }
    )
    return config, events


async def produce(clients: InProcessClients, topic: str, events: list[dict[str, Any]]) -> None:
    """As any producer would: one JSON event per record, keyed by machine."""
    producer = clients.producer(bootstrap_servers=NO_BROKER, enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, orjson.dumps(event), key=event["machine"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def kpi_records(broker: InProcessBroker, config: PlantConfig) -> list[dict[str, Any]]:
    topic = config.kafka.kpi
    return [
        orjson.loads(r.value or b"null")
        for n in range(topic.partitions)
        for r in broker.log(topic.name, n)
    ]


def latest(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(r["line"], r["machine"], r["window"], r["window_start"]): r for r in records}


async def run_until(worker: KpiWorker, done: Callable[[], bool], timeout_s: float = 60) -> None:
    """Run the worker until `done()` holds; then stop it (checkpoint, commit, leave)."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name="kpi-worker")
    try:
        async with asyncio.timeout(timeout_s):
            while not done() and not task.done():
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def follow_until_ready(materializer: Materializer) -> None:
    """Run the materializer until it has caught up with its topics; then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(materializer.run(stop), name="materializer")
    try:
        async with asyncio.timeout(30):
            while not materializer.ready:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class ListTable:
    """A table of the materializer's store, as a list: what it was handed, in order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows


class ListStore:
    """The materializer's store, as lists."""

    def __init__(self) -> None:
        self.history = ListTable()
        self.status = ListTable()
        self.spc = ListTable()
        self.corrections: list[Mapping[str, Any]] = []

    @property
    def stops(self) -> ListStore:
        return self

    def apply_corrections(
        self, entries: Sequence[Mapping[str, Any]], withdrawn: Sequence[tuple[str, int]]
    ) -> None:
        self.corrections += entries

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.history.rows

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return self.status.rows


def telemetry_end(broker: InProcessBroker, config: PlantConfig) -> dict[int, int]:
    topic = config.kafka.telemetry
    return {n: len(broker.log(topic.name, n)) for n in range(topic.partitions)}


async def test_classic_example_on_the_in_process_bus(tmp_path: Path) -> None:
    config, events = classic()
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, config.kafka, clients)
    await produce(clients, config.kafka.telemetry.name, events)

    worker = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    await run_until(
        worker, lambda: latest(kpi_records(broker, config)).get(SHIFT, {}).get("final", False)
    )

    records = latest(kpi_records(broker, config))
    shift = records[SHIFT]
    assert round(shift["oee"], 6) == 0.747937
    assert (shift["total_count"], shift["reject_count"], shift["stops"]) == (19271, 423, 3)
    line = records[("line-1", None, "shift", "2026-11-02T06:00:00Z")]
    assert line["oee"] == shift["oee"]
    assert list(tmp_path.glob("*.ckpt")), "the worker checkpoints its partitions"
    statuses = [orjson.loads(r.value or b"") for r in broker.log(config.kafka.status.name, 0)]
    assert {s["machine"] for s in statuses} == {"filler-1"}

    # The API's materializer follows the same topics on the same bus until caught up.
    store = ListStore()
    materializer = Materializer(
        config.kafka, NO_BROKER, store, KpiMetrics.create(CollectorRegistry()), clients=clients
    )
    await follow_until_ready(materializer)
    assert len(store.records) == len(kpi_records(broker, config))
    assert latest(store.records)[SHIFT] == shift
    assert [s["machine"] for s in store.statuses] == [s["machine"] for s in statuses]


async def test_restart_from_the_checkpoint_does_not_double_count(tmp_path: Path) -> None:
    config, events = classic()
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, config.kafka, clients)
    half = len(events) // 2
    store = DirectoryStore(tmp_path)
    group = config.kafka.group
    telemetry = config.kafka.telemetry.name

    def committed_to_end() -> bool:
        return all(
            (broker.committed(group, TopicPartition(telemetry, n)) or 0) >= end
            for n, end in telemetry_end(broker, config).items()
        )

    # First run: half the shift, then a clean stop (checkpoint and commit).
    await produce(clients, telemetry, events[:half])
    first = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        store,
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    await run_until(first, lambda: first.stats.events >= half and committed_to_end())
    assert first.stats.events == half
    assert SHIFT not in {k for k, r in latest(kpi_records(broker, config)).items() if r["final"]}

    # Second run, a new worker on the same broker and checkpoints: only the rest is read.
    await produce(clients, telemetry, events[half:])
    second = KpiWorker(
        Core.from_config(config),
        config.kafka,
        NO_BROKER,
        store,
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    await run_until(
        second, lambda: latest(kpi_records(broker, config)).get(SHIFT, {}).get("final", False)
    )
    assert second.stats.events == len(events) - half, "nothing read twice"

    finals = [r for r in kpi_records(broker, config) if r["final"]]
    shifts = [
        r for r in finals if (r["line"], r["machine"], r["window"], r["window_start"]) == SHIFT
    ]
    assert len(shifts) == 1, "the shift closes once"
    shift = shifts[0]
    assert round(shift["oee"], 6) == 0.747937
    assert (shift["total_count"], shift["reject_count"], shift["stops"]) == (19271, 423, 3)
    assert shift["revision"] == 0


async def test_a_kind_left_out_of_the_last_step_is_built_once_due(tmp_path: Path) -> None:
    """A step builds the open records of the kinds due only (shift: every 2 s here).
    Telemetry that stops right after a step that left `shift` out must still reach the
    open shift record within its cadence, without further telemetry."""
    config, events = classic()
    kafka = config.kafka.model_copy(
        update={"open_interval_s": None, "open_deadline_s": 0.05, "open_cadence_s": {"shift": 2}}
    )
    config = config.model_copy(update={"kafka": kafka})
    first = [e for e in events if e["ts"] < "2026-11-02T10:00:00Z"]
    rest = [e for e in events if "2026-11-02T10:00:00Z" <= e["ts"] < "2026-11-02T14:00:00Z"]
    broker = InProcessBroker(auto_create_partitions=None)
    clients = InProcessClients(broker)
    await ensure_topics(NO_BROKER, kafka, clients)
    worker = KpiWorker(
        Core.from_config(config),
        kafka,
        NO_BROKER,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name="kpi-worker")

    def shift_count() -> int | None:
        record = latest(kpi_records(broker, config)).get(SHIFT)
        return None if record is None else int(record["total_count"])

    try:
        await produce(clients, kafka.telemetry.name, first)
        async with asyncio.timeout(30):
            while shift_count() is None:  # the shift's first open record is out
                await asyncio.sleep(0.01)
        await produce(clients, kafka.telemetry.name, rest)  # stepped within the second
        async with asyncio.timeout(30):
            while worker.stats.events < len(first) + len(rest):
                await asyncio.sleep(0.01)
        # The step of `rest` came within the shift's cadence: it left the shift out.
        assert any("shift" in part.owed for part in worker.parts.values())
        async with asyncio.timeout(10):
            while shift_count() != 19271:  # the count at 14:00, by the shift cadence
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
