"""End to end: `linepulse simulate` serves the example plant (two OPC-UA servers, MQTT JSON
topics and Sparkplug B on a real Mosquitto), `linepulse ingest` reads it into a real Kafka,
and what lands on the telemetry topic is compared with the simulator's ground truth.

Second test, with faults: Mosquitto is restarted and Kafka is stopped for a while during
the run; afterwards the telemetry topic still holds every true event the ingester could
have seen, and the ingester's own spool carried the Kafka outage.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from linepulse.runtime import free_loopback_ports
from linepulse.wire import decode_records
from tests.integration.conftest import KafkaBroker, MosquittoBroker
from tests.integration.test_kpi_worker import start_cli

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "simulated-plant" / "plant.yaml"
# The KPI signals must arrive exactly; analog tags pass an OPC-UA deadband on some machines.
EXACT = frozenset({"state", "total_count", "good_count", "reject_count", "product"})
Key = tuple[int, str, str, Any, str | None]
TAIL_MS = 3_000  # a tick, a publishing interval and some


def example_on(tmp: Path, mqtt_port: int, bootstrap: str) -> Path:
    """The example plant on free loopback ports, with topics of this test's own."""
    data = yaml.safe_load(EXAMPLE.read_text())
    ports = free_loopback_ports(len(data["sources"]["opcua"]))
    for source, port in zip(data["sources"]["opcua"], ports, strict=True):
        path = source["endpoint"].split("/", 3)[3]
        source["endpoint"] = f"opc.tcp://127.0.0.1:{port}/{path}"
    for source in data["sources"]["mqtt"]:
        source["port"] = mqtt_port
        source["client_id"] = f"ingest-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:8]
    data["kafka"] = {
        "bootstrap": bootstrap,
        "telemetry": {"name": f"telemetry-{tag}", "partitions": 3},
        "kpi": {"name": f"kpi-{tag}", "partitions": 3},
        "dlq": {"name": f"dlq-{tag}", "partitions": 1},
        "status": {"name": f"status-{tag}", "partitions": 1},
    }
    data["ingest"] = {
        "spool_dir": str(tmp / "spool"),
        "state_dir": str(tmp / "state"),
        "memory_samples": 200,
    }
    config = tmp / "plant.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


