"""Fixtures for the integration tests: a real Apache Kafka broker (deploy/kafka/kafka.sh)
and a real Mosquitto (Debian's package).

Each is started once per test session, on free loopback ports, with its data in a
temporary folder, and stopped at the end of the session whatever happened. Tests that
stop a broker on purpose start their own (`KafkaBroker`, `MosquittoBroker`). Nothing is
skipped: if Java, the Kafka jars or Mosquitto cannot be had the fixture fails, since CI
installs them.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linepulse.runtime import free_loopback_ports

ROOT = Path(__file__).parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
# First start on a fresh checkout fetches the jars (~15 s) before the broker's own 60 s wait.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


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


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The --data-dir of every service a test starts (children inherit the variable): the
    test's own folder, never the user's state directory, where a spool one test left
    behind would be sent into the next test's topics."""
    folder = tmp_path / "linepulse-data"
    monkeypatch.setenv("LINEPULSE_DATA_DIR", str(folder))
    return folder


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


class KafkaBroker:
    """A broker of a test's own, for tests that stop and start it (outages)."""

    def __init__(self, data: Path) -> None:
        require_java()
        port, controller_port = free_loopback_ports(2)
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller_port),
            "KAFKA_DATA": str(data),
        }

    def start(self) -> None:
        started = kafka_sh("start", self.env, START_TIMEOUT_S)
        assert started.returncode == 0, f"kafka.sh start failed:\n{started.stdout}{started.stderr}"

    def stop(self) -> None:
        stopped = kafka_sh("stop", self.env, STOP_TIMEOUT_S)
        assert stopped.returncode == 0, f"kafka.sh stop failed:\n{stopped.stdout}{stopped.stderr}"


MOSQUITTO_START_TIMEOUT_S = 15


class MosquittoBroker:
    """Mosquitto on a loopback port with a config of ours; `stop()` and `start()` again keep
    the port and the persistence file, as a restarted plant broker would."""

    def __init__(self, folder: Path, *, extra_config: str = "") -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).is_file():
            pytest.fail(
                "MQTT integration tests need Mosquitto (Debian: apt-get install mosquitto); "
                "CI installs it: see .ci/run",
                pytrace=False,
            )
        self.binary = binary
        (self.port,) = free_loopback_ports(1)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto drops to the `mosquitto` user, which cannot write
            # pytest's folders: no persistence, no log. Run as whoever we are instead.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            f"log_dest file {folder}/mosquitto.log\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n" + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - Debian's mosquitto, our config
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + MOSQUITTO_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.folder / "mosquitto.log").read_text(errors="replace")
                pytest.fail(f"mosquitto exited with {self.proc.returncode}:\n{log}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"mosquitto did not listen on {self.port} within {MOSQUITTO_START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A running Mosquitto on a free loopback port, shared by the session's tests."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
