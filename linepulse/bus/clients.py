"""The Kafka client surface the services use, and the factory that makes the clients.

A service never names a client class: it asks its `KafkaClients` for a producer, a
consumer or an admin client, with aiokafka's constructor arguments. `AIOKAFKA` makes
aiokafka's own clients (a real broker at `bootstrap_servers`); `InProcessClients` makes
clients of an `InProcessBroker` (linepulse/bus/memory.py). Which one runs is the caller's
choice from its configuration; the service code is the same.

The protocols below are exactly the subset of aiokafka's API the services call, with
aiokafka's return shapes (`TopicPartition`, `ConsumerRecord`, `RecordMetadata` are
aiokafka's own structs), so mypy checks a service against what the in-process bus offers.
They hold public methods only (tests/unit/common/test_bus_protocols.py): a service that
reached into a client's internals would run on one of the two buses alone.

No client LinePulse makes ever creates a topic. Kafka creates a topic that a metadata
request names when the request allows it and the broker's `auto.create.topics.enable` is
true (its default), with the broker's defaults: one partition, `cleanup.policy=delete`.
That is how the compose stack's alerts consumers made `telemetry` and `kpi` 200 ms before
`linepulse kpi` could create them properly (issue 14). The Java client has
`allow.auto.create.topics` (KIP-361) for this; aiokafka 0.14 has no such option and allows
creation in every metadata request its clients send, so `forbid_topic_auto_creation` makes
that request's default "do not create". Topics are created only by `ensure_topics`
(linepulse/bus/topics.py), with the layout the plant config asks for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import aiokafka
import aiokafka.admin.client
import aiokafka.client
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource
from aiokafka.errors import KafkaError, ProducerClosed
from aiokafka.protocol.api import Response
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord, RecordMetadata

from linepulse.bus.security import KafkaSecurity, client_kwargs

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 2.0  # a reachability probe per bootstrap address
SENDER_STOP_TIMEOUT_S: Final = 10.0  # aiokafka's sender task, when pending sends are failed

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


class TransactionalProducer(Producer, Protocol):
    """A producer whose sends between `begin_transaction` and `commit_transaction` reach
    `read_committed` consumers together or not at all. Starting one fences every earlier
    producer of the same transactional id: their next commit fails with aiokafka's
    `ProducerFenced`, so a process that lost its role cannot write after its successor."""

    async def begin_transaction(self) -> None: ...

    async def commit_transaction(self) -> None: ...

    async def abort_transaction(self) -> None: ...


class Consumer(Protocol):
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

    async def create_topics(self, new_topics: list[NewTopic]) -> Response:
        """A `CreateTopicsResponse`: errors are per topic in it, never raised."""
        ...

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
        """Per topic a dict with `topic`, `error_code` and `partitions` (a list)."""
        ...

    async def describe_configs(
        self, config_resources: list[ConfigResource], include_synonyms: bool = False
    ) -> list[Response]:
        """`DescribeConfigsResponse`s: per resource an `error_code` and `config_entries`."""
        ...


class KafkaClients(Protocol):
    """Makes the clients a service uses; arguments are aiokafka's constructor arguments."""

    def producer(self, **config: Any) -> Producer: ...

    def transactional_producer(self, transactional_id: str, **config: Any) -> TransactionalProducer:
        """A producer of transactions under `transactional_id` (see `TransactionalProducer`)."""
        ...

    def consumer(self, *topics: str, **config: Any) -> Consumer: ...

    def admin(self, **config: Any) -> Admin: ...

    async def reachable(self, bootstrap: str) -> bool:
        """Whether the broker at `bootstrap` answers now, without a client's noise."""
        ...

    async def fail_pending(self, producer: Producer) -> None:
        """Fail every send `producer` (one of these clients') still holds, so that each
        record's fate is known and its `stop()` returns: giving up on a broker that is
        away. The producer is not usable afterwards; stop it."""
        ...


