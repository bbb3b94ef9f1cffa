"""Fixtures for the integration tests: a real Apache Kafka broker (deploy/kafka/kafka.sh).

The broker is started once per test session, on free loopback ports, with its data in a
temporary folder, and stopped at the end of the session whatever happened. It is never
skipped: if Java or the Kafka jars cannot be had the fixture fails, since CI installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
# First start on a fresh checkout fetches the jars (~15 s) before the broker's own 60 s wait.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 (held open together, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def kafka_sh(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script with fixed arguments
        ["bash", str(KAFKA_SH), command],  # noqa: S607 - bash from PATH, as CI has it
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def require_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return
    if shutil.which("java") is None:
        pytest.fail(
            "Kafka integration tests need Java 17+ (`java` on PATH or JAVA_HOME) and Maven to "
            "fetch the broker jars; CI installs them: see deploy/kafka/kafka.sh",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running single-node KRaft broker; yields its bootstrap address "127.0.0.1:PORT"."""
    require_java()
    port, controller_port = free_loopback_ports(2)
    data = tmp_path_factory.mktemp("kafka-data")
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "KAFKA_DATA": str(data),
    }
    try:
        started = kafka_sh("start", env, START_TIMEOUT_S)
        if started.returncode != 0:
            pytest.fail(
                f"could not start Kafka (deploy/kafka/kafka.sh start, exit {started.returncode})"
                f"\n{started.stdout}\n{started.stderr}",
                pytrace=False,
            )
        yield f"127.0.0.1:{port}"
    finally:
        stopped = kafka_sh("stop", env, STOP_TIMEOUT_S)
        assert stopped.returncode == 0, f"kafka.sh stop failed:\n{stopped.stdout}{stopped.stderr}"
