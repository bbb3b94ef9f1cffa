"""Topic layouts on a real Kafka: topics laid out as a broker's auto-creation leaves them (1
partition, cleanup.policy=delete) make every service refuse to start, through the CLI as a
user runs it (exit 2, one paragraph, no traceback); the configured layout starts; and no
LinePulse client creates a topic, even on a broker that allows it (issue 14, item 8).

Each test has topics of its own (bench.alerts.plant_yaml names them with a random tag), so
they share the session's broker with the other tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from bench.alerts import plant_yaml
from linepulse.bus import AioKafkaClients
from linepulse.bus.topics import TopicLayoutError, TopicsMissingError, ensure_topics
from linepulse.config import PlantConfig, load_config
from linepulse.runtime import free_loopback_ports
from services.alerts.service import AlertService
from services.ingest.metrics import IngestMetrics
from services.ingest.spooled_sink import SpooledSink
from tests.cli_command import LINEPULSE
from tests.integration.conftest import KafkaBroker
from tests.integration.test_kpi_worker import start_cli

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120


def plant_file(tmp_path: Path, bootstrap: str) -> tuple[Path, PlantConfig]:
    """A plant with two machines, an alert rule, and topics of its own: telemetry and kpi
    with 2 partitions, dlq and status with 1."""
    path = tmp_path / "plant.yaml"
    path.write_text(plant_yaml(2, 9, bootstrap, tmp_path / "alerts-state"))
    return path, load_config(path)


def linepulse(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI with test arguments
        [*LINEPULSE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        env={**os.environ, "LINEPULSE_KAFKA": ""},
    )


async def create_as_auto_creation_does(bootstrap: str, *names: str) -> None:
    """What a broker with auto.create.topics.enable makes: its defaults, 1 partition and
    cleanup.policy=delete."""
    admin = AioKafkaClients().admin(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        await admin.close()


async def topics_on(bootstrap: str) -> set[str]:
    admin = AioKafkaClients().admin(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def records_in(bootstrap: str, topic: str) -> int:
    consumer = AioKafkaClients().consumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=0)
        return sum((await consumer.end_offsets(consumer.assignment())).values())
    finally:
        await consumer.stop()


async def test_every_service_refuses_auto_created_topics(kafka: str, tmp_path: Path) -> None:
    path, plant = plant_file(tmp_path, kafka)
    telemetry, kpi = plant.kafka.telemetry.name, plant.kafka.kpi.name
    await create_as_auto_creation_does(kafka, telemetry, kpi)
    events = tmp_path / "events.jsonl"
    event = {
        "ts": "2026-11-02T06:00:00Z",
        "machine": "m-000",
        "signal": "state",
        "value": "running",
    }
    events.write_bytes(orjson.dumps(event) + b"\n")

    wrong_telemetry = (
        f"topic '{telemetry}' has 1 partition and cleanup.policy=delete, expected 2 partitions "
        "(kafka.telemetry.partitions)"
    )
    wrong_kpi = (
        f"topic '{kpi}' has 1 partition and cleanup.policy=delete, expected 2 partitions "
        "(kafka.kpi.partitions) and cleanup.policy=compact"
    )
    fix_kpi_policy = (
        f"`kafka-configs.sh --bootstrap-server {kafka} --alter --entity-type topics "
        f"--entity-name {kpi} --add-config cleanup.policy=compact`"
    )
    delete_telemetry = f"`kafka-topics.sh --bootstrap-server {kafka} --delete --topic {telemetry}`"
    commands: dict[str, tuple[list[str | Path], list[str]]] = {
        "kpi": (
            ["kpi", "--config", path, "--state-dir", tmp_path / "kpi"],
            [wrong_telemetry, wrong_kpi, fix_kpi_policy, delete_telemetry],
        ),
        "api": (
            ["api", "--config", path, "--db", ":memory:"],
            [wrong_telemetry, wrong_kpi, fix_kpi_policy],
        ),
        "alerts": (
            ["alerts", "--config", path, "--port", "0", "--state-dir", tmp_path / "alerts"],
            [wrong_telemetry, wrong_kpi, fix_kpi_policy],
        ),
        "produce": (["produce", events, "--config", path], [wrong_telemetry, delete_telemetry]),
    }
    for name, (args, expected) in commands.items():
        done = await asyncio.to_thread(linepulse, *args)
        assert done.returncode == 2, f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{name}:\n{done.stderr[-3000:]}"
        (message,) = [line for line in done.stderr.splitlines() if line.startswith("linepulse:")]
        for part in expected:
            assert part in message, f"{name}: {part!r} not in\n{message}"
        if name == "produce":
            assert kpi not in message  # produce uses the telemetry topic only

    # The ingester's Kafka side (what `linepulse ingest` starts first) refuses too.
    sink = SpooledSink(
        plant,
        kafka,
        plant.ingest.model_copy(update={"spool_dir": tmp_path / "spool"}),
        IngestMetrics.create(CollectorRegistry()),
    )
    with pytest.raises(TopicLayoutError, match=re.escape(wrong_telemetry)):
        await sink.start()

    # Never silently used: nothing was written to them, and their layout is as it was.
    assert await records_in(kafka, telemetry) == 0
    assert await records_in(kafka, kpi) == 0


async def test_the_configured_layout_starts_and_stops_cleanly(kafka: str, tmp_path: Path) -> None:
    path, plant = plant_file(tmp_path, kafka)
    # Created by the KPI service's own start (`linepulse kpi` creates the missing ones).
    kpi_port, alerts_port = free_loopback_ports(2)
    log = tmp_path / "services.log"
    kpi = start_cli(
        [
            "kpi", "--config", str(path), "--state-dir", str(tmp_path / "kpi"),
            "--api", "--port", str(kpi_port), "--db", ":memory:",
        ],
        log,
    )  # fmt: skip
    alerts = start_cli(
        [
            "alerts", "--config", str(path), "--port", str(alerts_port),
            "--state-dir", str(tmp_path / "alerts"),
        ],
        log,
    )  # fmt: skip
    try:
        for port in (kpi_port, alerts_port):
            await wait_healthy(port, log)
    finally:
        codes = [await asyncio.to_thread(stop_child, child) for child in (kpi, alerts)]
    assert codes == [0, 0], log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    layout = await ensure_topics(kafka, plant.kafka, AioKafkaClients())  # checks, creates none
    assert layout == {
        "telemetry": 2, "kpi": 2, "dlq": 1, "status": 1, "reasons": 1, "alerts": 1, "spc": 1,
    }  # fmt: skip


async def test_alerts_wait_for_the_topics_the_kpi_service_creates(
    kafka: str, tmp_path: Path
) -> None:
    _, plant = plant_file(tmp_path, kafka)
    alerts = AlertService(plant, kafka, tmp_path / "alerts", clients=AioKafkaClients())
    waiting = asyncio.create_task(alerts.wait_for_topics(asyncio.Event(), wait_s=120))
    await ensure_topics(kafka, plant.kafka, AioKafkaClients())  # as `linepulse kpi` starting
    assert await asyncio.wait_for(waiting, 150) is True


async def wait_healthy(port: int, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"nothing healthy on :{port}\n{log.read_text()[-3000:]}")


def stop_child(child: subprocess.Popen[bytes]) -> int:
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return -9


# -- a broker that allows auto-creation (Kafka's default, and the compose stack's) ---------


@pytest.fixture(scope="module")
def permissive_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own with auto.create.topics.enable=true: there a client's
    metadata request creates the topics it names, unless the request says not to."""
    folder = tmp_path_factory.mktemp("permissive-kafka")
    extra = folder / "auto-create.properties"
    extra.write_text("auto.create.topics.enable=true\n")
    broker = KafkaBroker(folder / "data")
    broker.env["KAFKA_EXTRA_PROPERTIES"] = str(extra)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


