"""The streaming KPI worker on a real Kafka broker: exact results, crashes, scale-out."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from linepulse.bus.partitions import machine_homes
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config, parse_config
from linepulse.events import empty_events
from linepulse.wire import ARROW, encode_arrow
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core, initial_state, step
from services.kpi.metrics import KpiMetrics
from services.kpi.publisher import record_key
from services.kpi.worker import KpiWorker
from tests.cli_command import LINEPULSE
from tests.integration import plantday
from tests.unit.kpi.core.support import frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
CLASSIC = ROOT / "examples" / "classic-oee"
Key = tuple[str, str | None, str, str]
# Windows ending by then are closed in both the stream (the day's events end with samples
# at 00:40) and the replay.
DAY_CLOSED = "2026-11-03T00:30:00Z"


def kafka_block(partitions: int = 3) -> dict[str, Any]:
    """Topic names of their own, so tests on one broker never see each other's data."""
    tag = uuid.uuid4().hex[:8]
    return {
        "telemetry": {"name": f"telemetry-{tag}", "partitions": partitions},
        "kpi": {"name": f"kpi-{tag}", "partitions": 2},
        "dlq": {"name": f"dlq-{tag}", "partitions": 1},
        "status": {"name": f"status-{tag}", "partitions": 1},
        "group": f"kpi-{tag}",
        "open_interval_s": 0.2,
        "checkpoint_interval_s": 0.3,
    }


