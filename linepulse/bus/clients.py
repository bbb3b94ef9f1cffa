"""The Kafka client surface the services use, and the factory that makes the clients.

A service never names a client class: it asks its `KafkaClients` for a producer, a
consumer or an admin client, with aiokafka's constructor arguments. `AIOKAFKA` makes
aiokafka's own clients (a real broker at `bootstrap_servers`); `InProcessClients` makes
clients of an `InProcessBroker` (linepulse/bus/memory.py). Which one runs is the caller's
choice from its configuration; the service code is the same.

The protocols below are exactly the subset of aiokafka's API the services call, with
aiokafka's return shapes (`TopicPartition`, `ConsumerRecord`, `RecordMetadata` are
aiokafka's own structs), so mypy checks a service against what the in-process bus offers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord, RecordMetadata

from linepulse.bus.security import KafkaSecurity, client_kwargs

Headers = Sequence[tuple[str, bytes]]
Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class RecordBatch(Protocol):
    """aiokafka's `BatchBuilder`: `append` returns None when the batch is full."""

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
    ) -> object | None: ...

    def record_count(self) -> int: ...


class Producer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]: ...

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata: ...

    def create_batch(self) -> RecordBatch: ...

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[RecordMetadata]: ...

    async def flush(self) -> None: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


class MetadataClient(Protocol):
    async def force_metadata_update(self) -> bool: ...


class Consumer(Protocol):
    # aiokafka has no public "refresh metadata now"; the services use its client's.
    _client: MetadataClient

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(
        self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None
    ) -> None: ...

    def assign(self, partitions: Iterable[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...

    async def seek_to_end(self, *partitions: TopicPartition) -> None: ...

    async def position(self, partition: TopicPartition) -> int: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    async def end_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...

    async def committed(self, partition: TopicPartition) -> int | None: ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class Admin(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_topics(self) -> list[str]: ...

    async def create_topics(self, new_topics: list[NewTopic]) -> object: ...


class KafkaClients(Protocol):
    """Makes the clients a service uses; arguments are aiokafka's constructor arguments."""

    def producer(self, **config: Any) -> Producer: ...

    def consumer(self, *topics: str, **config: Any) -> Consumer: ...

    def admin(self, **config: Any) -> Admin: ...


class AioKafkaClients:
    """aiokafka's own clients, talking to the broker named by `bootstrap_servers`.

    With `security` (the plant's `kafka.security`), every client gets its TLS and SASL
    arguments, which win over the caller's: a service cannot open a plaintext client by
    accident. The password and TLS files are read here, once, so a bad setting fails the
    service at start with a message naming the key, not later in a consume loop.
    """

    def __init__(self, security: KafkaSecurity | None = None) -> None:
        self.protocol = "PLAINTEXT" if security is None else security.protocol
        self._security = {} if security is None else client_kwargs(security)

    def __repr__(self) -> str:  # the arguments hold the password: never shown
        return f"AioKafkaClients(protocol={self.protocol})"

    def producer(self, **config: Any) -> Producer:
        producer: Producer = AIOKafkaProducer(**config | self._security)
        return producer

    def consumer(self, *topics: str, **config: Any) -> Consumer:
        consumer: Consumer = AIOKafkaConsumer(*topics, **config | self._security)
        return consumer

    def admin(self, **config: Any) -> Admin:
        admin: Admin = AIOKafkaAdminClient(**config | self._security)
        return admin

    def options(self) -> dict[str, Any]:
        """The security arguments alone, for code that must build an aiokafka client
        itself (the ingest sink reaches into the producer's internals)."""
        return dict(self._security)


# Plaintext and stateless: nothing is opened until a service asks for a client and starts it.
AIOKAFKA: Final[KafkaClients] = AioKafkaClients()