async def test_linepulse_clients_never_create_the_topics_they_use(permissive_kafka: str) -> None:
    """A consumer of a missing topic, a producer asking for its partitions, an admin
    describing it: none creates the topic."""
    clients = AioKafkaClients()
    # Built as the alerts service builds its consumers (the ones that created `telemetry`
    # and `kpi` in the compose stack), with a shorter request timeout.
    consumer = clients.consumer(
        "consumed-missing",
        bootstrap_servers=permissive_kafka,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        client_id="linepulse-alerts",
        request_timeout_ms=5_000,
    )
    try:
        with pytest.raises(KafkaError):  # aiokafka: UnknownTopicOrPartitionError at start
            await consumer.start()
    finally:
        await consumer.stop()
    assert "consumed-missing" not in await topics_on(permissive_kafka)

    producer = clients.producer(bootstrap_servers=permissive_kafka, request_timeout_ms=5_000)
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.partitions_for("produced-missing")
    finally:
        await producer.stop()
    assert "produced-missing" not in await topics_on(permissive_kafka)

    admin = clients.admin(bootstrap_servers=permissive_kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics(["described-missing"])
        assert described["error_code"] != 0
    finally:
        await admin.close()
    assert "described-missing" not in await topics_on(permissive_kafka)


async def test_alerts_refuse_missing_topics_without_creating_them(
    permissive_kafka: str, tmp_path: Path
) -> None:
    _, plant = plant_file(tmp_path, permissive_kafka)
    alerts = AlertService(plant, permissive_kafka, tmp_path / "alerts", clients=AioKafkaClients())
    with pytest.raises(TopicsMissingError) as refused:
        await alerts.wait_for_topics(asyncio.Event(), wait_s=1)
    message = str(refused.value)
    assert "linepulse alerts never creates topics" in message
    assert f"--create --topic {plant.kafka.kpi.name} --partitions 2" in message
    names = {plant.kafka.telemetry.name, plant.kafka.kpi.name}
    assert not names & await topics_on(permissive_kafka)


async def test_a_service_started_before_its_broker_waits_for_it(tmp_path: Path) -> None:
    """As compose starts a stack: `ensure_topics` (every service's first step) against a
    broker that is not up yet waits, says so once, and goes on when the broker answers."""
    broker = KafkaBroker(tmp_path / "data")
    _, plant = plant_file(tmp_path, broker.bootstrap)
    kafka = plant.kafka
    waiting = asyncio.create_task(ensure_topics(broker.bootstrap, kafka, AioKafkaClients()))
    await asyncio.sleep(3)
    assert not waiting.done()
    await asyncio.to_thread(broker.start)
    try:
        partitions = await asyncio.wait_for(waiting, 60)
        assert partitions["telemetry"] == kafka.telemetry.partitions
    finally:
        await asyncio.to_thread(broker.stop)
