"""The MQTT ingester's bounded inbox against a real Mosquitto, with a sink that stalls.

A burst larger than `max_inbox_messages` arrives while the sink is blocked. QoS 1: the
ingester acknowledges a message only once the sink keeps it (never while the sink is
stalled) and tells the broker (MQTT v5 Receive Maximum) to have no more than the bound
unacknowledged, so the inbox never
holds more than the bound, the rest waits at the broker, and once the sink moves again
every message arrives. QoS 0: no flow control exists, so the inbox fills to the bound and
each message past it is dropped and counted. A broker that refuses v5 gets 3.1.1.

Mosquitto 2.0.11 (Debian 12's, the one CI runs) keeps to the Receive Maximum only while no
acknowledgement comes in between new publishes: when they interleave, its send quota drifts
past the client's maximum (measured: 495 waiting for a bound of 100). Its inflight-quota
accounting was reworked in later 2.0.x releases (eclipse/mosquitto#2301, #2362). So the
bound test stalls the ingester before the burst, and the interleaved case asserts only that
nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Self

import aiomqtt
import polars as pl
import pytest
from prometheus_client import CollectorRegistry

from linepulse.config import parse_config
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from tests.integration.conftest import MosquittoBroker
from tests.integration.test_ingest_mqtt import (
    T0,
    WAIT_S,
    CollectingSink,
    publish,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

BOUND = 100  # max_inbox_messages; the shared broker's in-flight window is 1,000
BURST = 1_000  # messages published while the sink is stalled: ten times the bound


class StalledSink(CollectingSink):
    """The Kafka side, blocked until `release`: each `put` waits on the gate. It notes the
    inbox size at every `put`, so the test sees the largest one the ingester had."""

    def __init__(self, inbox_size: Callable[[], float]) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.stalled = asyncio.Event()
        self.inbox_at_put: list[float] = []
        self._inbox_size = inbox_size

    async def put(self, events: pl.DataFrame) -> None:
        self.inbox_at_put.append(self._inbox_size())
        self.stalled.set()
        await self.gate.wait()
        await super().put(events)


class InboxHarness:
    """An ingester on one plain topic, batches of `batch_samples` samples, a fresh
    registry, a stalled sink."""

    def __init__(
        self, port: int, qos: int, *, mqtt_version: str = "5", batch_samples: int = 50
    ) -> None:
        self.prefix = unique("inbox")
        plant = parse_config(
            {
                "site": "plant1",
                "lines": [{"id": "L1", "machines": [{"id": "press1"}]}],
                "ingest": {"linger_ms": 50, "batch_samples": batch_samples},
                "sources": {
                    "mqtt": [
                        {
                            "id": unique("inbox-"),
                            "host": "127.0.0.1",
                            "port": port,
                            "qos": qos,
                            "mqtt_version": mqtt_version,
                            "max_inbox_messages": BOUND,
                            "topics": [{"pattern": f"{self.prefix}/{{machine}}/{{signal}}"}],
                        }
                    ]
                },
            }
        )
        self.source = plant.sources.mqtt[0]
        self.registry = CollectorRegistry()
        self.sink = StalledSink(lambda: self.metric("linepulse_ingest_mqtt_inbox_messages"))
        self.ingester = MqttIngester(
            self.source, plant, self.sink, IngestMetrics.create(self.registry)
        )

    def metric(self, name: str) -> float:
        value = self.registry.get_sample_value(name, {"source": self.source.id})
        return 0.0 if value is None else value

    def burst(self) -> list[tuple[str, str]]:
        return [self.sample(T0 + n) for n in range(BURST)]

    def sample(self, ts: int) -> tuple[str, str]:
        return (f"{self.prefix}/press1/good_count", f'{{"value": 1, "ts": {ts}}}')

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(self.ingester.run(stop), name="ingester")
        try:
            await wait_until(
                lambda: self.metric("linepulse_ingest_connected") == 1 or task.done(),
                "the ingester to connect",
            )
            assert not task.done(), "the ingester ended on its own"
            yield
        finally:
            self.sink.gate.set()
            stop.set()
            await asyncio.wait_for(task, timeout=WAIT_S)


async def test_qos1_burst_stays_within_the_bound_and_nothing_is_lost(
    mosquitto: MosquittoBroker,
) -> None:
    """The broker's own window (1,000) is ten times the bound: only the Receive Maximum
    the ingester sends holds the burst back (under 3.1.1 the inbox takes in 999).

    Batches of one sample: the first message's flush stalls, so from then on nothing is
    acknowledged. That first message holds one of the BOUND unacknowledged slots, the burst
    fills the other BOUND - 1 in the inbox, and a QoS 0 marker published after the burst
    (never held back: no flow control) comes in behind them, as the inbox's BOUND-th
    message, once the broker has sent all it will send."""
    harness = InboxHarness(mosquitto.port, qos=1, batch_samples=1)
    inbox = "linepulse_ingest_mqtt_inbox_messages"
    dropped = "linepulse_ingest_mqtt_inbox_dropped_total"  # the marker, if the inbox is full
    first, marker = harness.sample(T0 - 2), harness.sample(T0 - 1)
    async with harness.running():
        await publish(mosquitto.port, [first], qos=1)
        await asyncio.wait_for(harness.sink.stalled.wait(), timeout=WAIT_S)
        await publish(mosquitto.port, harness.burst(), qos=1)  # the broker has all
        await publish(mosquitto.port, [marker], qos=0)
        await wait_until(lambda: harness.metric(inbox) >= BOUND, "the burst and the marker")
        harness.sink.gate.set()
        await wait_until(
            lambda: harness.sink.samples + harness.metric(dropped) >= BURST + 2,
            "every message delivered or counted as dropped",
        )
    assert harness.ingester.inbox_peak == BOUND
    assert sorted(ts for ts, *_ in harness.sink.rows()) == [T0 + n for n in range(-2, BURST)]
    assert harness.metric(dropped) == 0
    assert harness.sink.letters == []


async def test_qos1_burst_while_acknowledging_loses_nothing(
    mosquitto: MosquittoBroker,
) -> None:
    """Acknowledgements interleave with the burst (the ingester takes 50 per batch before
    the sink stalls): every message arrives, once each. The inbox's size is not asserted:
    Mosquitto 2.0.11 sends past the Receive Maximum here (see the module docstring)."""
    harness = InboxHarness(mosquitto.port, qos=1)
    async with harness.running():
        await publish(mosquitto.port, harness.burst(), qos=1)  # the broker has all
        await asyncio.wait_for(harness.sink.stalled.wait(), timeout=WAIT_S)
        harness.sink.gate.set()
        await wait_until(lambda: harness.sink.samples >= BURST, f"all {BURST} samples")
    assert sorted(ts for ts, *_ in harness.sink.rows()) == [T0 + n for n in range(BURST)]
    assert harness.metric("linepulse_ingest_mqtt_inbox_dropped_total") == 0
    assert harness.sink.letters == []


async def test_qos0_burst_past_the_bound_is_dropped_and_counted(
    mosquitto: MosquittoBroker,
) -> None:
    harness = InboxHarness(mosquitto.port, qos=0)  # the subscription's QoS: delivered at 0
    inbox = "linepulse_ingest_mqtt_inbox_messages"
    dropped = "linepulse_ingest_mqtt_inbox_dropped_total"
    async with harness.running():
        await publish(mosquitto.port, harness.burst(), qos=1)  # QoS 1 to the broker: all there
        await asyncio.wait_for(harness.sink.stalled.wait(), timeout=WAIT_S)
        await wait_until(lambda: harness.metric(inbox) >= BOUND, "the inbox to fill")
        harness.sink.gate.set()
        await wait_until(
            lambda: harness.sink.samples + harness.metric(dropped) >= BURST,
            "every message delivered or counted as dropped",
        )
    assert harness.metric(dropped) > 0
    assert harness.sink.samples + harness.metric(dropped) == BURST
    assert max(harness.sink.inbox_at_put) <= BOUND
    assert harness.ingester.inbox_peak == BOUND
    assert len(set(harness.sink.rows())) == harness.sink.samples  # no duplicates
    assert harness.sink.letters == []


# -- a broker without MQTT v5 ---------------------------------------------------------------

_CONNECT: int = 0x10  # the CONNECT packet type, in the fixed header's high nibble
_V311_REFUSED_VERSION = bytes((0x20, 0x02, 0x00, 0x01))  # CONNACK, return code 1


async def read_packet(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One MQTT control packet: (all its bytes, its body after the fixed header)."""
    header = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = await reader.readexactly(1)
        header += byte
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
    body = await reader.readexactly(length)
    return header + body, body


