"""The MQTT ingester against a real Mosquitto: plain topics, Sparkplug B, bad input, broker
restarts, passwords and TLS. The Kafka side is an in-memory sink here (it has its own tests).

Each test uses its own source id (so its own persistent session), topic prefix and Sparkplug
group, so tests sharing the session's broker do not see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
from services.ingest import sparkplug as sp
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from tests.integration.conftest import MosquittoBroker
from tests.list_sink import ListSink

pytestmark = pytest.mark.integration

QUIET = logging.getLogger("tests.mqtt.publisher")  # aiomqtt warns per pending publish
QUIET.setLevel(logging.ERROR)
WAIT_S = 60.0  # generous: the machine is shared; we poll, never sleep-and-hope
T0 = 1_700_000_000_000
Row = tuple[int, str, str, object]


class CollectingSink(ListSink):
    """The Kafka side as an in-memory list."""

    def rows(self) -> list[Row]:
        """(ts, machine, signal, value) with the value as it came: number or text."""
        if not self.frames:
            return []
        frame = pl.concat(self.frames)
        return [
            (r[0], r[1], r[2], next((v for v in (r[5], r[4], r[3]) if v is not None), None))
            for r in frame.rows()
        ]

    def reasons(self) -> list[str]:
        return [letter.reason for letter in self.letters]


async def wait_until(check: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def plant_config(port: int, source: dict[str, Any]) -> PlantConfig:
    return parse_config(
        {
            "site": "plant1",
            "lines": [
                {"id": "L1", "machines": [{"id": "press1"}, {"id": "press2"}]},
                {"id": "L2", "machines": [{"id": "oven"}]},
            ],
            # Sparkplug sessions of the test's own, never the user's data dir.
            "ingest": {"linger_ms": 50, "state_dir": tempfile.mkdtemp(prefix="lp-mqtt-")},
            "sources": {
                "mqtt": [{"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, **source}]
            },
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


class Harness:
    """An ingester with a fresh metrics registry and an in-memory sink."""

    def __init__(self, port: int, source: dict[str, Any]) -> None:
        self.plant = plant_config(port, source)
        self.source = self.plant.sources.mqtt[0]
        self.registry = CollectorRegistry()
        self.metrics = IngestMetrics.create(self.registry)
        self.sink = CollectingSink()
        self.ingester = MqttIngester(self.source, self.plant, self.sink, self.metrics)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"source": self.source.id, **labels})
        return 0.0 if value is None else value

    def connected(self) -> bool:
        return self.metric("linepulse_ingest_connected") == 1

    @contextlib.asynccontextmanager
    async def running(self, *, wait_connected: bool = True) -> AsyncIterator[asyncio.Task[None]]:
        stop = asyncio.Event()
        task = asyncio.create_task(self.ingester.run(stop), name="ingester")
        try:
            if wait_connected:
                await wait_until(lambda: self.connected() or task.done(), "the ingester to connect")
                assert not task.done(), "the ingester ended on its own"
            yield task
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=WAIT_S)  # returns promptly; raises if it failed


async def publish(
    port: int,
    messages: Iterable[tuple[str, bytes | str]],
    *,
    qos: int = 1,
    **client: Any,
) -> None:
    """Publish in order, up to 500 QoS 1 messages in flight."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=unique("pub-"),
        max_inflight_messages=500,
        logger=QUIET,
        **client,
    ) as pub:
        pending: list[Any] = []
        for name, payload in messages:
            pending.append(pub.publish(name, payload, qos=qos))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


# -- plain topics ---------------------------------------------------------------------------


