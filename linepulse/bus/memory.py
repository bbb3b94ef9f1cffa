"""An in-process Kafka: topics, partitions, offsets and consumer groups in one event loop.

What `linepulse demo` runs on instead of a broker. It keeps the semantics the services
rely on, and nothing more:

- A topic has N partitions; each is an append-only list of records with offsets from 0.
  There is no retention and no compaction: a compacted topic keeps every record, which a
  reader that keeps the latest per key cannot tell apart. Its `cleanup.policy` is kept as
  it was created (Kafka's default `delete` if not given) and described as Kafka does, so
  the services' start-up check of topic layouts (linepulse/bus/topics.py) sees the same.
- Topics exist only once created (the admin's `create_topics`, or `create_topic`):
  producing to a missing topic is an `UnknownTopicOrPartitionError`, and a consumer of one
  gets nothing until it exists, like a broker with `auto.create.topics.enable=false`.
- Keyed records go to aiokafka's default partition (murmur2 of the key, positive, modulo
  the partition count); unkeyed ones round-robin (aiokafka picks at random).
- A sent record is in the log when `send` returns; its future is already resolved.
- Consumer groups commit offsets and assign partitions round-robin over the members in
  the order they joined. A rebalance is eager, as Kafka's default protocol: every member
  is told its partitions are revoked (the listener's `on_partitions_revoked`, which may
  still commit) and the new assignment exists only once every member has let go, so a new
  owner always reads the offsets and checkpoints the last owner left. A member rejoins in
  its next `getmany`; until all have, `getmany` returns nothing, like aiokafka's.
- A waiting `getmany` wakes as soon as records arrive (or a rebalance needs it).
- A transactional producer's records are appended at its commit, all at once (so every
  consumer reads as with `read_committed`); starting a producer with a transactional id
  fences the earlier ones of that id, whose next send or commit raises `ProducerFenced`.

All of it lives on one event loop and is not thread-safe, as aiokafka's clients are not.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from asyncio import Future
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalOperation,
    IllegalStateError,
    InvalidReplicationFactorError,
    MessageSizeTooLargeError,
    ProducerClosed,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import murmur2
from aiokafka.protocol.admin import CreateTopicsResponse_v3, DescribeConfigsResponse_v0
from aiokafka.protocol.api import Response
from aiokafka.structs import ConsumerRecord, RecordMetadata

from linepulse.bus.clients import (
    Admin,
    Consumer,
    Fetched,
    Headers,
    Producer,
    RecordBatch,
    TransactionalProducer,
)

log = logging.getLogger(__name__)

CREATE_TIME: Final = 0  # Kafka's timestamp type: the producer's timestamp
RECORD_OVERHEAD: Final = 21  # bytes a record costs in a v2 batch besides key, value, headers
BATCH_OVERHEAD: Final = 61  # a v2 batch header
DEFAULT_MAX_BATCH_SIZE: Final = 16384  # aiokafka's defaults
DEFAULT_MAX_REQUEST_SIZE: Final = 1048576

# aiokafka arguments that only tune the network side of a real client: accepted, no effect.
_NETWORK_ONLY: Final = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "acks",
        "enable_idempotence",
        "compression_type",
        "linger_ms",
        "request_timeout_ms",
        "retry_backoff_ms",
        "metadata_max_age_ms",
        "connections_max_idle_ms",
        "max_partition_fetch_bytes",
        "fetch_max_bytes",
        "fetch_max_wait_ms",
        "fetch_min_bytes",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
        "rebalance_timeout_ms",
        "api_version",
        # Consumers see only committed records here: a transaction's records are appended
        # at its commit (InProcessTransactionalProducer), so "read_committed" is the rule.
        "isolation_level",
    }
)


def default_partition(key: bytes, partitions: int) -> int:
    """aiokafka's (and the Java client's) default partition of a keyed record."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def _check_config(config: Mapping[str, Any], honoured: Iterable[str], what: str) -> None:
    unknown = set(config) - _NETWORK_ONLY - set(honoured)
    if unknown:
        raise TypeError(f"{what}: unsupported argument(s) {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class StoredRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int  # epoch ms


@dataclass
class _Group:
    members: dict[str, frozenset[str]] = field(default_factory=dict)  # id -> topics, join order
    generation: int = 0
    waiting: set[str] = field(default_factory=set)  # members yet to let go of their partitions
    assignment: dict[str, frozenset[TopicPartition]] | None = None
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class InProcessBroker:
    """Topics and consumer groups; clients come from `InProcessClients(broker)`.

    `auto_create_partitions`: None (the default, and what LinePulse runs with) makes
    producing to a topic that does not exist an `UnknownTopicOrPartitionError`; a number
    makes it create the topic with that many partitions, as Kafka's
    `auto.create.topics.enable` with `num.partitions`, for tests of what that does.
    """

    def __init__(self, *, auto_create_partitions: int | None = None) -> None:
        self.auto_create_partitions = auto_create_partitions
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._configs: dict[str, dict[str, str]] = {}
        self._groups: dict[str, _Group] = {}
        self._epochs: dict[str, int] = {}  # transactional id -> the epoch of its live producer
        self._changed = asyncio.Event()
        self._ids = itertools.count(1)

    # -- topics -------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int, configs: Mapping[str, str] | None = None
    ) -> None:
        """A new topic; `configs` are its topic configs (`cleanup.policy`: `delete` if not
        given, Kafka's default), kept and described, not acted on."""
        if name in self._logs:
            raise TopicAlreadyExistsError(f"topic {name} exists")
        if partitions < 1:
            raise ValueError(f"topic {name}: partitions must be >= 1, got {partitions}")
        self._logs[name] = [[] for _ in range(partitions)]
        self._configs[name] = {"cleanup.policy": "delete", **(configs or {})}
        self._notify()

    def topics(self) -> list[str]:
        return sorted(self._logs)

    def topic_config(self, topic: str) -> dict[str, str] | None:
        """The topic's configs (`cleanup.policy` always among them); None if no topic."""
        configs = self._configs.get(topic)
        return None if configs is None else dict(configs)

    def partitions(self, topic: str) -> int | None:
        """How many partitions `topic` has; None if it does not exist."""
        logs = self._logs.get(topic)
        return None if logs is None else len(logs)

    def log(self, topic: str, partition: int) -> list[StoredRecord]:
        """A copy of one partition's records, in offset order."""
        return list(self._partition(topic, partition))

    def end_offset(self, tp: TopicPartition) -> int:
        return len(self._partition(tp.topic, tp.partition))

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        found = self._groups.get(group)
        return None if found is None else found.committed.get(tp)

    def _partitions_creating(self, topic: str) -> int:
        count = self.partitions(topic)
        if count is None:
            if self.auto_create_partitions is None:
                raise UnknownTopicOrPartitionError(f"topic {topic} does not exist")
            self.create_topic(topic, self.auto_create_partitions)
            count = self.auto_create_partitions
        return count

    def _partition(self, topic: str, partition: int) -> list[StoredRecord]:
        logs = self._logs.get(topic)
        if logs is None or not 0 <= partition < len(logs):
            raise UnknownTopicOrPartitionError(f"{topic}[{partition}] does not exist")
        return logs[partition]

    def _append(
        self,
        topic: str,
        partition: int,
        items: Iterable[tuple[bytes | None, bytes | None, Headers, int | None]],
    ) -> tuple[int, int]:
        """Records onto one partition at once; (first offset, first timestamp)."""
        log_ = self._partition(topic, partition)
        base = len(log_)
        now = int(time.time() * 1000)
        first_ts = now
        for i, (key, value, headers, timestamp) in enumerate(items):
            ts = now if timestamp is None else timestamp
            first_ts = ts if i == 0 else first_ts
            log_.append(StoredRecord(len(log_), key, value, tuple(headers), ts))
        if len(log_) > base:
            self._notify()
        return base, first_ts

    def _notify(self) -> None:
        """Wake every waiting `getmany`: they hold the event they waited on, not this one."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _fence(self, transactional_id: str) -> int:
        """A new producer of `transactional_id`: its epoch (earlier ones are fenced)."""
        epoch = self._epochs.get(transactional_id, 0) + 1
        self._epochs[transactional_id] = epoch
        return epoch

    def _is_fenced(self, transactional_id: str, epoch: int) -> bool:
        return self._epochs.get(transactional_id) != epoch

    # -- groups -------------------------------------------------------------------------

    def _member_id(self) -> str:
        return f"member-{next(self._ids)}"

    def _join(self, group: str, member: str, topics: frozenset[str]) -> None:
        state = self._groups.setdefault(group, _Group())
        if state.members.get(member) == topics:
            return
        state.members[member] = topics
        self._rebalance(state)

    def _leave(self, group: str, member: str) -> None:
        state = self._groups.get(group)
        if state is None or member not in state.members:
            return
        del state.members[member]
        self._rebalance(state)

    def _rebalance(self, state: _Group) -> None:
        state.generation += 1
        state.waiting = set(state.members)
        state.assignment = None
        self._settle(state)
        self._notify()

    def _let_go(self, group: str, member: str) -> int:
        """`member` holds no partitions any more; the generation it now waits for."""
        state = self._groups[group]
        state.waiting.discard(member)
        self._settle(state)
        return state.generation

    def _settle(self, state: _Group) -> None:
        """Once every member has let go: partitions round-robin over the members."""
        if state.waiting or state.assignment is not None:
            return
        assignment: dict[str, set[TopicPartition]] = {m: set() for m in state.members}
        topics = sorted(set().union(*state.members.values())) if state.members else []
        for topic in topics:
            members = [m for m, wanted in state.members.items() if topic in wanted]
            for number in range(self.partitions(topic) or 0):
                assignment[members[number % len(members)]].add(TopicPartition(topic, number))
        state.assignment = {m: frozenset(tps) for m, tps in assignment.items()}
        self._notify()

    def _assignment_of(
        self, group: str, member: str, generation: int
    ) -> frozenset[TopicPartition] | None:
        """The member's partitions in `generation`; None while that is not settled."""
        state = self._groups[group]
        if state.generation != generation or state.assignment is None:
            return None
        return state.assignment.get(member, frozenset())

    def _generation(self, group: str) -> int:
        return self._groups[group].generation

    def _is_member(self, group: str, member: str) -> bool:
        state = self._groups.get(group)
        return state is not None and member in state.members

    def _commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._groups.setdefault(group, _Group()).committed.update(offsets)


