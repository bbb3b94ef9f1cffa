"""The in-process bus keeps the Kafka semantics the services rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    IllegalOperation,
    IllegalStateError,
    InvalidReplicationFactorError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord, RecordMetadata

from linepulse.bus import Consumer, InProcessBroker, InProcessClients

Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def bus(topics: dict[str, int]) -> tuple[InProcessBroker, InProcessClients]:
    broker = InProcessBroker(auto_create_partitions=None)
    for name, partitions in topics.items():
        broker.create_topic(name, partitions)
    return broker, InProcessClients(broker)


def values(batch: Fetched) -> dict[int, list[bytes | None]]:
    return {tp.partition: [m.value for m in ms] for tp, ms in batch.items()}


async def drain(consumer: Consumer) -> Fetched:
    """Everything readable now (getmany with no wait returns what is there)."""
    out: Fetched = {}
    while batch := await consumer.getmany(timeout_ms=0):
        for tp, messages in batch.items():
            out.setdefault(tp, []).extend(messages)
    return out


class Recorder(ConsumerRebalanceListener):  # type: ignore[misc]
    """Records the callbacks; on revoke, commits the positions it was given (as a worker's
    checkpoint does) when `commit` is set."""

    def __init__(self, name: str, log: list[tuple[str, str, list[int]]]) -> None:
        self.name = name
        self.log = log
        self.consumer: Consumer | None = None
        self.commit: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.log.append((self.name, "revoked", sorted(tp.partition for tp in revoked)))
        mine = {tp: offset for tp, offset in self.commit.items() if tp in revoked}
        if mine and self.consumer is not None:
            await self.consumer.commit(mine)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.log.append((self.name, "assigned", sorted(tp.partition for tp in assigned)))


async def test_keyed_records_keep_order_and_offsets_on_aiokafkas_partition() -> None:
    broker, clients = bus({"t": 5})
    producer = clients.producer(bootstrap_servers="unused")
    await producer.start()
    keys = [f"machine-{i}".encode() for i in range(40)]
    sent: list[RecordMetadata] = []
    for round_ in range(3):
        for key in keys:
            future = await producer.send("t", value=b"%d" % round_, key=key)
            sent.append(await future)
    await producer.stop()

    partitioner = DefaultPartitioner()
    for key in keys:
        want = partitioner(key, list(range(5)), list(range(5)))
        stored = [r for r in broker.log("t", want) if r.key == key]
        assert [r.value for r in stored] == [b"0", b"1", b"2"], "same partition, in order"
    for number in range(5):
        assert [r.offset for r in broker.log("t", number)] == list(
            range(len(broker.log("t", number)))
        )
    assert sum(len(broker.log("t", n)) for n in range(5)) == 120
    last = sent[-1]
    assert last.topic_partition == TopicPartition("t", last.partition)
    assert broker.log("t", last.partition)[last.offset].key == keys[-1]


async def test_consumer_reads_from_earliest_and_getmany_caps_records() -> None:
    _, clients = bus({"t": 2})
    producer = clients.producer()
    for i in range(10):
        await producer.send("t", value=b"%d" % i, partition=i % 2, headers=[("h", b"v")])
    consumer = clients.consumer("t", auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    first = await consumer.getmany(timeout_ms=0, max_records=3)
    assert sum(len(ms) for ms in first.values()) == 3
    rest = await drain(consumer)
    got = values(first)
    for number, more in values(rest).items():
        got[number] = got.get(number, []) + more
    assert got == {0: [b"0", b"2", b"4", b"6", b"8"], 1: [b"1", b"3", b"5", b"7", b"9"]}
    record = next(iter(rest.values()))[0]
    assert isinstance(record, ConsumerRecord)
    assert record.headers == [("h", b"v")]
    assert await consumer.position(TopicPartition("t", 0)) == 5
    assert consumer.highwater(TopicPartition("t", 0)) == 5
    await consumer.stop()


async def test_groupless_latest_skips_what_was_there_before_start() -> None:
    _, clients = bus({"t": 1})
    producer = clients.producer()
    await producer.send("t", value=b"old")
    consumer = clients.consumer("t", auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    assert await consumer.getmany(timeout_ms=0) == {}
    await producer.send("t", value=b"new")
    assert values(await consumer.getmany(timeout_ms=0)) == {0: [b"new"]}
    await consumer.stop()


async def test_getmany_wakes_when_records_arrive() -> None:
    _, clients = bus({"t": 1})
    consumer = clients.consumer("t", auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=3_600_000))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done(), "nothing to read yet: it waits"
    producer = clients.producer()
    await producer.send("t", value=b"x")
    # Far shorter than its own hour-long timeout: only the record can have woken it.
    batch = await asyncio.wait_for(waiting, 10)
    assert values(batch) == {0: [b"x"]}
    await consumer.stop()


async def test_commit_seek_and_a_new_member_resuming_at_the_commit() -> None:
    broker, clients = bus({"t": 1})
    producer = clients.producer()
    for i in range(6):
        await producer.send("t", value=b"%d" % i)
    tp = TopicPartition("t", 0)
    config: dict[str, Any] = {
        "group_id": "g",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
    }
    first = clients.consumer(**config)
    await first.start()
    first.subscribe(["t"])
    assert values(await first.getmany(timeout_ms=0, max_records=4)) == {0: [b"0", b"1", b"2", b"3"]}
    await first.commit({tp: 4})
    assert broker.committed("g", tp) == 4
    assert await first.committed(tp) == 4
    first.seek(tp, 1)
    assert values(await first.getmany(timeout_ms=0, max_records=1)) == {0: [b"1"]}
    with pytest.raises(IllegalStateError):
        await first.commit({TopicPartition("t", 7): 1})
    await first.stop()

    second = clients.consumer("t", **config)
    await second.start()
    assert values(await drain(second)) == {0: [b"4", b"5"]}
    await second.stop()

    groupless = clients.consumer("t", enable_auto_commit=False)
    await groupless.start()
    with pytest.raises(IllegalOperation):
        await groupless.commit({tp: 1})
    await groupless.stop()


async def test_a_second_member_triggers_an_eager_rebalance_that_hands_over_commits() -> None:
    _, clients = bus({"t": 4})
    producer = clients.producer()
    for i in range(8):
        await producer.send("t", value=b"%d" % i, partition=i % 4)
    log: list[tuple[str, str, list[int]]] = []
    config: dict[str, Any] = {
        "group_id": "g",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
    }
    a, b = clients.consumer(**config), clients.consumer(**config)
    listener_a, listener_b = Recorder("a", log), Recorder("b", log)
    listener_a.consumer, listener_b.consumer = a, b
    await a.start()
    a.subscribe(["t"], listener=listener_a)
    read_a = await drain(a)
    assert log == [("a", "revoked", []), ("a", "assigned", [0, 1, 2, 3])]
    assert sorted(values(read_a)) == [0, 1, 2, 3]
    # `a` has processed everything; its revoke callback commits where it got to.
    listener_a.commit = {tp: ms[-1].offset + 1 for tp, ms in read_a.items()}

    await b.start()
    b.subscribe(["t"], listener=listener_b)
    assert await b.getmany(timeout_ms=0) == {}, "no assignment until `a` has let go"
    assert log[2:] == [("b", "revoked", [])]
    assert await a.getmany(timeout_ms=0) == {}
    assert log[3:] == [("a", "revoked", [0, 1, 2, 3]), ("a", "assigned", [0, 2])]
    assert await b.getmany(timeout_ms=0) == {}, "b resumes at a's commits: nothing new"
    assert log[5:] == [("b", "assigned", [1, 3])]
    assert a.assignment() == {TopicPartition("t", 0), TopicPartition("t", 2)}

    for i in range(4):
        await producer.send("t", value=b"new-%d" % i, partition=i)
    assert values(await drain(a)) == {0: [b"new-0"], 2: [b"new-2"]}
    assert values(await drain(b)) == {1: [b"new-1"], 3: [b"new-3"]}

    await b.stop()  # leaving: `a` takes everything again, without callbacks on `b`
    await a.getmany(timeout_ms=0)
    assert log[6:] == [("a", "revoked", [0, 2]), ("a", "assigned", [0, 1, 2, 3])]
    await a.stop()


async def test_batches_fill_up_and_land_in_one_piece() -> None:
    broker, clients = bus({"t": 2})
    producer = clients.producer(max_batch_size=300)
    batch = producer.create_batch()
    appended = 0
    while batch.append(key=b"k", value=b"v" * 50, timestamp=None) is not None:
        appended += 1
    assert 1 < appended == batch.record_count() < 5, "full at max_batch_size"
    sent = await producer.send_batch(batch, "t", partition=1)
    metadata = await sent
    assert (metadata.partition, metadata.offset) == (1, 0)
    assert len(broker.log("t", 1)) == appended
    assert broker.log("t", 0) == []


async def test_admin_topics_and_errors_as_aiokafkas() -> None:
    broker, clients = bus({"old": 1})
    admin = clients.admin(bootstrap_servers="unused", client_id="x")
    await admin.start()
    # As aiokafka's (seen on Kafka 4.3): errors per topic in the response, nothing raised.
    response = await admin.create_topics(
        [
            NewTopic("old", 1, 1),
            NewTopic("new", 3, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic("replicated", 1, 3),
        ]
    )
    codes = {t["topic"]: t["error_code"] for t in response.to_object()["topic_errors"]}
    assert codes == {
        "old": TopicAlreadyExistsError.errno,
        "new": 0,
        "replicated": InvalidReplicationFactorError.errno,
    }
    assert await admin.list_topics() == ["new", "old"]
    assert broker.partitions("new") == 3
    described = await admin.describe_topics(["new", "missing"])
    assert [(t["topic"], t["error_code"], len(t["partitions"])) for t in described] == [
        ("new", 0, 3),
        ("missing", UnknownTopicOrPartitionError.errno, 0),
    ]
    configs = await admin.describe_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})
            for name in ("new", "old", "missing")
        ]
    )
    resources = [r for response in configs for r in response.to_object()["resources"]]
    assert [
        (
            r["resource_name"],
            r["error_code"],
            [(e["config_names"], e["config_value"]) for e in r["config_entries"]],
        )
        for r in resources
    ] == [
        ("new", 0, [("cleanup.policy", "compact")]),
        ("old", 0, [("cleanup.policy", "delete")]),  # Kafka's default
        ("missing", UnknownTopicOrPartitionError.errno, []),
    ]
    await admin.close()

    producer = clients.producer(max_request_size=100)
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send("missing", value=b"x")
    with pytest.raises(MessageSizeTooLargeError):
        await producer.send("new", value=b"x" * 200)
    with pytest.raises(TypeError, match="bytes"):
        await producer.send("new", value="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unsupported"):
        clients.consumer("new", max_poll_records=10)
    with pytest.raises(ValueError, match="enable_auto_commit"):
        clients.consumer("new", group_id="g")

    auto = InProcessClients(InProcessBroker(auto_create_partitions=2)).producer()
    assert await auto.partitions_for("fresh") == {0, 1}


async def test_no_topic_is_created_by_using_it() -> None:
    """As a broker with auto.create.topics.enable=false, which is what LinePulse runs."""
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    producer = clients.producer()
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.send("nowhere", value=b"x")
    with pytest.raises(UnknownTopicOrPartitionError):
        await producer.partitions_for("nowhere")
    consumer = clients.consumer("elsewhere", auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    assert await consumer.getmany(timeout_ms=0) == {}
    assert consumer.partitions_for_topic("elsewhere") is None
    await consumer.stop()
    assert broker.topics() == []
