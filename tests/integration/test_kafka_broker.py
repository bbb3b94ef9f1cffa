"""Smoke tests of the development Kafka broker (deploy/kafka/kafka.sh) through aiokafka."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

pytestmark = pytest.mark.integration

MESSAGES = 100
KEYS = [f"filler-{n}" for n in range(7)]


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def create_topic(
    bootstrap: str, name: str, partitions: int, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or {})]
        )
        errors = [(topic, code, msg) for topic, code, msg in response.topic_errors if code != 0]
        assert not errors, errors
    finally:
        await admin.close()


async def topic_config(bootstrap: str, name: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    (resource,) = [r for resp in responses for r in resp.to_object()["resources"]]
    assert resource["error_code"] == 0, resource
    entries: list[dict[str, Any]] = resource["config_entries"]
    return {e["config_names"]: e["config_value"] for e in entries}


async def consume(
    bootstrap: str, topic: str, count: int, group: str
) -> list[tuple[int, str, str | None]]:
    """The first `count` records of `topic` as (partition, key, value), in arrival order."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[int, str, str | None]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for r in records:
                        value = None if r.value is None else r.value.decode()
                        got.append((r.partition, r.key.decode(), value))
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_keyed_messages_come_back_in_per_key_order_across_partitions(kafka: str) -> None:
    topic = topic_name("smoke")
    await create_topic(kafka, topic, partitions=3)

    producer = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True, acks="all")
    await producer.start()
    sent: dict[str, list[str]] = defaultdict(list)
    try:
        for n in range(MESSAGES):
            key = KEYS[n % len(KEYS)]
            value = f"{key}#{len(sent[key])}"
            sent[key].append(value)
            await producer.send(topic, key=key.encode(), value=value.encode())
        await producer.flush()
    finally:
        await producer.stop()

    got = await consume(kafka, topic, MESSAGES, group=topic_name("smoke-group"))

    assert len(got) == MESSAGES
    received: dict[str, list[str | None]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for partition, got_key, got_value in got:
        received[got_key].append(got_value)
        partition_of[got_key].add(partition)
    assert received == sent  # every key, every value, each key's values in the order sent
    assert all(len(partitions) == 1 for partitions in partition_of.values())
    assert {p for partitions in partition_of.values() for p in partitions} == {0, 1, 2}


async def test_a_compacted_topic_can_be_created_and_written(kafka: str) -> None:
    topic = topic_name("compacted")
    await create_topic(kafka, topic, partitions=1, configs={"cleanup.policy": "compact"})
    assert (await topic_config(kafka, topic))["cleanup.policy"] == "compact"

    producer = AIOKafkaProducer(bootstrap_servers=kafka, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for key, value in [(b"filler-1", b"a"), (b"filler-2", b"b"), (b"filler-1", b"c")]:
            await producer.send_and_wait(topic, key=key, value=value)
        await producer.send_and_wait(topic, key=b"filler-2", value=None)  # a tombstone
        # A compacted topic refuses records without a key: the broker enforces the policy.
        with pytest.raises(KafkaError):
            await producer.send_and_wait(topic, key=None, value=b"no key")
    finally:
        await producer.stop()

    got = await consume(kafka, topic, 4, group=topic_name("compacted-group"))
    assert [(key, value) for _, key, value in got] == [
        ("filler-1", "a"),
        ("filler-2", "b"),
        ("filler-1", "c"),
        ("filler-2", None),
    ]
