"""The MQTT ingester's bounded inbox against a real Mosquitto, with a sink that stalls.

A burst larger than `max_inbox_messages` arrives while the sink is blocked. QoS 1: the
ingester acknowledges a message only when it takes it from the inbox, so the broker's
in-flight window (set to `WINDOW` here) is all that waits in the inbox, the rest waits at
the broker, and once the sink moves again every message arrives. QoS 0: no flow control
exists, so the inbox fills to the bound and each message past it is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

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

WINDOW = 20  # the broker's in-flight window for QoS 1 (Mosquitto's default)
BOUND = 100  # max_inbox_messages
BURST = 1_000  # messages published while the sink is stalled: ten times the bound


@pytest.fixture
def small_window_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of its own with the default in-flight window (the shared one widens it
    to 1,000 for throughput), so the window, not the bound, holds QoS 1 back."""
    broker = MosquittoBroker(
        tmp_path / "mosquitto", extra_config=f"max_inflight_messages {WINDOW}\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
    """An ingester on one plain topic, batches of 50 samples, a fresh registry, a stalled
    sink."""

    def __init__(self, port: int, qos: int) -> None:
        self.prefix = unique("inbox")
        plant = parse_config(
            {
                "site": "plant1",
                "lines": [{"id": "L1", "machines": [{"id": "press1"}]}],
                "ingest": {"linger_ms": 50, "batch_samples": 50},
                "sources": {
                    "mqtt": [
                        {
                            "id": unique("inbox-"),
                            "host": "127.0.0.1",
                            "port": port,
                            "qos": qos,
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
        topic = f"{self.prefix}/press1/good_count"
        return [(topic, f'{{"value": {n}, "ts": {T0 + n}}}') for n in range(BURST)]

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


async def test_qos1_burst_waits_at_the_broker_and_nothing_is_lost(
    small_window_broker: MosquittoBroker,
) -> None:
    harness = InboxHarness(small_window_broker.port, qos=1)
    inbox = "linepulse_ingest_mqtt_inbox_messages"
    async with harness.running():
        await publish(small_window_broker.port, harness.burst(), qos=1)  # the broker has all
        await asyncio.wait_for(harness.sink.stalled.wait(), timeout=WAIT_S)
        # Stalled: nothing is acknowledged now. (Mosquitto 2.0.11 was seen to send past its
        # in-flight window while acks and publishes interleave, so the inbox size is not
        # asserted against WINDOW here; what QoS 1 promises is that nothing is lost.)
        await wait_until(lambda: harness.metric(inbox) >= WINDOW - 1, "the inbox to fill")
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
    assert len(set(harness.sink.rows())) == harness.sink.samples  # no duplicates
    assert harness.sink.letters == []
