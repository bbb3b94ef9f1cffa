"""The alerts service replicated on Kafka: one active instance, standbys holding its state.

Every `linepulse alerts` with `alerts.high_availability.enabled` joins one consumer group
on the compacted `kafka.alerts` topic (`alerts.state`). The member holding partition 0 is
the active instance: it evaluates the rules and delivers pages. The others are standbys:
they follow the topic and keep a copy of the active instance's state, serve reads from
it, and pass writes (acks, silences) on to the active instance. Kafka's group protocol
elects: when the active instance stops (cleanly: at once; killed: after the group's
session timeout, `alerts.high_availability.failover`), the group gives partition 0 to a
standby.

What the topic holds, the latest record per key (compaction keeps nothing else):

- `<table>/<key>`: a row of the engine's store (services/alerts/store.py): alerts,
  groups, silences, observations, the notification log, `meta`;
- `outbox/<notification key>`, `am_firing/<channel>/<fingerprint>`: the outbox's rows
  (services/alerts/outbox.py), so the idempotency key and the delivery state of every
  page survive a handover;
- `active`: who is active (`ActiveInstance`), rewritten with every write, at least every
  `LEASE_RENEW_S`.

The active instance writes with a transactional producer whose transactional id is the
group's: starting it fences any earlier active instance (a process that was paused or cut
off and still believes it is active), whose next write then fails, so it cannot change
the state its successor took over. A row of the engine's store is written to the topic
before a notification it produced reaches the outbox, so nothing is paged that a
successor would not know about. The outbox delivers only while the active instance's
last write is younger than the lease (`failover` / 2): one cut off from Kafka stops
paging before the group can hand its partition on.

A successor takes over in order: fence (start the transactional producer), write
`active`, read the topic up to that record (everything its predecessor committed is
before it), load the engine and the outbox from what it read, then evaluate and deliver.
A page whose send was under way when its sender died is sent again with the same key
(the `Idempotency-Key` header, PagerDuty's `dedup_key`, the email's Message-ID), so
receivers that honour the key see it once; one that does not may see it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError, ProducerFenced

from linepulse.bus import KafkaClients
from linepulse.bus.clients import Consumer, TransactionalProducer
from linepulse.runtime import wait_set
from services.alerts.outbox import OUTBOX_KINDS, Outbox, OutboxChange
from services.alerts.store import TABLES, AlertStore, Row, Table

log = logging.getLogger(__name__)

ACTIVE_KEY: Final = "active"
# The active instance rewrites `active` at least this often: its lease.
LEASE_RENEW_S: Final = 1.0
POLL_MS: Final = 200
# The group's heartbeat, against its session timeout (`failover`): Kafka's rule of thumb
# is a third; at most this.
HEARTBEAT_MAX_MS: Final = 1000
# A standby reloads its engine from what it followed at most this often.
RELOAD_EVERY_S: Final = 0.5


class NotActiveError(Exception):
    """This instance lost its role (fenced by a successor, or the group moved on)."""


@dataclass(frozen=True)
class ActiveInstance:
    """Who is active: its id, the URL its API answers on, since when and its last renewal
    (epoch ms)."""

    instance: str
    url: str | None
    since: int
    renewed: int

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, value: bytes) -> ActiveInstance:
        data = orjson.loads(value)
        return cls(str(data["instance"]), data.get("url"), int(data["since"]), int(data["renewed"]))


# -- what goes on the topic ----------------------------------------------------------------


def store_records(rows: Iterable[Row]) -> list[tuple[str, bytes | None]]:
    """The engine store's rows as (key, value) records; None: a tombstone."""
    return [
        (f"{table}/{key}", None if row is None else orjson.dumps({"at": row[0], "doc": row[1]}))
        for table, key, row in rows
    ]


def outbox_records(changes: Iterable[OutboxChange]) -> list[tuple[str, bytes | None]]:
    """The outbox's changes as (key, value) records; None: a tombstone."""
    return [
        (f"{kind}/{key}", None if doc is None else orjson.dumps(doc)) for kind, key, doc in changes
    ]


@dataclass
class Decoded:
    """A run of records from the topic, sorted by where they go."""

    rows: list[Row]
    outbox: list[OutboxChange]
    active: ActiveInstance | None


