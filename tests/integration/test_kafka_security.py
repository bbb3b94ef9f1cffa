"""Kafka over TLS and SASL against a real broker: the clients the services make from
`kafka.security` (linepulse/bus/security.py) authenticate, encrypt, and fail clearly.

The module starts its own broker (deploy/kafka/kafka.sh with KAFKA_EXTRA_PROPERTIES) with
three client listeners: PLAINTEXT (the script's readiness check), SASL_SSL (PLAIN and
SCRAM-SHA-512 users) and SSL requiring a client certificate. The certificates come from a
throwaway CA made for the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from linepulse.bus.clients import AioKafkaClients
from linepulse.bus.security import KafkaSecurity
from linepulse.config import parse_config
from linepulse.events import EVENT_SCHEMA
from linepulse.runtime import free_loopback_ports
from linepulse.sources import IngestSettings
from linepulse.wire import decode_records
from services.ingest.metrics import IngestMetrics
from services.ingest.spooled_sink import SpooledSink
from tests.cli_command import LINEPULSE
from tests.integration.conftest import START_TIMEOUT_S, STOP_TIMEOUT_S, kafka_sh, require_java
from tests.integration.pki import Issued, TestCa

pytestmark = pytest.mark.integration

USER = "linepulse"
PASSWORD = "s3cret-k4fka"
# How long a refused client may take to say so: far above a working connection (well under
# a second here), far below "hangs" (aiokafka retries the bootstrap until its own timeout).
REFUSAL_BOUND_S = 60


@dataclass(frozen=True)
class SecureBroker:
    plaintext: str
    sasl_ssl: str
    ssl: str
    ca: Path
    client: Issued
    data: Path


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    require_java()
    folder = tmp_path_factory.mktemp("kafka-secure")
    ca = TestCa(folder / "pki")
    server = ca.issue("broker", server=True)
    client = ca.issue("ingest", server=False)
    port, controller, sasl_port, ssl_port = free_loopback_ports(4)
    host = "127.0.0.1"
    extra = folder / "security.properties"
    extra.write_text(
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller},"
        f"SASL_SSL://{host}:{sasl_port},SSL://{host}:{ssl_port}\n"
        f"advertised.listeners=PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sasl_port},"
        f"SSL://{host}:{ssl_port}\n"
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SASL_SSL:SASL_SSL,SSL:SSL\n"
        "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512\n"
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{USER}="{PASSWORD}";\n'
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        "ssl.keystore.type=PEM\n"
        f"ssl.keystore.location={server.bundle}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={ca.certificate}\n"
        "listener.name.ssl.ssl.client.auth=required\n",
        encoding="utf-8",
    )
    data = folder / "data"
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_DATA": str(data),
        "KAFKA_EXTRA_PROPERTIES": str(extra),
        "KAFKA_SCRAM_USERS": f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]",
    }
    try:
        started = kafka_sh("start", env, START_TIMEOUT_S)
        if started.returncode != 0:
            pytest.fail(
                f"could not start the secure Kafka (exit {started.returncode})\n"
                f"{started.stdout}\n{started.stderr}",
                pytrace=False,
            )
        yield SecureBroker(
            f"{host}:{port}",
            f"{host}:{sasl_port}",
            f"{host}:{ssl_port}",
            ca.certificate,
            client,
            data,
        )
    finally:
        stopped = kafka_sh("stop", env, STOP_TIMEOUT_S)  # by the PID in data/kafka.pid
        assert stopped.returncode == 0, f"kafka.sh stop failed:\n{stopped.stdout}{stopped.stderr}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def round_trip(clients: AioKafkaClients, bootstrap: str, value: bytes) -> list[bytes]:
    """Create a topic, produce one record, read it back: every client kind, each with
    the same security arguments."""
    topic = unique("secure")
    admin = clients.admin(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = clients.producer(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"press-1")
    finally:
        await producer.stop()
    consumer = clients.consumer(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        while not values:
            fetched = await consumer.getmany(partition, timeout_ms=1000)
            values += [r.value for r in fetched.get(partition, []) if r.value is not None]
        return values
    finally:
        await consumer.stop()


@asynccontextmanager
async def started_producer(clients: AioKafkaClients, bootstrap: str) -> AsyncIterator[Any]:
    producer = clients.producer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        async with asyncio.timeout(REFUSAL_BOUND_S):
            await producer.start()
        yield producer
    finally:
        await producer.stop()


def sasl(broker: SecureBroker, mechanism: str, **extra: Any) -> KafkaSecurity:
    return KafkaSecurity.model_validate(
        {
            "protocol": "SASL_SSL",
            "sasl_mechanism": mechanism,
            "username": USER,
            "ca_file": str(broker.ca),
            **extra,
        }
    )


# -- what works -----------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_round_trip_over_sasl_ssl_with_the_password_from_a_file(
    secure_kafka: SecureBroker, tmp_path: Path, mechanism: str
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    clients = AioKafkaClients(sasl(secure_kafka, mechanism, password_file=str(secret)))
    assert await round_trip(clients, secure_kafka.sasl_ssl, b"over SASL_SSL") == [b"over SASL_SSL"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_password_from_the_environment_and_nothing_logs_it(
    secure_kafka: SecureBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
) -> None:
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)  # aiokafka's connection and SASL logging included
    clients = AioKafkaClients(sasl(secure_kafka, mechanism))
    assert await round_trip(clients, secure_kafka.sasl_ssl, b"env") == [b"env"]
    assert any("SaslAuthenticateRequest(<redacted>)" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("aiokafka") for r in caplog.records)  # DEBUG was on
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(clients)
    assert PASSWORD not in repr(clients.options().get("ssl_context"))


async def test_mutual_tls_round_trip_with_a_client_certificate(
    secure_kafka: SecureBroker,
) -> None:
    security = KafkaSecurity(
        protocol="SSL",
        ca_file=secure_kafka.ca,
        certificate=secure_kafka.client.certificate,
        private_key=secure_kafka.client.key,
    )
    clients = AioKafkaClients(security)
    assert await round_trip(clients, secure_kafka.ssl, b"mTLS") == [b"mTLS"]


# -- what fails, and how --------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_a_wrong_password_is_refused_promptly_with_the_reason(
    secure_kafka: SecureBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mechanism: str,
) -> None:
    monkeypatch.setenv("KAFKA_TEST_PASSWORD", "guess")
    caplog.set_level(logging.DEBUG)
    clients = AioKafkaClients(sasl(secure_kafka, mechanism, password_env="KAFKA_TEST_PASSWORD"))
    with pytest.raises(KafkaError) as refused:
        async with started_producer(clients, secure_kafka.sasl_ssl):
            pass
    # aiokafka's start() raises "Unable to bootstrap"; the reason is its ERROR line.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("SaslAuthenticationFailed" in m for m in errors), (repr(refused.value), errors)
    assert "guess" not in caplog.text  # aiokafka logs the PLAIN request at DEBUG: redacted


async def test_a_plaintext_client_on_the_tls_listener_fails(
    secure_kafka: SecureBroker,
) -> None:
    with pytest.raises(KafkaConnectionError):
        async with started_producer(AioKafkaClients(), secure_kafka.ssl):
            pass


async def test_a_broker_signed_by_an_unknown_ca_is_refused(
    secure_kafka: SecureBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = TestCa(tmp_path / "other", "Somebody else's CA")
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    security = KafkaSecurity(protocol="SSL", ca_file=other.certificate)
    with pytest.raises(KafkaConnectionError):
        async with started_producer(AioKafkaClients(security), secure_kafka.ssl):
            pass
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_the_tls_listener_refuses_a_client_without_a_certificate(
    secure_kafka: SecureBroker,
) -> None:
    security = KafkaSecurity(protocol="SSL", ca_file=secure_kafka.ca)
    with pytest.raises(KafkaConnectionError):
        async with started_producer(AioKafkaClients(security), secure_kafka.ssl):
            pass


def test_the_system_store_does_not_trust_the_test_ca(secure_kafka: SecureBroker) -> None:
    """The premise of the refusals above: without `ca_file` the context is the system's."""
    context = KafkaSecurity(protocol="SSL").ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