async def test_json_and_plain_topics_become_samples(mosquitto: MosquittoBroker) -> None:
    pre = unique("p")
    harness = Harness(
        mosquitto.port,
        {
            "id": unique("plain-"),
            "topics": [
                {"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"},
                {"pattern": f"{pre}-raw/{{machine}}/{{signal}}", "format": "plain"},
                {"pattern": f"{pre}-any/{{machine}}"},
            ],
        },
    )
    async with harness.running():
        before = int(time.time() * 1000)
        await publish(
            mosquitto.port,
            [
                (f"{pre}/L1/press1/state", f'{{"value": "down", "reason": "jam", "ts": {T0}}}'),
                (f"{pre}/L1/press1/total_count", '{"value": 42, "ts": "2023-11-14T22:13:21Z"}'),
                (f"{pre}/L2/oven/temperature", "181.5"),  # a bare JSON scalar: receive time
                (f"{pre}/L2/oven/door_open", '{"value": true, "ts": 1700000002000}'),
                (f"{pre}-raw/press2/speed", "12.5"),
                (f"{pre}-raw/press2/product", "sku-7"),
                (f"{pre}-any/press2", '{"signal": "good_count", "value": 9, "ts": 1700000003000}'),
                (f"{pre}/L2/press1/state", '{"value": "idle", "ts": 1700000004000}'),  # L1!
            ],
        )
        await wait_until(lambda: len(harness.sink.rows()) >= 7, "7 samples")
        await wait_until(lambda: len(harness.sink.letters) >= 1, "the line mismatch letter")
        after = int(time.time() * 1000)
    rows = harness.sink.rows()
    received = {r[:3]: r for r in rows}
    assert (T0, "press1", "state", "down") in rows
    assert (1_700_000_001_000, "press1", "total_count", 42.0) in rows
    assert (1_700_000_002_000, "oven", "door_open", "true") in rows
    assert (1_700_000_003_000, "press2", "good_count", 9.0) in rows
    for machine, signal, value in [
        ("oven", "temperature", 181.5),
        ("press2", "speed", 12.5),
        ("press2", "product", "sku-7"),
    ]:
        ts = next(r[0] for r in rows if r[1:3] == (machine, signal))
        assert before <= ts <= after  # no ts in the payload: the receive time
        assert next(r[3] for r in rows if r[1:3] == (machine, signal)) == value
    assert len(rows) == 7, received
    frame = pl.concat(harness.sink.frames)
    assert frame.filter(pl.col("signal") == "state")["reason"].to_list() == ["jam"]
    assert harness.sink.reasons() == [
        "line mismatch: topic says line 'L2', machine 'press1' is on 'L1'"
    ]
    assert harness.metric("linepulse_ingest_messages_total") == 8
    assert harness.metric("linepulse_ingest_events_total") == 7
    assert harness.metric("linepulse_ingest_rejected_total", reason="line mismatch") == 1


async def test_bad_input_goes_to_the_dlq_and_the_good_around_it_arrives(
    mosquitto: MosquittoBroker,
) -> None:
    pre = unique("b")
    group = unique("G")
    harness = Harness(
        mosquitto.port,
        {
            "id": unique("bad-"),
            "topics": [
                {"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"},
                {"pattern": f"{pre}-raw/{{machine}}/{{signal}}", "format": "plain"},
            ],
            "sparkplug": {"group": group, "rebirth": False},
        },
    )
    good = f"{pre}/L1/press1/total_count"
    bad: list[tuple[str, bytes | str, str]] = [
        (f"{pre}/L1/press1/state", '{"value": "down", ', "malformed JSON"),
        (f"{pre}/L1/press1/total_count", '{"value": "many"}', "total_count must be a number"),
        # "nan" is text on a plain topic (not a JSON number); 1e400 is one, and infinite.
        (f"{pre}-raw/press1/temperature", "1e400", "temperature: value must be finite"),
        (f"{pre}/L1/ghost/state", '{"value": "running"}', "unknown machine 'ghost'"),
        (f"{pre}/L1/press1/speed", '{"value": 1, "ts": "yesterday"}', "ts is not an RFC 3339"),
        (f"{pre}/L1/press1/blob", b"x" * (10 * 1024 * 1024), "payload too large: 10485760"),
        (f"spBv1.0/{group}/DDATA/edge1/press1", b"\xff\xfe garbage", "bad Sparkplug payload"),
    ]
    messages: list[tuple[str, bytes | str]] = []
    for i, (name, payload, _) in enumerate(bad):
        messages.append((good, f'{{"value": {i}, "ts": {T0 + i}}}'))
        messages.append((name, payload))
    messages.append((good, f'{{"value": {len(bad)}, "ts": {T0 + len(bad)}}}'))
    async with harness.running() as task:
        await publish(mosquitto.port, messages)
        await wait_until(lambda: len(harness.sink.letters) >= len(bad), "all the dead letters")
        await wait_until(lambda: len(harness.sink.rows()) >= len(bad) + 1, "the good samples")
        assert not task.done()
    assert sorted(harness.sink.rows()) == [
        (T0 + i, "press1", "total_count", float(i)) for i in range(len(bad) + 1)
    ]
    letters = {letter.source.split(":", 1)[1]: letter for letter in harness.sink.letters}
    for name, payload, reason in bad:
        letter = letters[name]
        assert reason in letter.reason, (name, letter.reason)
        raw = payload.encode() if isinstance(payload, str) else payload
        assert letter.raw == raw[:4096]  # the raw payload (a large one cut, its size said)
    assert harness.metric("linepulse_ingest_rejected_total", reason="malformed JSON") == 1