def decode(records: Iterable[tuple[bytes | None, bytes | None]]) -> Decoded:
    """Records of the topic, in offset order; a record of an unknown kind (a later
    version's) is skipped with a warning, never applied half-understood."""
    out = Decoded([], [], None)
    for raw_key, value in records:
        if raw_key is None:
            continue
        kind, _, key = raw_key.decode().partition("/")
        if kind in TABLES:
            row = None
            if value is not None:
                data = orjson.loads(value)
                row = (int(data["at"]), data["doc"])
            out.rows.append((cast(Table, kind), key, row))
        elif kind in OUTBOX_KINDS:
            doc = None if value is None else orjson.loads(value)
            out.outbox.append((kind, key, doc))
        elif kind == ACTIVE_KEY and value is not None:
            out.active = ActiveInstance.decode(value)
        else:
            log.warning("alerts.state: record %r of an unknown kind skipped", raw_key)
    return out


# -- the active instance's writes ------------------------------------------------------


class StateWriter:
    """What the active instance writes: changes collected as they are made, written to the
    topic in one transaction per `flush` together with its `active` record."""

    def __init__(
        self,
        producer: TransactionalProducer,
        topic: str,
        me: ActiveInstance,
        *,
        lease_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._me = me
        self._lease_s = lease_s
        self._clock = clock
        self._pending: dict[str, bytes | None] = {}  # key -> latest value, in first-change order
        self._lock = asyncio.Lock()
        self._last_written: float | None = None
        self.fenced = False
        # Told after each write (the outbox: what waited for it may go now).
        self.on_written: Callable[[], None] | None = None

    @property
    def since(self) -> int:
        """When this writer's instance took over (epoch ms)."""
        return self._me.since

    def add(self, records: Iterable[tuple[str, bytes | None]]) -> None:
        for key, value in records:
            self._pending[key] = value

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    @property
    def settled(self) -> bool:
        """Whether everything added is on the topic: nothing collected, no write under
        way. What a successor would know of, so what this instance may act on outside."""
        return not self._pending and not self._lock.locked()

    def lease_held(self) -> bool:
        """Whether the last write is younger than the lease (and nobody fenced us)."""
        last = self._last_written
        return not self.fenced and last is not None and self._clock() - last < self._lease_s

    async def flush(self) -> int:
        """Write what was collected and the `active` record in one transaction; returns
        the `active` record's offset. Raises `NotActiveError` when fenced, `KafkaError`
        when Kafka refused (what was collected is kept for the next flush)."""
        async with self._lock:
            if self.fenced:
                raise NotActiveError("fenced by a newer active instance")
            batch, self._pending = self._pending, {}
            now_ms = int(self._clock() * 1000)
            active = ActiveInstance(self._me.instance, self._me.url, self._me.since, now_ms)
            try:
                await self._producer.begin_transaction()
                for key, value in batch.items():
                    await self._producer.send(self._topic, value, key.encode(), partition=0)
                sent = await self._producer.send(
                    self._topic, active.encode(), ACTIVE_KEY.encode(), partition=0
                )
                await self._producer.commit_transaction()
            except ProducerFenced:
                self.fenced = True
                raise NotActiveError("fenced by a newer active instance") from None
            except KafkaError:
                with contextlib.suppress(KafkaError):
                    await self._producer.abort_transaction()
                self._pending = batch | self._pending  # later changes win
                raise
            self._last_written = self._clock()
            written: int = (await sent).offset
        if self.on_written is not None:
            self.on_written()
        return written


# -- following the topic ---------------------------------------------------------------


class StateFollower:
    """Reads the topic from its start and keeps the store and the outbox a copy of it
    while `applying`; always tracks how far it read and who is active."""

    def __init__(
        self,
        clients: KafkaClients,
        bootstrap: str,
        topic: str,
        store: AlertStore,
        outbox: Outbox,
        on_applied: Callable[[], None],
    ) -> None:
        self._clients = clients
        self._bootstrap = bootstrap
        self._tp = TopicPartition(topic, 0)
        self._store = store
        self._outbox = outbox
        self._on_applied = on_applied
        self.applying = True
        self.active: ActiveInstance | None = None
        self.position = 0  # the next offset to read
        self._moved = asyncio.Event()
        self._rebuild = False

    def rebuild(self) -> None:
        """Start again from the topic's first record with an empty copy (an active
        instance turned standby: its own copy may hold writes that never reached Kafka)."""
        self._rebuild = True
        self.applying = True
        self._moved.set()

    async def reach(self, offset: int, stop: asyncio.Event) -> bool:
        """Wait until the record at `offset` has been read; False if `stop` came first."""
        while self.position <= offset:
            if stop.is_set():
                return False
            self._moved.clear()
            await wait_set(self._moved, POLL_MS / 1000)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._clients.consumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            client_id="linepulse-alerts-follower",
        )
        await consumer.start()
        try:
            consumer.assign([self._tp])
            await self._restart(consumer)
            while not stop.is_set():
                if self._rebuild:
                    await self._restart(consumer)
                fetched = await consumer.getmany(self._tp, timeout_ms=POLL_MS)
                records = fetched.get(self._tp, [])
                if records:
                    self._take(records)
                    self.position = records[-1].offset + 1
                else:
                    # Past aborted transactions and control records, which carry no data.
                    self.position = max(self.position, await consumer.position(self._tp))
                self._moved.set()
        finally:
            await consumer.stop()

    async def _restart(self, consumer: Consumer) -> None:
        self._rebuild = False
        self._store.clear()
        self._outbox.clear()
        await consumer.seek_to_beginning(self._tp)
        self.position = 0
        self._on_applied()

    def _take(self, records: list[Any]) -> None:
        decoded = decode((r.key, r.value) for r in records)
        if decoded.active is not None:
            self.active = decoded.active
        if not self.applying:
            return
        if decoded.rows:
            self._store.apply(decoded.rows)
        if decoded.outbox:
            self._outbox.apply(decoded.outbox)
        if decoded.rows or decoded.outbox:
            self._on_applied()