class _NoAutoCreateMetadataRequest(MetadataRequest):  # type: ignore[misc]
    """aiokafka's metadata request, with `allow_auto_topic_creation` false unless given
    (aiokafka's clients never give it)."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


# The aiokafka modules that build metadata requests (its client, for consumers and
# producers, and its admin client); each looks `MetadataRequest` up when it sends one.
_METADATA_SENDERS: Final = (aiokafka.client, aiokafka.admin.client)


def forbid_topic_auto_creation() -> None:
    """Make every metadata request aiokafka's clients send in this process say "do not
    create the topics named here" (field `allow_auto_topic_creation` of Metadata v4+, the
    versions aiokafka uses with any broker since Kafka 0.11). Idempotent.

    It is process-wide because aiokafka builds the request inside its client without a
    hook; LinePulse wants no topic auto-created anywhere, tests and benches included.
    Raises RuntimeError, at the first client, if aiokafka no longer builds the request the
    way this relies on (a version other than the >= 0.14 LinePulse is tested with).
    """
    for module in _METADATA_SENDERS:
        current = getattr(module, "MetadataRequest", None)
        if current is _NoAutoCreateMetadataRequest:
            continue
        if current is not MetadataRequest:
            raise RuntimeError(
                f"aiokafka {aiokafka.__version__}: {module.__name__} does not build "
                "aiokafka.protocol.metadata.MetadataRequest; LinePulse cannot keep its "
                "clients from auto-creating topics (it needs aiokafka >= 0.14)"
            )
        module.MetadataRequest = _NoAutoCreateMetadataRequest


class AioKafkaClients:
    """aiokafka's own clients, talking to the broker named by `bootstrap_servers`.

    With `security` (the plant's `kafka.security`), every client gets its TLS and SASL
    arguments, which win over the caller's: a service cannot open a plaintext client by
    accident. The password and TLS files are read here, once, so a bad setting fails the
    service at start with a message naming the key, not later in a consume loop.

    No client made here auto-creates a topic (nor does any other aiokafka client in the
    process once one has been made here): see `forbid_topic_auto_creation`.
    """

    def __init__(self, security: KafkaSecurity | None = None) -> None:
        self.protocol = "PLAINTEXT" if security is None else security.protocol
        self._security = {} if security is None else client_kwargs(security)

    def __repr__(self) -> str:  # the arguments hold the password: never shown
        return f"AioKafkaClients(protocol={self.protocol})"

    def producer(self, **config: Any) -> Producer:
        forbid_topic_auto_creation()
        producer: Producer = AIOKafkaProducer(**config | self._security)
        return producer

    def transactional_producer(self, transactional_id: str, **config: Any) -> TransactionalProducer:
        forbid_topic_auto_creation()
        producer: TransactionalProducer = AIOKafkaProducer(
            transactional_id=transactional_id, enable_idempotence=True, **config | self._security
        )
        return producer

    def consumer(self, *topics: str, **config: Any) -> Consumer:
        forbid_topic_auto_creation()
        consumer: Consumer = AIOKafkaConsumer(*topics, **config | self._security)
        return consumer

    def admin(self, **config: Any) -> Admin:
        forbid_topic_auto_creation()
        admin: Admin = AIOKafkaAdminClient(**config | self._security)
        return admin

    async def reachable(self, bootstrap: str) -> bool:
        """Whether some bootstrap address accepts a TCP connection (cheaper and quieter
        than a Kafka client that fails: aiokafka logs each failed attempt)."""
        for address in bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return True
        return False

    async def fail_pending(self, producer: Producer) -> None:
        """Fail every batch aiokafka still holds with `ProducerClosed`.

        aiokafka's `stop()` waits for every pending batch, which with the broker away is
        forever, and has no public call to give up. So: stop its sender task first (its
        requests in flight end and put their batches back), then fail what is queued.
        Failing batches under a running sender breaks its bookkeeping (a KeyError in
        `reenqueue`, seen in the ingest sink's restart test). These are aiokafka's
        internals, so they are touched here, beside the class that makes the producer.
        """
        if not isinstance(producer, AIOKafkaProducer):
            raise TypeError(f"not a producer of these clients: {producer!r}")
        try:
            await asyncio.wait_for(producer._sender.close(), SENDER_STOP_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as error:
            log.warning("Kafka producer's sender did not stop cleanly: %r", error)
        queued = producer._message_accumulator
        batches = [b.future for q in queued._batches.values() for b in q]
        batches += [b.future for b in queued._pending_batches]
        queued.fail_all(ProducerClosed())
        for future in batches:  # retrieved, so asyncio does not log them as unhandled
            if future.done() and not future.cancelled():
                future.exception()

    def options(self) -> dict[str, Any]:
        """The security arguments alone (what every client made here is given)."""
        return dict(self._security)


# Plaintext and stateless: nothing is opened until a service asks for a client and starts it.
AIOKAFKA: Final[KafkaClients] = AioKafkaClients()