# -- Sparkplug B ----------------------------------------------------------------------------


class EdgeNode:
    """A scripted Sparkplug edge node publishing through the codec."""

    def __init__(self, group: str, name: str = "edge1") -> None:
        self.group = group
        self.name = name
        self.seq = 0

    def message(
        self,
        kind: str,
        metrics: list[sp.Metric],
        *,
        device: str | None = None,
        at: int = T0,
        seq: int | None = None,
    ) -> tuple[str, bytes]:
        if kind == sp.NBIRTH:
            self.seq = 0
        if kind != sp.NDEATH:
            seq = self.seq if seq is None else seq
            self.seq = sp.next_seq(seq)
        payload = sp.encode_payload(metrics, seq=seq, timestamp_ms=at)
        return sp.topic(self.group, kind, self.name, device), payload

    def births(self, bd_seq: int = 0) -> list[tuple[str, bytes]]:
        return [
            self.message(sp.NBIRTH, [sp.Metric(sp.BDSEQ, None, bd_seq, sp.UINT64)]),
            self.message(
                sp.DBIRTH,
                [
                    sp.Metric("Production/Count", 1, 100, sp.UINT32),
                    sp.Metric("state", 2, "running", sp.STRING),
                    sp.Metric("temperature", 3, 20.5, sp.FLOAT),
                ],
                device="press1",
            ),
            self.message(sp.DBIRTH, [sp.Metric("state", 1, "idle", sp.STRING)], device="plc-9"),
        ]


def sparkplug_source(group: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": unique("spb-"),
        "sparkplug": {
            "group": group,
            "devices": {"edge1/plc-9": "press2"},
            "metrics": {"Production/Count": "total_count"},
            **extra,
        },
    }


async def test_sparkplug_births_data_and_deaths(mosquitto: MosquittoBroker) -> None:
    group = unique("G")
    harness = Harness(mosquitto.port, sparkplug_source(group))
    edge = EdgeNode(group)
    async with harness.running():
        await publish(mosquitto.port, edge.births(bd_seq=3))
        await publish(
            mosquitto.port,
            [
                edge.message(
                    sp.DDATA,
                    [
                        sp.Metric(None, 1, 101, sp.UINT32, timestamp_ms=T0 + 10),
                        sp.Metric(None, 2, "down", sp.STRING, timestamp_ms=T0 + 11),
                    ],
                    device="press1",
                    at=T0 + 20,
                ),
                edge.message(sp.DDATA, [sp.Metric(None, 3, 21.25, sp.FLOAT)], device="press1"),
                edge.message(sp.DDEATH, [], device="plc-9", at=T0 + 30),
            ],
        )
        await wait_until(lambda: len(harness.sink.rows()) >= 8, "births, data and the DDEATH")
        dead_at = int(time.time() * 1000)
        await publish(
            mosquitto.port, [edge.message(sp.NDEATH, [sp.Metric(sp.BDSEQ, None, 3, sp.UINT64)])]
        )
        await wait_until(lambda: len(harness.sink.rows()) >= 9, "the NDEATH's unknown state")
    rows = harness.sink.rows()
    assert rows[:7] == [
        (T0, "press1", "total_count", 100.0),
        (T0, "press1", "state", "running"),
        (T0, "press1", "temperature", 20.5),
        (T0, "press2", "state", "idle"),
        (T0 + 10, "press1", "total_count", 101.0),
        (T0 + 11, "press1", "state", "down"),
        (T0, "press1", "temperature", 21.25),
    ]
    # Deaths mark machines unknown at their receive time: DDEATH press2, NDEATH press1.
    assert [r[1:] for r in rows[7:]] == [
        ("press2", "state", "unknown"),
        ("press1", "state", "unknown"),
    ]
    assert rows[8][0] >= dead_at
    assert harness.sink.letters == []
    assert harness.ingester.host is not None
    assert harness.ingester.host.seq_gaps == 0