# -- who is active ---------------------------------------------------------------------


class ActiveFirstAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Every partition to one member: the one that says it is active and took over last.

    Each member's join says, in its user data, since when it has been active (empty when
    it is not). A member that is active keeps its partitions however the group changes (a
    standby joining does not move them), and of two that both say so (one frozen past its
    session, now back, and the successor that fenced it) the later takeover wins; with
    none active, the first member id. aiokafka calls assignors through the class, so each
    `Leadership` makes its own subclass with its own `claim`."""

    name = "linepulse-active-first"
    version = 0

    @staticmethod
    def claim() -> int | None:
        """Since when this member is active (epoch ms); None if it is not."""
        return None

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        since = cls.claim()
        return ConsumerProtocolMemberMetadata(
            cls.version, list(topics), b"" if since is None else str(since).encode()
        )

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        claims = {}
        for member, metadata in members.items():
            data = metadata.user_data
            if data and data.isdigit():
                claims[member] = int(data)
        if claims:
            chosen: str | None = max(claims, key=lambda m: (claims[m], m))
        else:
            chosen = min(members, default=None)
        topics = sorted({t for m in members.values() for t in m.subscription})
        owned = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version, owned if member == chosen else [], b""
            )
            for member in members
        }

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


class Leadership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Membership in the group on the topic; `held` while this member has partition 0.

    On a rebalance every member's partitions are revoked before the new assignment
    (Kafka's eager protocol): `on_pause` is awaited at the revoke (stop paging until the
    group settles), then `on_gain` or `on_loss` when the assignment says who has it."""

    def __init__(
        self,
        clients: KafkaClients,
        bootstrap: str,
        topic: str,
        group: str,
        failover_s: float,
        *,
        on_pause: Callable[[], Awaitable[None]],
        on_gain: Callable[[], Awaitable[None]],
        on_loss: Callable[[], Awaitable[None]],
        claim: Callable[[], int | None],
    ) -> None:
        self._clients = clients
        self._claim = claim
        self._bootstrap = bootstrap
        self._tp = TopicPartition(topic, 0)
        self._group = group
        self._failover_s = failover_s
        self._on_pause, self._on_gain, self._on_loss = on_pause, on_gain, on_loss
        self.held = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._tp in revoked and self.held:
            await self._on_pause()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        had, self.held = self.held, self._tp in assigned
        if self.held:
            await self._on_gain()
        elif had:
            await self._on_loss()

    def _assignor(self) -> type[ActiveFirstAssignor]:
        claim = self._claim
        return type("ActiveFirst", (ActiveFirstAssignor,), {"claim": staticmethod(claim)})

    async def run(self, stop: asyncio.Event) -> None:
        session_ms = round(self._failover_s * 1000)
        consumer = self._clients.consumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=min(HEARTBEAT_MAX_MS, session_ms // 3),
            partition_assignment_strategy=(self._assignor(),),
            client_id="linepulse-alerts-leadership",
        )
        await consumer.start()
        try:
            consumer.subscribe([self._tp.topic], listener=self)
            while not stop.is_set():
                # Membership needs polls (aiokafka's max_poll_interval_ms); the records
                # are the follower's business.
                await consumer.getmany(timeout_ms=POLL_MS, max_records=100)
        finally:
            await consumer.stop()  # leaves the group: a standby takes over at once
            if self.held:
                self.held = False
                await self._on_loss()
