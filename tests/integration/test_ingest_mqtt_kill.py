"""`kill -9` of `linepulse ingest` while QoS 1 MQTT data flows loses nothing the broker had
accepted (issue 19, item 5): a message is acknowledged to the broker only once the sink
keeps what it carried (Kafka acknowledged it, or it is in the disk spool), so whatever the
killed process held unacknowledged the broker sends again to the restarted one.

Real parts: the session's Mosquitto and Kafka, the CLI as a user runs it, a publisher
sending numbered counter values at QoS 1. Duplicates are allowed (a message kept but not
yet acknowledged when the process died comes again); a missing number is a loss.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import aiomqtt
import pytest

from tests.foreign.harness import plant_config
from tests.integration.conftest import MosquittoBroker
from tests.integration.test_ingest_e2e import read_telemetry, stop_child
from tests.integration.test_kpi_worker import start_cli

pytestmark = pytest.mark.integration

MESSAGES = 3_000
RATE_PER_S = 500
KILL_AFTER = 1_000  # messages published before the kill
DOWN_S = 1.5  # the ingester's absence; the broker queues meanwhile (persistent session)


def plant(tmp: Path, mqtt_port: int, bootstrap: str, prefix: str) -> tuple[Path, str]:
    """One machine read from one MQTT source at QoS 1; the config file and telemetry topic."""
    source = {
        "id": "line-mqtt",
        "host": "127.0.0.1",
        "port": mqtt_port,
        "qos": 1,
        "client_id": f"ingest-{uuid.uuid4().hex[:8]}",  # the persistent session outlives the kill
        "reconnect_min_s": 0.2,
        "topics": [{"pattern": f"{prefix}/{{machine}}/{{signal}}"}],
    }
    return plant_config(tmp, bootstrap, ["m1"], {"mqtt": [source]}, {"linger_ms": 200})


async def wait_subscribed(log: Path, connects: int) -> None:
    for _ in range(300):
        if log.exists() and log.read_text().count("mqtt line-mqtt: connected") >= connects:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the ingester never connected:\n" + log.read_text()[-3000:])


async def test_kill_9_of_the_ingester_loses_no_qos1_message(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    config, topic = plant(tmp_path, mosquitto.port, kafka, prefix)
    log = tmp_path / "ingest.log"
    ingest = start_cli(["ingest", "--config", str(config), "--port", "0"], log)
    await wait_subscribed(log, 1)
    base_ms = 1_800_000_000_000
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as publisher:
        for n in range(1, MESSAGES + 1):
            payload = f'{{"value": {n}, "ts": {base_ms + n}}}'
            await publisher.publish(f"{prefix}/m1/total_count", payload, qos=1)
            if n == KILL_AFTER:
                ingest.send_signal(signal.SIGKILL)  # no flush, no spool write, no goodbye
                ingest.wait()
                await asyncio.sleep(DOWN_S)
                ingest = start_cli(["ingest", "--config", str(config), "--port", "0"], log)
            await asyncio.sleep(1 / RATE_PER_S)
    await wait_subscribed(log, 2)
    await asyncio.sleep(3)  # the last batches through linger and Kafka
    code = stop_child(ingest, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    values = [int(k[3]) for k in await read_telemetry(kafka, topic) if k[2] == "total_count"]
    missing = sorted(set(range(1, MESSAGES + 1)) - set(values))
    assert missing == [], f"{len(missing)} acknowledged messages lost, e.g. {missing[:10]}"
    # The kill happened mid-stream: the test is only worth something if data was in flight.
    assert len(values) >= MESSAGES