async def test_a_seq_gap_asks_the_edge_node_for_a_rebirth(mosquitto: MosquittoBroker) -> None:
    group = unique("G")
    harness = Harness(mosquitto.port, sparkplug_source(group))
    edge = EdgeNode(group)
    requests: list[aiomqtt.Message] = []
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=unique("edge-")) as listener,
        harness.running(),
    ):
        await listener.subscribe(sp.topic(group, sp.NCMD, "edge1"), qos=1)

        async def listen() -> None:
            async for message in listener.messages:
                requests.append(message)
                return

        waiting = asyncio.create_task(listen())
        await publish(mosquitto.port, edge.births())
        gap = edge.message(sp.DDATA, [sp.Metric(None, 1, 150, sp.UINT32)], device="press1", seq=9)
        await publish(mosquitto.port, [gap])
        await asyncio.wait_for(waiting, timeout=WAIT_S)
        await wait_until(lambda: len(harness.sink.rows()) >= 5, "the data after the gap")
    assert isinstance(requests[0].payload, bytes)
    request = sp.decode_payload(requests[0].payload)
    assert [(m.name, m.value, m.datatype) for m in request.metrics] == [
        (sp.REBIRTH, True, sp.BOOLEAN)
    ]
    assert harness.sink.rows()[-1] == (T0, "press1", "total_count", 150.0)  # still used
    assert harness.ingester.host is not None
    assert harness.ingester.host.seq_gaps == 1


# -- a broker that goes away --------------------------------------------------------------


