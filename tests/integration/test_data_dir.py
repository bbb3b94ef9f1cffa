"""State where it belongs (issue 15, item 5), through the CLI as a user runs it on a real
Kafka and a real Mosquitto.

The services started from an empty directory leave it empty: their state appears under
`--data-dir`, one subdirectory per service, so that kpi, alerts and ingest share one data
dir without sharing a file. And the README's "Run it on Kafka" block, kept verbatim in
`snippets/run-on-kafka.sh`, works when pasted: it waits for the API, then for the figures,
and answers the filler's shift record rather than `[]`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from bench.alerts import plant_yaml
from linepulse.runtime import free_loopback_ports
from tests.cli_command import LINEPULSE
from tests.integration.conftest import MosquittoBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
SNIPPET = Path(__file__).parent / "snippets" / "run-on-kafka.sh"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
SNIPPET_TIMEOUT_S = 240


def plant_file(folder: Path, kafka: str, mqtt_port: int) -> Path:
    """Two machines, an alert rule, an MQTT source and topics of their own; every state
    path left at its default, so all of it resolves against the data dir."""
    (webhook_port,) = free_loopback_ports(1)  # nothing listens: pages wait in the outbox
    config = yaml.safe_load(plant_yaml(2, webhook_port, kafka, Path("unused")))
    del config["alerts"]["state_dir"]
    tag = uuid.uuid4().hex[:8]
    config["sources"] = {
        "mqtt": [
            {
                "id": "plant-mqtt",
                "port": mqtt_port,
                "client_id": f"ingest-{tag}",
                "topics": [{"pattern": f"data-dir-{tag}/{{machine}}/{{signal}}"}],
            }
        ]
    }
    path = folder / "plant.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children of the test, each in a session of its own; what is still running at the
    end is stopped with its whole group (a snippet's background worker included)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)


def start(
    processes: list[subprocess.Popen[bytes]], args: list[str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    command = [*LINEPULSE, "--log-level", "info", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "LINEPULSE_KAFKA": ""},
            start_new_session=True,
        )
    processes.append(proc)
    return proc


def wait_until_ok(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not 200 within {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')}")


def test_the_services_write_their_state_under_the_data_dir_only(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    config = plant_file(tmp_path, kafka, mosquitto.port)
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    kpi_port, alerts_port, ingest_port = free_loopback_ports(3)
    common = ["--config", str(config), "--data-dir", str(data)]
    logs = {name: tmp_path / f"{name}.log" for name in ("kpi", "alerts", "ingest")}
    kpi = start(
        processes, ["kpi", "--api", "--port", str(kpi_port), *common], cwd, logs["kpi"]
    )  # the worker creates the topics the others wait for
    alerts = start(processes, ["alerts", "--port", str(alerts_port), *common], cwd, logs["alerts"])
    ingest = start(processes, ["ingest", "--port", str(ingest_port), *common], cwd, logs["ingest"])
    wait_until_ok(f"http://127.0.0.1:{kpi_port}/readyz", kpi, logs["kpi"])
    wait_until_ok(f"http://127.0.0.1:{alerts_port}/healthz", alerts, logs["alerts"])
    wait_until_ok(f"http://127.0.0.1:{ingest_port}/healthz", ingest, logs["ingest"])
    for proc in (ingest, alerts, kpi):
        proc.send_signal(signal.SIGTERM)
    for name, proc in (("ingest", ingest), ("alerts", alerts), ("kpi", kpi)):
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, logs[name].read_text(errors="replace")

    assert sorted(cwd.iterdir()) == []
    assert (data / "kpi" / "checkpoints").is_dir()
    assert (data / "kpi" / "history.duckdb").is_file()
    assert (data / "alerts" / "outbox.sqlite").is_file()
    assert (data / "ingest" / "spool").is_dir()
    # Each service says where its state lives.
    assert f"checkpoints in {data / 'kpi' / 'checkpoints'}" in logs["kpi"].read_text()
    assert f"history in {data / 'kpi' / 'history.duckdb'}" in logs["kpi"].read_text()
    assert f"outbox in {data / 'alerts'}" in logs["alerts"].read_text()
    assert f"spool in {data / 'ingest' / 'spool'}" in logs["ingest"].read_text()


def test_the_readme_run_on_kafka_block_answers_when_pasted(
    kafka: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The block as the README shows it; only the broker (the session's), the port (a free
    one) and the data dir (the test's) are swapped in."""
    text = SNIPPET.read_text()
    (port,) = free_loopback_ports(1)
    data = tmp_path / "data"
    for shown, ours in (
        ("127.0.0.1:9092", kafka),
        ("8080", str(port)),
        ("/tmp/lp-data", str(data)),  # noqa: S108 - the README's example path, replaced
    ):
        assert shown in text, f"{SNIPPET.name} no longer says {shown}: update this test"
        text = text.replace(shown, ours)
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    (cwd / "examples").symlink_to(ROOT / "examples")  # the block runs from a checkout
    bin_dir = str(Path(sys.executable).parent)  # `linepulse` as installed
    shell = subprocess.Popen(  # noqa: S603 - the README block, run as pasted
        ["bash", "-c", text],  # noqa: S607 - bash from PATH, as a user's terminal has it
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        start_new_session=True,
    )
    processes.append(shell)
    out, err = shell.communicate(timeout=SNIPPET_TIMEOUT_S)

    assert shell.returncode == 0, err.decode(errors="replace")
    answer = orjson.loads(out.strip().splitlines()[-1])
    assert [(r["machine"], r["window"], r["window_start"]) for r in answer] == [
        ("filler-1", "shift", "2026-11-02T06:00:00Z")
    ], err.decode(errors="replace")
    assert answer[0]["oee"] is not None
    assert sorted(p.name for p in cwd.iterdir()) == ["examples"]
    assert (data / "kpi" / "checkpoints").is_dir()
    assert (data / "kpi" / "history.duckdb").is_file()