class InProcessBatch:
    """aiokafka's `BatchBuilder`: `append` returns None once `max_batch_size` is reached
    (the first record always fits)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.items: list[tuple[bytes | None, bytes | None, Headers, int | None]] = []
        self.size = BATCH_OVERHEAD
        self.closed = False

    def append(
        self,
        *,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
    ) -> object | None:
        if self.closed:
            raise IllegalStateError("the batch was sent already")
        _check_bytes(key, value)
        size = _record_size(key, value, headers)
        if self.items and self.size + size > self.max_size:
            return None
        self.items.append((key, value, tuple(headers), timestamp))
        self.size += size
        return len(self.items) - 1

    def record_count(self) -> int:
        return len(self.items)


def _check_bytes(key: object, value: object) -> None:
    # aiokafka without serializers takes bytes only; a str here is a bug on real Kafka too.
    for name, item in (("key", key), ("value", value)):
        if item is not None and not isinstance(item, bytes):
            raise TypeError(f"{name} must be bytes or None, got {type(item).__name__}")


def _record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return (
        RECORD_OVERHEAD
        + len(key or b"")
        + len(value or b"")
        + sum(len(k) + len(v) for k, v in headers)
    )


def _resolved(metadata: RecordMetadata) -> asyncio.Future[RecordMetadata]:
    future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
    future.set_result(metadata)
    return future


class InProcessProducer:
    def __init__(self, broker: InProcessBroker, **config: Any) -> None:
        _check_config(config, {"max_batch_size", "max_request_size"}, "producer")
        self.broker = broker
        self.max_batch_size: int = config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)
        self.max_request_size: int = config.get("max_request_size", DEFAULT_MAX_REQUEST_SIZE)
        self._closed = False
        self._round_robin = itertools.count()

    async def start(self) -> None:
        self._closed = False

    async def stop(self) -> None:
        self._closed = True

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        self._check_open()
        _check_bytes(key, value)
        headers = list(headers or [])
        size = _record_size(key, value, headers)
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(
                f"the record is {size} bytes, over max_request_size {self.max_request_size}"
            )
        count = self.broker._partitions_creating(topic)
        if partition is None:
            partition = (
                default_partition(key, count)
                if key is not None
                else next(self._round_robin) % count
            )
        offset, ts = self.broker._append(topic, partition, [(key, value, headers, timestamp_ms)])
        return _resolved(_metadata(topic, partition, offset, ts))

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        sent = await self.send(topic, value, key, partition, timestamp_ms, headers)
        return await sent

    def create_batch(self) -> RecordBatch:
        return InProcessBatch(self.max_batch_size)

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[RecordMetadata]:
        self._check_open()
        if not isinstance(batch, InProcessBatch):
            raise TypeError("send_batch takes a batch from this producer's create_batch()")
        self.broker._partitions_creating(topic)
        batch.closed = True
        offset, ts = self.broker._append(topic, partition, batch.items)
        return _resolved(_metadata(topic, partition, offset, ts))

    async def flush(self) -> None:
        """Nothing to wait for: a record is in the log when `send` returns."""

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.broker._partitions_creating(topic)))

    def _check_open(self) -> None:
        if self._closed:
            raise ProducerClosed()


class InProcessTransactionalProducer(InProcessProducer):
    """A `TransactionalProducer`: sends between `begin_transaction` and
    `commit_transaction` are held and appended together at the commit; `start` fences
    the earlier producers of the same transactional id."""

    def __init__(self, broker: InProcessBroker, transactional_id: str, **config: Any) -> None:
        super().__init__(broker, **config)
        self.transactional_id = transactional_id
        self._epoch = 0
        self._held: list[
            tuple[str, bytes | None, bytes | None, int | None, Headers, Future[RecordMetadata]]
        ] = []
        self._open = False

    async def start(self) -> None:
        await super().start()
        self._epoch = self.broker._fence(self.transactional_id)

    async def begin_transaction(self) -> None:
        self._check_live()
        if self._open:
            raise IllegalStateError("a transaction is already open")
        self._open = True

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        self._check_live()
        if not self._open:
            raise IllegalStateError("a transactional producer sends inside a transaction")
        _check_bytes(key, value)
        self.broker._partitions_creating(topic)
        future: Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._held.append((topic, key, value, partition, list(headers or []), future))
        return future  # resolved at the commit, cancelled by an abort

    async def commit_transaction(self) -> None:
        self._check_live()
        if not self._open:
            raise IllegalStateError("no transaction is open")
        held, self._held, self._open = self._held, [], False
        for topic, key, value, partition, headers, future in held:
            sent = await InProcessProducer.send(self, topic, value, key, partition, None, headers)
            future.set_result(sent.result())

    async def abort_transaction(self) -> None:
        for *_, future in self._held:
            future.cancel()
        self._held, self._open = [], False

    def _check_live(self) -> None:
        self._check_open()
        if self.broker._is_fenced(self.transactional_id, self._epoch):
            raise ProducerFenced()


def _metadata(topic: str, partition: int, offset: int, timestamp: int) -> RecordMetadata:
    return RecordMetadata(
        topic, partition, TopicPartition(topic, partition), offset, timestamp, CREATE_TIME, 0
    )


class InProcessConsumer:
    """aiokafka's `AIOKafkaConsumer` on an `InProcessBroker`.

    With `group_id`, a subscription joins the group (at the first `getmany`) and commits
    go to the group; without, a subscription gets every partition of its topics and a
    position from `auto_offset_reset`. `assign` takes partitions by hand in both cases.
    """

    def __init__(self, broker: InProcessBroker, *topics: str, **config: Any) -> None:
        # `partition_assignment_strategy` is taken and not used: partitions go round-robin
        # in join order here, so a member keeps what it has while earlier members stay.
        honoured = {
            "group_id",
            "auto_offset_reset",
            "enable_auto_commit",
            "partition_assignment_strategy",
        }
        _check_config(config, honoured, "consumer")
        self.broker = broker
        self.group_id: str | None = config.get("group_id")
        self.auto_offset_reset: str = config.get("auto_offset_reset", "latest")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(f"auto_offset_reset {self.auto_offset_reset!r}: not supported")
        if self.group_id is not None and config.get("enable_auto_commit", True):
            # Periodic background commits are not modelled: say so rather than differ.
            raise ValueError("the in-process bus needs enable_auto_commit=False with a group")
        self._member = broker._member_id()
        self._topics: frozenset[str] = frozenset()
        self._listener: ConsumerRebalanceListener | None = None
        self._manual = False
        self._joined = False
        self._generation = 0  # the group generation this member has let go for
        self._awaiting = False  # let go, waiting for the generation's assignment
        self._positions: dict[TopicPartition, int | None] = {}  # None: reset on first use
        self._started = False
        self._stopped = False
        self._turn = 0
        if topics:
            self.subscribe(topics)

    async def start(self) -> None:
        self._started = True
        if not self._manual and self.group_id is None:
            self._follow_topics()

    async def stop(self) -> None:
        """Leave the group without revoke callbacks, as aiokafka's `stop`."""
        if self._stopped:
            return
        self._stopped = True
        if self.group_id is not None and self._joined:
            self.broker._leave(self.group_id, self._member)
        self._positions.clear()
        self.broker._notify()

    # -- what this consumer reads -------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("subscribe takes a list of topics")
        self._topics = frozenset(topics)
        self._listener = listener
        self._manual = False
        if self._started and self.group_id is None:
            self._follow_topics()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        if self.group_id is not None and self._joined:
            raise IllegalStateError("subscription and manual assignment cannot be mixed")
        self._manual = True
        self._topics = frozenset()
        self._positions = {tp: self._positions.get(tp) for tp in partitions}

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.broker.partitions(topic)
        return None if count is None else set(range(count))

    def _follow_topics(self) -> None:
        """Group-less subscription: every partition of the topics, new ones as they come."""
        for topic in self._topics:
            for number in range(self.broker.partitions(topic) or 0):
                tp = TopicPartition(topic, number)
                if tp not in self._positions:
                    self._positions[tp] = self._reset(tp)

    async def _rejoin(self) -> bool:
        """Follow the group: let go on a rebalance, adopt the new assignment once settled.
        True when this consumer holds its current assignment."""
        group = self.group_id
        if group is None:
            if not self._manual:
                self._follow_topics()
            return True
        if self._manual:
            return True
        if not self._topics:
            return False
        if not self._joined:
            self.broker._join(group, self._member, self._topics)
            self._joined = True
        if self._generation != self.broker._generation(group):
            revoked = set(self._positions)
            await self._call("on_partitions_revoked", revoked)
            self._positions.clear()
            self._generation = self.broker._let_go(group, self._member)
            self._awaiting = True
        if self._awaiting:
            assigned = self.broker._assignment_of(group, self._member, self._generation)
            if assigned is None:
                return False
            self._awaiting = False
            self._positions = dict.fromkeys(assigned)
            await self._call("on_partitions_assigned", set(assigned))
        return True

    async def _call(self, callback: str, partitions: set[TopicPartition]) -> None:
        """A listener callback; its failure is logged and the rebalance goes on (aiokafka)."""
        if self._listener is None:
            return
        try:
            result = getattr(self._listener, callback)(partitions)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("rebalance listener %s failed in %s", self._listener, callback)

    # -- positions ----------------------------------------------------------------------

    def _reset(self, tp: TopicPartition) -> int:
        if self.group_id is not None:
            committed = self.broker.committed(self.group_id, tp)
            if committed is not None:
                return committed
        return 0 if self.auto_offset_reset == "earliest" else self.broker.end_offset(tp)

    def _position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            raise IllegalStateError(f"partition {tp} is not assigned")
        position = self._positions[tp]
        if position is None:
            position = self._positions[tp] = self._reset(tp)
        return position

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self._positions:
            raise IllegalStateError(f"partition {partition} is not assigned")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._positions[partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._positions):
            self.seek(tp, 0)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._positions):
            self.seek(tp, self.broker.end_offset(tp))

    async def position(self, partition: TopicPartition) -> int:
        return self._position(partition)

    def highwater(self, partition: TopicPartition) -> int | None:
        if partition not in self._positions:
            return None
        return self.broker.end_offset(partition)

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.end_offset(tp) for tp in partitions}

    # -- offsets of the group -----------------------------------------------------------

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        group = self.group_id
        if group is None:
            raise IllegalOperation("Requires group_id")
        if not self._manual and not self.broker._is_member(group, self._member):
            raise CommitFailedError("this consumer is no longer a member of the group")
        if offsets is None:
            offsets = {tp: self._position(tp) for tp in self._positions}
        plain: dict[TopicPartition, int] = {}
        for tp, offset in offsets.items():
            if tp not in self._positions:
                raise IllegalStateError(f"Partition {tp} is not assigned")
            plain[tp] = offset if isinstance(offset, int) else offset.offset  # OffsetAndMetadata
        self.broker._commit(group, plain)

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.group_id is None:
            raise IllegalOperation("Requires group_id")
        return self.broker.committed(self.group_id, partition)

    # -- records ------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched:
        """Records from the positions on, up to `max_records` in all; waits up to
        `timeout_ms` for some and returns as soon as there are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            if self._stopped:
                raise ConsumerStoppedError()
            changed = self.broker._changed  # taken before looking: no wake-up is missed
            if await self._rejoin():
                fetched = self._fetch(partitions, max_records)
                if fetched:
                    return fetched
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return {}

    def _fetch(self, only: tuple[TopicPartition, ...], max_records: int | None) -> Fetched:
        for tp in only:
            if tp not in self._positions:
                raise IllegalStateError(f"partition {tp} is not assigned")
        tps = sorted(only or self._positions)
        if not tps:
            return {}
        # Start at a different partition each time, so that no partition starves.
        self._turn = (self._turn + 1) % len(tps)
        room = max_records
        fetched: Fetched = {}
        for tp in tps[self._turn :] + tps[: self._turn]:
            if room is not None and room <= 0:
                break
            position = self._position(tp)
            records = self.broker._partition(tp.topic, tp.partition)
            end = len(records) if room is None else min(len(records), position + room)
            if end <= position:
                continue
            fetched[tp] = [_consumer_record(tp, r) for r in records[position:end]]
            self._positions[tp] = end
            if room is not None:
                room -= end - position
        return fetched


def _consumer_record(tp: TopicPartition, record: StoredRecord) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        tp.topic,
        tp.partition,
        record.offset,
        record.timestamp,
        CREATE_TIME,
        record.key,
        record.value,
        None,
        -1 if record.key is None else len(record.key),
        -1 if record.value is None else len(record.value),
        list(record.headers),
    )


class InProcessAdmin:
    def __init__(self, broker: InProcessBroker, **config: Any) -> None:
        _check_config(config, (), "admin")
        self.broker = broker

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return self.broker.topics()

    async def create_topics(self, new_topics: list[NewTopic]) -> Response:
        """Creates the missing ones with their partitions and topic configs; per topic an
        error code in the response, as Kafka's (an existing topic is left as it is). One
        in-process broker: a replication factor above 1 is refused, as a one-node Kafka's."""
        results: list[tuple[str, int, str | None]] = []
        for topic in new_topics:
            if self.broker.partitions(topic.name) is not None:
                code, message = (
                    TopicAlreadyExistsError.errno,
                    f"Topic '{topic.name}' already exists.",
                )
            elif topic.replication_factor > 1:
                code = InvalidReplicationFactorError.errno
                message = (
                    f"Unable to replicate the partition {topic.replication_factor} time(s): "
                    "the in-process bus is one broker"
                )
            else:
                self.broker.create_topic(topic.name, topic.num_partitions, topic.topic_configs)
                code, message = 0, None
            results.append((topic.name, code, message))
        return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=results)

    async def describe_topics(self, topics: list[str] | None = None) -> list[Any]:
        """Kafka's metadata per topic (all of them for None); a missing one has error 3."""
        names = self.broker.topics() if topics is None else topics
        described: list[Any] = []
        for name in names:
            count = self.broker.partitions(name)
            described.append(
                {
                    "error_code": UnknownTopicOrPartitionError.errno if count is None else 0,
                    "topic": name,
                    "is_internal": False,
                    "partitions": [
                        {"error_code": 0, "partition": n, "leader": 0, "replicas": [0], "isr": [0]}
                        for n in range(count or 0)
                    ],
                }
            )
        return described

    async def describe_configs(
        self, config_resources: list[ConfigResource], include_synonyms: bool = False
    ) -> list[Response]:
        """Topic configs as Kafka's `DescribeConfigsResponse` (v0 shape), filtered to the
        names a resource asks for; a missing topic has error 3."""
        resources: list[tuple[int, str, int, str, list[tuple[str, str, bool, bool, bool]]]] = []
        for resource in config_resources:
            if resource.resource_type is not ConfigResourceType.TOPIC:
                raise ValueError("the in-process bus has topic configs only")
            configs = self.broker.topic_config(resource.name)
            if configs is None:
                resources.append((UnknownTopicOrPartitionError.errno, "", 2, resource.name, []))
                continue
            asked = resource.configs
            entries = [
                (name, value, False, False, False)
                for name, value in sorted(configs.items())
                if not asked or name in asked
            ]
            resources.append((0, "", int(resource.resource_type), resource.name, entries))
        return [DescribeConfigsResponse_v0(throttle_time_ms=0, resources=resources)]


class InProcessClients:
    """`KafkaClients` bound to one `InProcessBroker`."""

    def __init__(self, broker: InProcessBroker) -> None:
        self.broker = broker

    def producer(self, **config: Any) -> Producer:
        return InProcessProducer(self.broker, **config)

    def transactional_producer(self, transactional_id: str, **config: Any) -> TransactionalProducer:
        return InProcessTransactionalProducer(self.broker, transactional_id, **config)

    def consumer(self, *topics: str, **config: Any) -> Consumer:
        return InProcessConsumer(self.broker, *topics, **config)

    def admin(self, **config: Any) -> Admin:
        return InProcessAdmin(self.broker, **config)

    async def reachable(self, bootstrap: str) -> bool:
        """Always: the broker is in this process."""
        return True

    async def fail_pending(self, producer: Producer) -> None:
        """Nothing to fail: an in-process send is in the log when `send` returns."""