async def test_reconnects_after_a_broker_restart_and_gets_what_was_queued(
    tmp_path: Path,
) -> None:
    """Mosquitto with `persistence true` saves its database (subscriptions, persistent
    sessions and the QoS 1/2 messages queued for them) when it stops cleanly (SIGTERM) and
    every `autosave_interval`; it loads it on start. So a clean restart keeps what was queued
    for a disconnected persistent client; a crash loses what came after the last save."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    pre = unique("r")
    name = f"{pre}/L1/press1/total_count"
    source = {
        "id": unique("restart-"),
        "topics": [{"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"}],
    }

    def batch(start: int, stop: int) -> list[tuple[str, bytes | str]]:
        return [(name, f'{{"value": {i}, "ts": {T0 + i}}}') for i in range(start, stop)]

    try:
        harness = Harness(broker.port, source)
        async with harness.running() as task:
            await publish(broker.port, batch(0, 100))
            await wait_until(lambda: harness.sink.samples >= 100, "the first 100")
            broker.stop()
            await wait_until(lambda: not harness.connected(), "the ingester to see the loss")
            broker.start()
            await wait_until(harness.connected, "the ingester to reconnect")
            await publish(broker.port, batch(100, 200))
            await wait_until(lambda: harness.sink.samples >= 200, "the 100 after the restart")
            assert not task.done()
        assert harness.metric("linepulse_ingest_reconnects_total") >= 1
        # Now the ingester is away (its session stays at the broker), the broker restarts,
        # and a new ingester with the same client id gets what was published meanwhile.
        await publish(broker.port, batch(200, 300))
        broker.stop()
        broker.start()
        again = Harness(broker.port, source)
        async with again.running():
            await wait_until(lambda: again.sink.samples >= 100, "the queued 100")
        values = {r[3] for r in harness.sink.rows() + again.sink.rows()}
        assert values == {float(i) for i in range(300)}  # none lost (QoS 1 may repeat some)
        assert {r[3] for r in again.sink.rows()} >= {float(i) for i in range(200, 300)}
    finally:
        broker.stop()


# -- passwords and TLS ----------------------------------------------------------------------


async def test_password_is_required_and_a_wrong_one_is_retried_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(  # noqa: S603, ASYNC221 - Debian's mosquitto_passwd, before any I/O
        ["mosquitto_passwd", "-b", "-c", str(passwords), "line-reader", "s3cret"],  # noqa: S607
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    broker = MosquittoBroker(
        tmp_path / "broker",
        extra_config=f"password_file {passwords}\nallow_anonymous false\n",
    )
    broker.start()
    pre = unique("a")
    topics = [{"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"}]
    try:
        caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
        wrong = Harness(
            broker.port,
            {
                "id": unique("wrong-"),
                "topics": topics,
                "credentials": {"username": "line-reader", "password": "guess"},
            },
        )
        async with wrong.running(wait_connected=False) as task:
            await wait_until(
                lambda: sum("failed or lost" in r.message for r in caplog.records) >= 2,
                "two refused attempts in the log",
            )
            assert not task.done()  # refused, logged, retried: not crashed
            assert not wrong.connected()
        assert any("Not authorized" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
        secret = tmp_path / "secret"
        secret.write_text("s3cret\n")
        right = Harness(
            broker.port,
            {
                "id": unique("right-"),
                "topics": topics,
                "credentials": {"username": "line-reader", "password_file": str(secret)},
            },
        )
        async with right.running():
            await publish(
                broker.port,
                [(f"{pre}/L1/press1/state", '{"value": "running", "ts": 1700000000000}')],
                username="line-reader",
                password="s3cret",
            )
            await wait_until(lambda: right.sink.samples >= 1, "the sample")
        assert right.sink.rows() == [(T0, "press1", "state", "running")]
    finally:
        broker.stop()


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LinePulse test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    folder.mkdir(parents=True, exist_ok=True)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_with_the_brokers_ca(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path / "pki")
    broker = MosquittoBroker(
        tmp_path / "broker", extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    broker.start()
    pre = unique("t")
    topics = [{"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"}]
    try:
        caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
        untrusted = Harness(broker.port, {"id": unique("tls-"), "topics": topics, "tls": {}})
        async with untrusted.running(wait_connected=False) as task:
            await wait_until(
                lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records),
                "the system trust store to refuse our test CA",
            )
            assert not task.done()
        trusted = Harness(
            broker.port, {"id": unique("tls-"), "topics": topics, "tls": {"ca": str(ca)}}
        )
        async with trusted.running():
            await publish(
                broker.port,
                [(f"{pre}/L2/oven/temperature", '{"value": 180, "ts": 1700000000000}')],
                tls_context=ssl.create_default_context(cafile=str(ca)),
            )
            await wait_until(lambda: trusted.sink.samples >= 1, "the sample over TLS")
        assert trusted.sink.rows() == [(T0, "oven", "temperature", 180.0)]
    finally:
        broker.stop()


# -- figures (printed, not asserted: the machine is shared) ---------------------------------


async def test_throughput_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Messages queued for the ingester's persistent session while it is away, then drained:
    the ingester's rate alone, not the publisher's. Run with -s to see the figures."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    pre = unique("f")
    group = unique("G")
    source = {
        "id": unique("bench-"),
        "topics": [{"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"}],
        "sparkplug": {"group": group, "metrics": {}},
    }
    try:
        warm = Harness(broker.port, source)  # makes the session and its subscriptions
        async with warm.running():
            pass
        messages = 30_000
        await publish(
            broker.port,
            (
                (f"{pre}/L1/press1/temperature", f'{{"value": {i}, "ts": {T0 + i}}}')
                for i in range(messages)
            ),
        )
        plain = Harness(broker.port, source)
        started = time.perf_counter()
        async with plain.running():
            await wait_until(lambda: plain.sink.samples >= messages, "the plain messages", 300)
        plain_s = time.perf_counter() - started
        assert plain.sink.samples == messages

        edge = EdgeNode(group)
        names = [f"tag{i:03d}" for i in range(100)]
        birth = [sp.Metric(n, i, 0.0, sp.DOUBLE) for i, n in enumerate(names)]
        frames = 2_000
        sparkplug_messages = [
            edge.message(sp.NBIRTH, [sp.Metric(sp.BDSEQ, None, 0, sp.UINT64)]),
            edge.message(sp.DBIRTH, birth, device="press1"),
        ] + [
            edge.message(
                sp.DDATA,
                [sp.Metric(None, i, float(k + i), sp.UNKNOWN) for i in range(100)],
                device="press1",
                at=T0 + k,
            )
            for k in range(frames)
        ]
        await publish(broker.port, sparkplug_messages)
        spb = Harness(broker.port, source)
        started = time.perf_counter()
        async with spb.running():
            total = 100 * (frames + 1)
            await wait_until(lambda: spb.sink.samples >= total, "the Sparkplug samples", 300)
        spb_s = time.perf_counter() - started
        assert spb.sink.samples == total
        assert spb.sink.letters == []
    finally:
        broker.stop()
    with capsys.disabled():
        print(  # noqa: T201 - the figures are this test's output
            f"\nMQTT ingest: {messages / plain_s:,.0f} messages/s (one sample each, "
            f"{messages} in {plain_s:.2f} s); Sparkplug DDATA x100 metrics: "
            f"{total / spb_s:,.0f} samples/s ({frames + 2} messages in {spb_s:.2f} s)"
        )