class V311OnlyBroker:
    """Mosquitto as a 3.1.1-only broker: a v5 CONNECT is answered as MQTT 3.1.1 §3.1.2.2
    says (CONNACK return code 1, unacceptable protocol level, then close); any other
    connection is piped through. Mosquitto itself cannot be told to refuse v5."""

    def __init__(self, upstream_port: int, *, silent: bool = False) -> None:
        self.upstream_port = upstream_port
        self.silent = silent  # close a v5 CONNECT without a CONNACK, as amqtt does
        self.port = 0
        self.refused = 0  # v5 CONNECTs answered with return code 1
        self.passed = 0  # connections piped to Mosquitto
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            packet, body = await read_packet(reader)
            # The variable header: protocol name (2-byte length + "MQTT"), then the level.
            if packet[0] & 0xF0 == _CONNECT and body[6] == 5:
                self.refused += 1
                if not self.silent:
                    writer.write(_V311_REFUSED_VERSION)
                    await writer.drain()
                return
            self.passed += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(packet)
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            writer.close()
            self._handlers.discard(handler)


async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    while data := await source.read(65_536):
        target.write(data)
        await target.drain()
    target.close()


async def test_a_broker_refusing_v5_gets_3_1_1_with_one_warning(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
    async with V311OnlyBroker(mosquitto.port) as broker:
        harness = InboxHarness(broker.port, qos=1)
        harness.sink.gate.set()  # no stall here
        async with harness.running():
            await publish(mosquitto.port, harness.burst()[:10], qos=1)
            await wait_until(lambda: harness.sink.samples >= 10, "10 samples over 3.1.1")
    assert harness.ingester.protocol is aiomqtt.ProtocolVersion.V311
    assert (broker.refused, broker.passed) == (1, 1)
    fallbacks = [r.getMessage() for r in caplog.records if "refused MQTT v5" in r.getMessage()]
    assert len(fallbacks) == 1
    assert "in-flight window" in fallbacks[0]
    assert harness.metric("linepulse_ingest_reconnects_total") == 0


async def test_a_broker_that_drops_v5_without_an_answer_gets_3_1_1(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3.1.1-only broker that closes a v5 CONNECT without a CONNACK (amqtt, the demo's
    embedded broker, does): the first connect is tried again at once with 3.1.1, which
    it takes; one warning, and the samples flow."""
    caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
    async with V311OnlyBroker(mosquitto.port, silent=True) as broker:
        harness = InboxHarness(broker.port, qos=1)
        harness.sink.gate.set()
        async with harness.running():
            await wait_until(lambda: broker.passed == 1, "a 3.1.1 connection")
            await publish(mosquitto.port, harness.burst()[:10], qos=1)
            await wait_until(lambda: harness.sink.samples >= 10, "10 samples over 3.1.1")
    assert harness.ingester.protocol is aiomqtt.ProtocolVersion.V311
    assert (broker.refused, broker.passed) == (1, 1)
    warned = [r.getMessage() for r in caplog.records if "did not take MQTT v5" in r.getMessage()]
    assert len(warned) == 1, warned


async def test_a_broker_away_keeps_v5(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listening: the 3.1.1 try fails as well, so the broker is away, not old;
    the ingester stays on v5 and backs off, with no word of a protocol fallback."""
    caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    harness = InboxHarness(port, qos=1)
    stop = asyncio.Event()
    task = asyncio.create_task(harness.ingester.run(stop), name="ingester")
    try:
        await wait_until(
            lambda: sum("retrying in" in r.getMessage() for r in caplog.records) >= 2,
            "two failed connection rounds",
        )
        assert harness.ingester.protocol is aiomqtt.ProtocolVersion.V5
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)
    assert not [r for r in caplog.records if "MQTT v5" in r.getMessage()]
