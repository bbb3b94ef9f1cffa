"""Which role a replicated alerts instance plays, and the moves between them.

An instance starts as a standby (`role` "standby"): its `StateFollower` keeps the store
and the outbox a copy of the `alerts.state` topic, and the engine is reloaded from that
copy (at most every `RELOAD_EVERY_S`) so the API shows what the active instance decided.
When the group gives it partition 0 it takes over (services/alerts/replication.py has
the order and why) and runs the service's active duties (`act`: rule evaluation and the
outbox) until the group takes the partition away, a successor fences it, or the service
stops. Then it is a standby again, on a copy rebuilt from the topic.

While the group rebalances (a member joins or leaves) the active instance pauses: it
neither evaluates nor pages until the new assignment says whether it keeps partition 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Literal

from aiokafka.errors import KafkaError

from linepulse.bus import KafkaClients
from linepulse.runtime import wait_any, wait_set
from services.alerts.engine import AlertEngine
from services.alerts.outbox import Outbox
from services.alerts.replication import (
    LEASE_RENEW_S,
    RELOAD_EVERY_S,
    ActiveInstance,
    Leadership,
    NotActiveError,
    StateFollower,
    StateWriter,
    outbox_records,
    store_records,
)

log = logging.getLogger(__name__)

Role = Literal["standby", "active"]
FLUSH_EVERY_S: Final = 0.1  # outbox changes (a page delivered) reach the topic this soon
RETAKE_S: Final = 1.0  # an elected instance whose writer failed starts again after this


def instance_id() -> str:
    """This process, as other instances and the logs name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Failover:
    """The role of one instance of a replicated alerts service (see the module doc).

    `act(stop, writer)` runs the active duties until `stop` is set; it writes through
    `writer` (the engine's and the outbox's changes reach it through their hooks)."""

    def __init__(
        self,
        *,
        clients: KafkaClients,
        bootstrap: str,
        topic: str,
        failover_s: float,
        engine: AlertEngine,
        outbox: Outbox,
        url: str | None,
        act: Callable[[asyncio.Event, StateWriter], Coroutine[Any, Any, None]],
        on_role: Callable[[Role], None] = lambda role: None,
    ) -> None:
        self._clients = clients
        self._bootstrap = bootstrap
        self._topic = topic
        self._failover_s = failover_s
        self._engine = engine
        self._store = engine.store
        self._outbox = outbox
        self._act = act
        self._on_role = on_role
        self.instance = instance_id()
        self.url = url
        # One group and one transactional id per state topic: whoever holds it is active,
        # and starting a writer fences the one before.
        self.group = f"linepulse-alerts.{topic}"
        self.follower = StateFollower(
            clients, bootstrap, topic, self._store, outbox, on_applied=self._mark_stale
        )
        self.leadership = Leadership(
            clients,
            bootstrap,
            topic,
            self.group,
            failover_s,
            on_pause=self._pause,
            on_gain=self._gain,
            on_loss=self._lose,
            claim=self._claim,
        )
        self.role: Role = "standby"
        self.writer: StateWriter | None = None
        self._paused = False
        self._gained = asyncio.Event()
        self._lost = asyncio.Event()
        self._stale = False

    # -- what the API and the duties ask --------------------------------------------------

    def writes_here(self) -> bool:
        """Acks and silences are applied here (else passed on to the active instance)."""
        return self.role == "active"

    def may_act(self) -> bool:
        """Evaluate and page now: active, not paused by a rebalance, lease held."""
        writer = self.writer
        return (
            self.role == "active"
            and not self._paused
            and writer is not None
            and writer.lease_held()
        )

    def may_deliver(self) -> bool:
        """Send from the outbox now: `may_act`, and every row queued so far is on the
        topic. A row sent before its successor could know of it would be queued and sent
        again after a takeover (a report is owed while no row of it is known); so what is
        left to chance is only a send whose `delivered` mark had not reached the topic."""
        writer = self.writer
        return self.may_act() and writer is not None and writer.settled

    @property
    def active(self) -> ActiveInstance | None:
        """The active instance as the topic last said (this one, when active)."""
        return self.follower.active

    # -- the group's callbacks ------------------------------------------------------------

    def _claim(self) -> int | None:
        """Since when this instance is active, as it tells the group when it joins."""
        writer = self.writer
        if self.role != "active" or writer is None or writer.fenced:
            return None
        return writer.since

    async def _pause(self) -> None:
        self._paused = True
        log.info("alerts: the group is rebalancing; paging paused")

    async def _gain(self) -> None:
        self._paused = False
        if self.role != "active":
            self._gained.set()

    async def _lose(self) -> None:
        self._paused = False
        self._lost.set()

    def _mark_stale(self) -> None:
        self._stale = True

    # -- the roles ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Follow, take part in the election, act while elected; until `stop`."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.follower.run(stop), name="alerts-follower")
            tasks.create_task(self.leadership.run(stop), name="alerts-leadership")
            tasks.create_task(self._reload_loop(stop), name="alerts-standby-view")
            log.info("alerts: standby (instance %s), following %s", self.instance, self._topic)
            while not stop.is_set():
                await wait_any((self._gained, stop))
                if not self._gained.is_set():
                    break
                self._gained.clear()
                await self._serve(stop)
                if stop.is_set():
                    break
                if self.leadership.held:
                    # Still elected, but it had to stop (its writer failed, e.g. Kafka was
                    # away): take over again with a fresh writer rather than leave the role
                    # held by an instance that does nothing.
                    log.info("alerts: still elected; taking over again in %g s", RETAKE_S)
                    await asyncio.sleep(RETAKE_S)
                    self._gained.set()
                else:
                    log.info("alerts: standby again (instance %s)", self.instance)

    async def _reload_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._stale and self.role == "standby":
                self._stale = False
                self._engine.reload()
            await wait_set(stop, RELOAD_EVERY_S)

    async def _serve(self, stop: asyncio.Event) -> None:
        """Take over, act until the role is lost or `stop`, then step down."""
        started = time.monotonic()
        self._lost.clear()
        producer = self._clients.transactional_producer(
            self.group, bootstrap_servers=self._bootstrap, client_id="linepulse-alerts-writer"
        )
        me = ActiveInstance(self.instance, self.url, int(time.time() * 1000), 0)
        try:
            await producer.start()  # fences the writer of any earlier active instance
            writer = StateWriter(producer, self._topic, me, lease_s=self._failover_s / 2)
            offset = await writer.flush()
            if not await self.follower.reach(offset, stop):
                return
            self.follower.applying = False
            self._engine.reload()
            self._store.on_commit = lambda rows: writer.add(store_records(rows))
            self._outbox.on_change = lambda changes: writer.add(outbox_records(changes))
            writer.on_written = self._outbox.wake
            self.writer = writer
            self.role = "active"
            self._on_role("active")
            log.warning(
                "alerts: ACTIVE (instance %s) after %.1f s of takeover; %d open alert(s), "
                "%d notification(s) undelivered",
                self.instance,
                time.monotonic() - started,
                sum(a.state.value != "resolved" for a in self._engine.alerts()),
                self._outbox.depth(),
            )
            await self._act_until_lost(stop, writer)
        except (KafkaError, NotActiveError) as error:
            log.warning("alerts: could not stay active: %s", error)
        finally:
            self._store.on_commit = None
            self._outbox.on_change = None
            self.writer = None
            was_active = self.role == "active"
            self.role = "standby"
            if was_active:
                self._on_role("standby")
            with contextlib.suppress(KafkaError):
                await producer.stop()
            if not stop.is_set():
                self.follower.rebuild()

    async def _act_until_lost(self, stop: asyncio.Event, writer: StateWriter) -> None:
        done = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._act(done, writer), name="alerts-active")
            tasks.create_task(self._flush_loop(done, writer), name="alerts-writer")
            await wait_any((self._lost, stop, done))
            done.set()

    async def _flush_loop(self, done: asyncio.Event, writer: StateWriter) -> None:
        """Write the changes as they come, and renew the lease."""
        last = time.monotonic()
        while not done.is_set():
            if writer.dirty or time.monotonic() - last >= LEASE_RENEW_S:
                try:
                    await writer.flush()
                    last = time.monotonic()
                except NotActiveError:
                    log.warning("alerts: a newer active instance fenced this one")
                    self._lost.set()
                    done.set()
                    return
                except KafkaError as error:
                    log.warning("alerts: state not written to Kafka (retrying): %s", error)
                    if time.monotonic() - last > self._failover_s:
                        # Its lease is long gone (it pages nothing): start over with a new
                        # writer, whose start also tells whether another took over.
                        log.warning("alerts: no write for %.0f s; starting over", self._failover_s)
                        self._lost.set()
                        done.set()
                        return
            await wait_set(done, FLUSH_EVERY_S)