async def read_telemetry(bootstrap: str, topic: str) -> list[Key]:
    """Every event on the telemetry topic, as comparable tuples."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    keys: list[Key] = []
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for tp, messages in batch.items():
                decoded = decode_records(
                    ((m.value, m.headers, m.offset) for m in messages), f"{tp.topic}"
                )
                assert decoded.rejected == []
                for ts, machine, sig, num, whole, text, reason, _ in decoded.events.iter_rows():
                    value = text if text is not None else num if whole is None else float(whole)
                    keys.append((ts, machine, sig, value, reason))
    finally:
        await consumer.stop()
    return keys


def read_truth(path: Path) -> list[Key]:
    keys = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        value = event["value"]
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = float(value)
        keys.append((event["ts"], event["machine"], event["signal"], value, event.get("reason")))
    return keys


def stop_child(child: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float = 60) -> int:
    child.send_signal(sig)
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise


def compare(truth: list[Key], telemetry: list[Key]) -> dict[str, int]:
    """Every exact-signal truth event from a (machine, signal)'s first sample on the topic
    to the machine's last is there, and nothing is there that the simulator did not send,
    except `unknown` states (connection lost, Sparkplug death) and re-reads of current
    values. Before the first: the ingester was not connected yet (its first OPC-UA sample
    of a node is the value read at connect, whatever its age). After the last: an OPC-UA
    server stopped before its next publish, whose values no client ever saw; that tail is
    bounded below."""
    seen = set(telemetry)
    first: dict[tuple[str, str], int] = {}
    last: dict[str, int] = {}
    for ts, machine, sig, value, _ in telemetry:
        if sig in EXACT and value != "unknown":
            first[machine, sig] = min(first.get((machine, sig), ts), ts)
            last[machine] = max(last.get(machine, ts), ts)
    true_last: dict[str, int] = {}
    for ts, machine, sig, *_ in truth:
        if sig in EXACT:
            true_last[machine] = max(true_last.get(machine, ts), ts)
    late = {m: true_last[m] - last[m] for m in last if true_last.get(m, 0) - last[m] > TAIL_MS}
    assert late == {}, f"machines whose data stopped arriving early (ms before the end): {late}"
    missing = [
        k
        for k in truth
        if k[2] in EXACT
        and (k[1], k[2]) in first
        and first[k[1], k[2]] < k[0] <= last[k[1]]
        and k not in seen
    ]
    true_set = set(truth)
    extra = [
        k
        for k in telemetry
        if k[2] in EXACT and k not in true_set and not (k[2] == "state" and k[3] == "unknown")
    ]
    assert missing == [], f"{len(missing)} true events never reached Kafka, e.g. {missing[:5]}"
    # A re-read after a reconnect is the current value at receipt: the same value, later.
    latest = {(k[1], k[2], k[3]) for k in truth}
    unexplained = [k for k in extra if (k[1], k[2], k[3]) not in latest]
    assert unexplained == [], f"events on Kafka the simulator never sent: {unexplained[:5]}"
    return {"truth": len(truth), "telemetry": len(telemetry), "re-read": len(extra)}


async def wait_for_lines(path: Path, lines: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= lines:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} has fewer than {lines} lines after {timeout_s} s")


async def test_simulated_plant_reaches_kafka_as_the_simulator_sent_it(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    config = example_on(tmp_path, mosquitto.port, kafka)
    truth = tmp_path / "truth.jsonl"
    ingest = start_cli(["ingest", "--config", str(config), "--port", "0"], tmp_path / "ingest.log")
    await asyncio.sleep(3)  # subscribed before the simulator publishes its first values
    simulator = start_cli(
        ["simulate", "--config", str(config), "--seed", "7", "--truth", str(truth)],
        tmp_path / "simulate.log",
    )
    try:
        await wait_for_lines(truth, 2_000, timeout_s=240)
    finally:
        simulated = stop_child(simulator, signal.SIGINT)
        await asyncio.sleep(3)  # the deaths and the last batches reach the ingester
        ingested = stop_child(ingest, signal.SIGTERM)
    logs = (tmp_path / "ingest.log").read_text()
    assert simulated == 0, (tmp_path / "simulate.log").read_text()[-3000:]
    assert ingested == 0, logs[-3000:]
    data = yaml.safe_load(config.read_text())
    telemetry = await read_telemetry(kafka, data["kafka"]["telemetry"]["name"])
    figures = compare(read_truth(truth), telemetry)
    machines = {k[1] for k in telemetry}
    assert len(machines) == 20, f"machines on Kafka: {sorted(machines)}"
    # Sparkplug DDEATH/NDEATH and the OPC-UA servers going away mark machines unknown.
    unknown = Counter(k[1] for k in telemetry if k[2] == "state" and k[3] == "unknown")
    assert {"printer-3", "checkweigher-3", "robot-3"} <= set(unknown)
    assert figures["telemetry"] >= 1_000, figures


async def test_mosquitto_restart_and_a_kafka_outage_lose_nothing(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    mqtt = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    mqtt.start()
    config = example_on(tmp_path, mqtt.port, broker.bootstrap)
    truth = tmp_path / "truth.jsonl"
    ingest = start_cli(["ingest", "--config", str(config), "--port", "0"], tmp_path / "ingest.log")
    simulator: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(3)
        simulator = start_cli(
            ["simulate", "--config", str(config), "--seed", "11", "--truth", str(truth)],
            tmp_path / "simulate.log",
        )
        await wait_for_lines(truth, 1_000, timeout_s=240)
        mqtt.stop()  # the plant's broker restarts: both sides reconnect
        await asyncio.sleep(3)
        mqtt.start()
        await wait_for_lines(truth, 2_000, timeout_s=240)
        broker.stop()  # Kafka away: the ingester spools
        lines = truth.read_text().count("\n")
        await wait_for_lines(truth, lines + 1_500, timeout_s=240)
        broker.start()
        await wait_for_lines(truth, lines + 2_500, timeout_s=240)
    finally:
        if simulator is not None:
            stop_child(simulator, signal.SIGINT)
        await asyncio.sleep(3)
        code = stop_child(ingest, signal.SIGTERM, timeout_s=120)
        mqtt.stop()
    logs = (tmp_path / "ingest.log").read_text()
    assert code == 0, logs[-3000:]
    data = yaml.safe_load(config.read_text())
    try:
        telemetry = await read_telemetry(broker.bootstrap, data["kafka"]["telemetry"]["name"])
    finally:
        broker.stop()
    figures = compare(read_truth(truth), telemetry)
    assert "spool" in logs.lower(), "the outage never reached the spool: " + logs[-2000:]
    assert figures["telemetry"] >= 1_000, figures