# -- the services, end to end ---------------------------------------------------------------

ROOT = Path(__file__).parents[2]
CLASSIC = ROOT / "examples" / "classic-oee"


def secure_plant(broker: SecureBroker, folder: Path, **security: Any) -> Path:
    """The classic example plant on its own topics, over SASL_SSL (SCRAM-SHA-512)."""
    plant = yaml.safe_load((CLASSIC / "plant.yaml").read_text("utf-8"))
    name = unique("e2e")
    plant["kafka"] = {
        "telemetry": {"name": f"{name}.telemetry", "partitions": 2},
        "kpi": {"name": f"{name}.kpi", "partitions": 1},
        "dlq": {"name": f"{name}.dlq", "partitions": 1},
        "status": {"name": f"{name}.status", "partitions": 1},
        "group": name,
        "security": {
            "protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": USER,
            "ca_file": str(broker.ca),
            **security,
        },
    }
    path = folder / "plant.yaml"
    path.write_text(yaml.safe_dump(plant), encoding="utf-8")
    return path


def cli_env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LINEPULSE_KAFKA_PASSWORD"}
    if password is not None:
        env["LINEPULSE_KAFKA_PASSWORD"] = password
    return env


def linepulse(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI with test arguments
        [*LINEPULSE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
        cwd=ROOT,
    )


async def test_produce_and_the_kpi_worker_over_sasl_ssl(
    secure_kafka: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`linepulse produce` and `linepulse kpi` as users run them, with the password in
    LINEPULSE_KAFKA_PASSWORD: telemetry in, KPI records out, all over SASL_SSL, and the
    broker's plaintext port never named."""
    config = secure_plant(secure_kafka, tmp_path)
    env = cli_env(PASSWORD)
    kafka = secure_kafka.sasl_ssl
    produced = linepulse(
        "--log-level", "debug", "produce", CLASSIC / "events.jsonl", "-c", config,
        "--kafka", kafka, env=env,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    assert "events sent" in produced.stderr
    assert PASSWORD not in produced.stderr
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", PASSWORD)  # for this test's reader
    plant = yaml.safe_load(config.read_text("utf-8"))
    clients = AioKafkaClients(KafkaSecurity.model_validate(plant["kafka"]["security"]))
    log = tmp_path / "kpi.log"  # a file, not a pipe: a full pipe would block the worker
    written = log.open("w", encoding="utf-8")
    worker = subprocess.Popen(  # noqa: S603, ASYNC220 - our own CLI, stopped by its PID below
        [*LINEPULSE, "--log-level", "info", "kpi", "-c", str(config),
         "--kafka", kafka, "--state-dir", str(tmp_path / "state")],
        env=env, cwd=ROOT, stderr=written, text=True,
    )  # fmt: skip
    try:
        consumer = clients.consumer(
            plant["kafka"]["kpi"]["name"],
            bootstrap_servers=kafka,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        try:
            records: list[dict[str, Any]] = []
            while not records:
                assert worker.poll() is None, "the worker exited"
                fetched = await consumer.getmany(timeout_ms=1000)
                records += [json.loads(r.value) for rs in fetched.values() for r in rs if r.value]
        finally:
            await consumer.stop()
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, timeout=120)
        written.close()
    stderr = log.read_text("utf-8")
    assert worker.returncode == 0, stderr
    assert {r["machine"] for r in records if r.get("machine")} == {"filler-1"}
    assert PASSWORD not in stderr


def test_the_cli_says_which_secret_is_missing_before_starting(
    secure_kafka: SecureBroker, tmp_path: Path
) -> None:
    config = secure_plant(secure_kafka, tmp_path, password_file=str(tmp_path / "absent"))
    refused = linepulse(
        "produce", CLASSIC / "events.jsonl", "-c", config, "--kafka", secure_kafka.sasl_ssl,
        env=cli_env(None),
    )  # fmt: skip
    assert refused.returncode == 2
    assert f"kafka.security.password_file: cannot read {tmp_path / 'absent'}" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_the_ingest_sink_over_mutual_tls(secure_kafka: SecureBroker, tmp_path: Path) -> None:
    """The ingest service's Kafka sink (its own aiokafka producer, not the factory's) with
    a client certificate: samples land on the telemetry topic."""
    name = unique("sink")
    plant = parse_config(
        {
            "site": "s",
            "lines": [{"id": "line-1", "machines": [{"id": "press-1"}]}],
            "kafka": {
                "telemetry": {"name": f"{name}.telemetry", "partitions": 1},
                "dlq": {"name": f"{name}.dlq", "partitions": 1},
                "kpi": {"name": f"{name}.kpi", "partitions": 1},
                "status": {"name": f"{name}.status", "partitions": 1},
                "security": {
                    "protocol": "SSL",
                    "ca_file": str(secure_kafka.ca),
                    "certificate": str(secure_kafka.client.certificate),
                    "private_key": str(secure_kafka.client.key),
                },
            },
        }
    )
    sink = SpooledSink(
        plant,
        secure_kafka.ssl,
        IngestSettings(spool_dir=tmp_path / "spool"),
        IngestMetrics.create(CollectorRegistry()),
    )
    await sink.start()
    samples = pl.DataFrame(
        {
            "ts": [1_700_000_000_000 + i for i in range(10)],
            "machine": ["press-1"] * 10,
            "signal": ["total_count"] * 10,
            "value_num": [float(i) for i in range(10)],
            "value_int": [None] * 10,
            "value_str": [None] * 10,
            "reason": [None] * 10,
            "quality": ["good"] * 10,
        },
        schema=EVENT_SCHEMA,
    )
    await sink.put(samples)
    await sink.close(timeout_s=120)
    assert sink.sent_samples == 10
    clients = AioKafkaClients(plant.kafka.security)
    consumer = clients.consumer(bootstrap_servers=secure_kafka.ssl)
    await consumer.start()
    try:
        partition = TopicPartition(plant.kafka.telemetry.name, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        rows: list[pl.DataFrame] = []
        while sum(r.height for r in rows) < 10:
            fetched = await consumer.getmany(partition, timeout_ms=1000)
            for record in fetched.get(partition, []):
                rows.append(decode_records([(record.value, record.headers, record.offset)]).events)
    finally:
        await consumer.stop()
    assert pl.concat(rows)["value_num"].to_list() == [float(i) for i in range(10)]