async def produce_json(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> None:
    """As any producer would: one JSON event per record, keyed by machine."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, orjson.dumps(event), key=event["machine"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def produce_batches(
    bootstrap: str, config: PlantConfig, events: list[dict[str, Any]], size: int = 2000
) -> None:
    """As LinePulse's ingesters do: Arrow batches on each line's home partition."""
    topic = config.kafka.telemetry
    homes = machine_homes(config, topic.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        by_home: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            by_home.setdefault(homes[event["machine"]], []).append(event)
        for home, chunk in by_home.items():
            for i in range(0, len(chunk), size):
                part = chunk[i : i + size]
                await producer.send(
                    topic.name,
                    encode_arrow(frame(part)),
                    key=part[0]["machine"].encode(),
                    partition=home,
                    headers=[("content-type", ARROW.encode())],
                )
        await producer.flush()
    finally:
        await producer.stop()


async def read_records(
    bootstrap: str, topic: str, until: Any, timeout_s: float = 90
) -> dict[Key, dict[str, Any]]:
    """Latest record per key from the start of the kpi topic, until `until(records)` holds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: dict[Key, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    for message in messages:
                        r = orjson.loads(message.value)
                        records[(r["line"], r["machine"], r["window"], r["window_start"])] = r
    finally:
        await consumer.stop()
    return records


def replayed(config: PlantConfig, events: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    core = Core.from_config(config)
    state, out = step(core, initial_state(core), frame(events))
    records = out.records
    state, out = step(core, state, empty_events(), flush=True)
    finals = {}
    for r in [*records, *out.records]:
        if r["final"]:
            finals[(r["line"], r["machine"], r["window"], r["window_start"])] = r
    return finals


def classic_on_kafka(
    tmp_path: Path, partitions: int = 3
) -> tuple[PlantConfig, Path, list[dict[str, Any]]]:
    """The classic example with topics of its own and its config written to `tmp_path`;
    its events end with a later sample that moves the watermark past the shift's end."""
    data = yaml.safe_load((CLASSIC / "plant.yaml").read_text())
    config = parse_config({**data, "kafka": kafka_block(partitions)})
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    events = [json.loads(line) for line in (CLASSIC / "events.jsonl").read_text().splitlines()]
    events.append(
        {
            "ts": "2026-11-02T14:05:00Z",
            "machine": "filler-1",
            "signal": "total_count",
            "value": 519271,
        }
    )
    return config, path, events


def start_cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`linepulse ARGS` as a child process logging into `log`."""
    command = [*LINEPULSE, "--log-level", "info", *args]
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(  # noqa: S603 - our own CLI
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def test_classic_example_through_kafka(kafka: str, tmp_path: Path) -> None:
    config, _, events = classic_on_kafka(tmp_path)
    events.append(
        {"ts": "2026-11-02T14:05:00Z", "machine": "filler-1", "signal": "state", "value": "broken"}
    )  # not a state: goes to the dead-letter topic
    await ensure_topics(kafka, config.kafka)
    await produce_json(kafka, config.kafka.telemetry.name, events)

    worker = KpiWorker(
        Core.from_config(config),
        config.kafka,
        kafka,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    key = ("line-1", "filler-1", "shift", "2026-11-02T06:00:00Z")
    try:
        records = await read_records(
            kafka, config.kafka.kpi.name, lambda rs: rs.get(key, {}).get("final")
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    shift = records[key]
    assert round(shift["oee"], 6) == 0.747937
    assert (shift["total_count"], shift["reject_count"], shift["stops"]) == (19271, 423, 3)
    line = records[("line-1", None, "shift", "2026-11-02T06:00:00Z")]
    assert line["oee"] == pytest.approx(shift["oee"])
    assert worker.stats.dead_letters == 1
    assert list(tmp_path.glob("*.ckpt")), "the worker checkpoints its partitions"
    dlq = AIOKafkaConsumer(
        config.kafka.dlq.name, bootstrap_servers=kafka, auto_offset_reset="earliest"
    )
    await dlq.start()
    try:
        batch = await dlq.getmany(timeout_ms=5000)
    finally:
        await dlq.stop()
    letters = [orjson.loads(m.value) for ms in batch.values() for m in ms]
    assert [letter["reason"] for letter in letters] == [
        "state value 'broken' is not a LinePulse state; map it in state_map"
    ]


def start_worker(
    config_path: Path, bootstrap: str, state_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    args = [
        "kpi",
        "--config",
        str(config_path),
        "--kafka",
        bootstrap,
        "--state-dir",
        str(state_dir),
    ]
    return start_cli(args, log)


def stop_worker(worker: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM, as an orchestrator would; a worker that hangs is dumped, killed, failed."""
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGUSR1)  # the worker logs what each task waits on
        time.sleep(2)
        worker.kill()
        worker.wait(10)
        pytest.fail(f"the worker did not stop on SIGTERM:\n{log.read_text()[-6000:]}")


async def wait_for_checkpoint(state_dir: Path, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not list(state_dir.glob("*.ckpt")):
            await asyncio.sleep(0.05)


async def read_closed_day(
    kafka: str, config: PlantConfig, want: dict[Key, dict[str, Any]], timeout_s: float
) -> dict[Key, dict[str, Any]]:
    """The generated day's final records from the kpi topic, once all of `want` is there."""
    records = await read_records(
        kafka,
        config.kafka.kpi.name,
        lambda rs: want.keys() <= comparable(rs, DAY_CLOSED).keys(),
        timeout_s=timeout_s,
    )
    return comparable(records, DAY_CLOSED)


def comparable(records: dict[Key, dict[str, Any]], before: str) -> dict[Key, dict[str, Any]]:
    return {k: r for k, r in records.items() if r["final"] and r["window_end"] <= before}


async def test_worker_killed_twice_resumes_exactly(kafka: str, tmp_path: Path) -> None:
    block = kafka_block(partitions=4)
    config = plantday.plant(kafka=block)
    config_path = tmp_path / "plant.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    config = load_config(config_path)
    events = plantday.day_events(config)
    want = comparable(replayed(config, events), DAY_CLOSED)
    assert len(want) > 100
    await ensure_topics(kafka, config.kafka)
    state_dir, log = tmp_path / "state", tmp_path / "worker.log"
    thirds = [events[i * len(events) // 3 : (i + 1) * len(events) // 3] for i in range(3)]
    rng = random.Random(3)

    await produce_batches(kafka, config, thirds[0])
    worker = start_worker(config_path, kafka, state_dir, log)
    await wait_for_checkpoint(state_dir)
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    await produce_batches(kafka, config, thirds[1])
    worker = start_worker(config_path, kafka, state_dir, log)
    await asyncio.sleep(rng.uniform(1.5, 3.0))
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    await produce_batches(kafka, config, thirds[2])
    worker = start_worker(config_path, kafka, state_dir, log)
    try:
        got = await read_closed_day(kafka, config, want, timeout_s=180)
    finally:
        code = stop_worker(worker, log)
    assert code == 0, log.read_text()[-3000:]
    assert got.keys() == want.keys()
    for key, record in want.items():
        assert got[key] == record, key


async def test_two_workers_one_stopped_midstream_still_exact(kafka: str, tmp_path: Path) -> None:
    config = plantday.plant(machines=30, lines=6, kafka=kafka_block(partitions=6))
    events = plantday.day_events(config, seed=2, sample_s=60)
    want = comparable(replayed(config, events), DAY_CLOSED)
    await ensure_topics(kafka, config.kafka)
    half = len(events) // 2
    await produce_batches(kafka, config, events[:half])
    store = DirectoryStore(tmp_path)
    first = KpiWorker(
        Core.from_config(config), config.kafka, kafka, store, KpiMetrics.create(CollectorRegistry())
    )
    second = KpiWorker(
        Core.from_config(config), config.kafka, kafka, store, KpiMetrics.create(CollectorRegistry())
    )
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(first.run(stop_first)),
        asyncio.create_task(second.run(stop_second)),
    ]
    try:
        # Scale-out: the group splits the partitions between the two workers.
        async with asyncio.timeout(60):
            while not (first.parts and second.parts and len(first.parts) + len(second.parts) == 6):
                await asyncio.sleep(0.1)
        split = (sorted(first.parts), sorted(second.parts))
        stop_first.set()  # leaves the group: its partitions move to the second worker
        await asyncio.wait_for(tasks[0], 30)
        await produce_batches(kafka, config, events[half:])
        got = await read_closed_day(kafka, config, want, timeout_s=120)
    finally:
        stop_first.set()
        stop_second.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert got.keys() == want.keys()
    for key, record in want.items():
        assert got[key] == record, key
    assert set(split[0]).isdisjoint(split[1])
    assert sorted(second.parts) == list(range(6))  # the second took over every partition


def test_record_keys_name_scope_window_and_start() -> None:
    record = {
        "line": "l1",
        "machine": None,
        "window": "shift",
        "window_start": "2026-11-02T06:00:00Z",
    }
    assert record_key(record) == b"l1/*/shift/2026-11-02T06:00:00Z"
    assert record_key({**record, "machine": "m7"}) == b"l1/m7/shift/2026-11-02T06:00:00Z"


async def test_linepulse_produce_puts_a_file_on_home_partitions(kafka: str, tmp_path: Path) -> None:
    config, config_path, _ = classic_on_kafka(tmp_path, partitions=4)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *LINEPULSE,
            "produce",
            str(CLASSIC / "events.jsonl"),
            "--config",
            str(config_path),
            "--kafka",
            kafka,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "produce: 4492 events sent" in done.stderr
    home = machine_homes(config, 4)["filler-1"]
    consumer = AIOKafkaConsumer(
        config.kafka.telemetry.name, bootstrap_servers=kafka, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: dict[int, int] = {}
    try:
        async with asyncio.timeout(30):
            while sum(seen.values()) < 4492:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    for message in messages:
                        assert dict(message.headers)["content-type"] == ARROW.encode()
                        batch = pl.read_ipc_stream(message.value)
                        seen[tp.partition] = seen.get(tp.partition, 0) + batch.height
    finally:
        await consumer.stop()
    assert seen == {home: 4492}
