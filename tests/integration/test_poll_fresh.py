"""`poll_fresh` on a real broker: what reached Kafka while a consumer was busy joins its
next poll, where aiokafka's `getmany` alone hands out only the batch it fetched before."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from linepulse.bus.polling import poll_fresh
from tests.integration.test_kafka_broker import create_topic

pytestmark = pytest.mark.integration

# Generous, so that a slow CI machine still sees the fetch come back; the service's own
# top-up is TOP_UP_MS.
TOP_UP_MS = 2000
SETTLE_S = 1.0  # for aiokafka's background fetch to bring what was produced


async def _busy_consumer(
    bootstrap: str, topic: str
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer, TopicPartition]:
    """A consumer that has polled "a" and holds "b" (fetched while it was busy), with
    "c" on the broker only: the state a worker is in after a long step."""
    await create_topic(bootstrap, topic, 1)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    await producer.send_and_wait(topic, b"a")
    first = await consumer.getmany(timeout_ms=5000)
    assert [r.value for r in first.get(tp, [])] == [b"a"]
    await producer.send_and_wait(topic, b"b")
    await asyncio.sleep(SETTLE_S)  # the fetch sent after "a" was handed out brings "b"
    await producer.send_and_wait(topic, b"c")
    await asyncio.sleep(SETTLE_S)  # no fetch is sent while "b" waits in the buffer
    return consumer, producer, tp


@pytest.mark.parametrize("fresh", [False, True])
async def test_records_that_reached_the_broker_while_busy_join_the_poll(
    kafka: str, fresh: bool
) -> None:
    topic = f"poll-fresh-{uuid.uuid4().hex[:12]}"
    consumer, producer, tp = await _busy_consumer(kafka, topic)
    try:
        if fresh:
            batch = await poll_fresh(consumer, 0, 100, top_up_ms=TOP_UP_MS)
            assert [r.value for r in batch[tp]] == [b"b", b"c"]
            assert [r.offset for r in batch[tp]] == [1, 2]
        else:  # why poll_fresh exists: "c" would wait for one more poll
            batch = await consumer.getmany(timeout_ms=0, max_records=100)
            assert [r.value for r in batch[tp]] == [b"b"]
    finally:
        await consumer.stop()
        await producer.stop()


async def test_a_full_first_poll_is_not_topped_up(kafka: str) -> None:
    topic = f"poll-fresh-{uuid.uuid4().hex[:12]}"
    consumer, producer, tp = await _busy_consumer(kafka, topic)
    try:
        batch = await poll_fresh(consumer, 0, 1, top_up_ms=TOP_UP_MS)
        assert [r.value for r in batch[tp]] == [b"b"]
        batch = await poll_fresh(consumer, 5000, 100, top_up_ms=TOP_UP_MS)
        assert [r.value for r in batch[tp]] == [b"c"]
    finally:
        await consumer.stop()
        await producer.stop()
