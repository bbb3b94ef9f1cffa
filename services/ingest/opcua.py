"""The OPC-UA ingester: one endpoint's configured nodes, subscribed, into the Kafka side.

Per source (one endpoint) the ingester holds one asyncua session with one subscription
that monitors every configured node. Values reach the `Sink` in column batches:

* The subscription callback gets each PublishResponse whole (asyncua's raw session
  service; see `opcua_session`) and appends its values to a `SampleBatch` synchronously:
  no task, no queue entry, no metric update per notification.
* A flush task hands the batch to `sink.put` every FLUSH_S or when it holds
  `ingest.batch_samples` samples. When the sink is slow the batch may grow to
  PENDING_BATCHES batches; then the callback waits, the publish loop stops asking, and
  the server's monitored-item queues (`queue_size`, discard oldest) hold or shed the
  rest: the OPC-UA standard's own bounded queue (Part 4 §5.12.1.5).

Connection loss (server restart, network, a dead probe, a Bad subscription status) is
met the same way every time: every machine of the endpoint gets `state = unknown` at the
detection time, the session is dropped, and a NEW `Client` is built after a backoff
from `reconnect_min_s` doubling to `reconnect_max_s`. A new client rather than
asyncua's `auto_reconnect`: a client reused after a loss can hang (asyncua #1660),
auto_reconnect does not cover the first connect (wrong password, server down at
start), its backoff and logging are not ours to configure, and a PLC reboot loses the
server's subscriptions anyway. On each (re)connect the nodes are resolved again, their
current values READ once (a fresh baseline after `unknown`; a re-read counter is
harmless by the core's definition) and the subscription re-created.

Gaps are filled from the server's history where it keeps one (`history_backfill`): the
source time of the last value taken of each node (its mark) is kept in memory and, once
the sink keeps the values up to it, in `ingest.state_dir`, so it survives a restart. At
each (re)connect the raw history after each node's mark (HistoryRead, at most
`history_max_values` a node, no further back than `history_max_age_s`) is taken in time
order before the current values, and after an outage each machine's state as it was at the
`unknown` mark is stated again 1 ms after it, so the gap counts as what happened rather
than as unknown. A node whose server keeps no history is as before: `unknown` for the gap.

What the ingester asks of a server, and what it does not pass on (docs/foreign-servers.md):

* Sampling: 0 (the fastest the server offers) for state, counters, product and reason
  unless `sampling_interval_ms` is set, with a queue for one publishing interval of changes
  (`opcua_session.sampling_ms`, `queue_size_for`); a WARNING once per node where the server
  grants a slower sampling interval or a smaller queue.
* Nodes: `nsu=` NodeIds resolved against the server's NamespaceArray at each connect; a node
  the server does not have is a WARNING once per connect naming endpoint, machine, signal
  and node, never a connection failure.
* Values that are no reading (BadWaitingForInitialData, UncertainInitialValue, no
  SourceTimestamp) are not emitted: counted in `linepulse_ingest_withheld_total{reason}`,
  logged once per node. Event time is the SourceTimestamp in ms, floored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from asyncua import ua
from asyncua.client.client import Client

from linepulse.config import PlantConfig
from linepulse.events import reason_kind
from linepulse.runtime import wait_any
from linepulse.sources import OpcuaSource
from services.ingest.errors import SinkClosedError
from services.ingest.metrics import IngestMetrics
from services.ingest.opcua_session import (
    KEEPALIVE_MS,
    Monitored,
    Route,
    Subscribed,
    failure_reason,
    new_client,
    read_current,
    read_history,
    resolve,
    routes_of,
    subscribe,
)
from services.ingest.opcua_values import (
    UnsupportedValue,
    Withheld,
    epoch_ms,
    event_time,
    plain_value,
    quality_of,
    server_time,
    status_name,
    withheld,
)
from services.ingest.samples import SampleBatch, Sink
from services.ingest.source_state import SourceStateFile

FLUSH_S: Final = 0.05  # a partial batch waits at most this long for the sink
PENDING_BATCHES: Final = 4  # batches the callback may collect while the sink is busy
CLOSE_TIMEOUT_S: Final = 5.0  # for DeleteSubscriptions/CloseSession on the way out
MARKS_SAVE_S: Final = 5.0  # the nodes' marks go to ingest.state_dir at most this often
MARKS_VERSION: Final = 1

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
ConnectionLost = Callable[[Exception], Coroutine[Any, Any, None]]


@dataclass
class _Session:
    """One connection attempt's client, and whether (and why) it was lost."""

    client: Client
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    subscription_id: int | None = None
    items: list[Monitored] = field(default_factory=list)


class OpcuaIngester:
    """Subscribes to one OPC-UA endpoint's configured nodes and hands samples to `sink`."""

    def __init__(
        self,
        source: OpcuaSource,
        plant: PlantConfig,
        sink: Sink,
        metrics: IngestMetrics,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics
        self._batch = SampleBatch.for_plant(plant, source.id)
        self._batch_samples = plant.ingest.batch_samples
        self._max_pending = PENDING_BATCHES * plant.ingest.batch_samples
        self._routes = routes_of(source)
        for route in self._routes:
            if route.node.deadband is not None and route.deadband is None:
                _log.warning(
                    "opcua %s: %s/%s: deadband ignored; %s must report every change",
                    source.id,
                    route.machine,
                    route.signal,
                    route.signal,
                )
        self._machines = [m.machine for m in source.machines]
        self._by_handle: dict[int, Route] = {}
        # A machine's `reason` node is not a signal of its own: the telemetry event carries
        # the reason on the `state` sample. A PLC (and the simulator) writes the reason
        # with the same SourceTimestamp as the state it explains.
        self._reasons: dict[str, tuple[int, str | None]] = {}
        self._reason_set: frozenset[int] = frozenset()
        # (SourceTimestamp, raw value, status) last taken per handle: the baseline Read and
        # the subscription's first notification report the same reading once.
        self._last: dict[int, tuple[object, object, int]] = {}
        self._notifications = 0
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._waiting_room = False
        self._session: _Session | None = None
        self._last_publish = time.monotonic()
        # Time (epoch ms) of the last `unknown` marker. The first reading of each node after
        # a reconnect (the baseline Read) is the machine's current value: stamped before
        # the marker, it would leave the machine `unknown` in event time, so it is stamped
        # on receipt instead. `_restamp` holds the handles still to check. On a first start
        # (`_marker` False) the floor is receipt less the lateness, and an older reading is
        # stamped at the floor itself: it held since before then, and a source clock up to
        # the lateness behind ours cannot sort its next readings before it.
        self._floor_ms: int | None = None
        self._marker = False
        self._lateness_ms = round(plant.kpi.lateness_s * 1000)
        self._restamp: set[int] = set()
        self._marked_unknown = False
        self._was_connected = False
        self._connected = False
        # Values not emitted since the last flush, by reason (counted per flush), and the
        # (handle, reason) pairs already logged: once per node, not once per value.
        self._withheld: Counter[Withheld] = Counter()
        self._withheld_logged: set[tuple[int, Withheld]] = set()
        # (handle, "sampling" or "queue") -> what the server granted short of what was
        # asked, as last warned about: once per item, again only if it changes.
        self._short_grants: dict[tuple[int, str], float] = {}
        # Per node ("machine/signal"): the source time (ms) of the last value taken, the
        # start of the next history backfill; saved once the sink keeps what it covers.
        self._marks_file = SourceStateFile(plant.ingest.state_dir, source.id, "opcua")
        self._marks: dict[str, int] = self._load_marks()
        self._marks_to_save: tuple[int, dict[str, int]] | None = None  # (sink position, marks)
        # Per machine: (time, value, reason) of the last state taken, stated again after an
        # outage that history filled.
        self._states: dict[str, tuple[int, object, str | None]] = {}

    @property
    def connected(self) -> bool:
        """True while a session with its subscription is up."""
        return self._connected

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set; then delete the subscription, disconnect, flush."""
        done = asyncio.Event()
        self.metrics.connected.labels(self.source.id).set(0)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._flush_loop(done), name=f"opcua-flush-{self.source.id}")
            tasks.create_task(self._marks_loop(done), name=f"opcua-marks-{self.source.id}")
            try:
                await self._connection_loop(stop)
            finally:
                done.set()

    # -- connection lifecycle ----------------------------------------------------------

    async def _connection_loop(self, stop: asyncio.Event) -> None:
        source = self.source
        delay = source.reconnect_min_s
        while not stop.is_set():
            session = await self._until(stop, self._open())
            if session is None:
                self._mark_unknown("not connected")
                if stop.is_set():
                    break
                _log.info("opcua %s: retrying %s in %.1f s", source.id, source.endpoint, delay)
                await wait_any([stop], delay)
                delay = min(delay * 2, source.reconnect_max_s)
                continue
            delay = source.reconnect_min_s
            stopped = await self._hold(session, stop)
            await self._close(session, graceful=stopped)
            if not stopped:
                _log.info("opcua %s: retrying %s in %.1f s", source.id, source.endpoint, delay)
                await wait_any([stop], delay)
                delay = min(delay * 2, source.reconnect_max_s)

    async def _until(self, stop: asyncio.Event, work: Awaitable[_T]) -> _T | None:
        """Run `work` unless `stop` is set first (then cancel it, and drop its client)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait([task])
        if self._session is not None:
            await self._discard(self._session.client)
            self._session = None
        return None

    async def _open(self) -> _Session | None:
        """Connect, resolve, read current values, subscribe. None (logged) on failure."""
        source = self.source
        session: _Session | None = None
        connected = False
        try:
            async with asyncio.timeout(4 * source.timeout_s):
                client = await new_client(source)
                session = self._session = _Session(client)
                client.connection_lost_callback = self._loss_callback(session)
                await client.connect()
                connected = True
                items, unresolved = await resolve(client, self._routes)
                for missing in unresolved:
                    # Once per connect, and not a connection failure: the other nodes work,
                    # and a reconnect would not make this one appear.
                    _log.warning(
                        "opcua %s: %s: %s/%s: node %s not monitored: %s",
                        source.id,
                        source.endpoint,
                        missing.route.machine,
                        missing.route.signal,
                        missing.route.address,
                        missing.why,
                    )
                # Read before subscribing: the values come in time order, and the
                # subscription's first notification of an unchanged node is a duplicate.
                self._by_handle = {item.handle: item.route for item in items}
                self._reason_set = frozenset(
                    item.handle for item in items if item.route.signal == "reason"
                )
                self._last.clear()
                await self._backfill(client, items)
                received = epoch_ms(datetime.now(UTC))
                if self._floor_ms is None:
                    # A first start: a value unchanged for hours carries an old timestamp,
                    # which the KPI core would refuse as too late. It is the current value
                    # now, so a reading older than the lateness is stamped on receipt.
                    self._floor_ms = received - self._lateness_ms
                self._restamp = set(self._by_handle)
                current = list(zip(items, await read_current(client, items), strict=True))
                # Reasons first, as in `_on_publish`: a machine already stopped when we
                # connect keeps the reason of its stop (config order puts state first).
                current.sort(key=lambda pair: pair[0].handle not in self._reason_set)
                for item, value in current:
                    self._take(item.handle, value, received)
                self._full.set()
                subscribed = await subscribe(client, source, items, self._on_publish)
                for problem in subscribed.refused:
                    _log.warning(
                        "opcua %s: %s: server refused monitored item %s",
                        source.id,
                        source.endpoint,
                        problem,
                    )
                self._warn_granted(subscribed)
                session.subscription_id = subscribed.subscription_id
                session.items = subscribed.items
        except Exception as error:
            _log.warning(
                "opcua %s: cannot connect to %s (security %s, user %s): %s",
                source.id,
                source.endpoint,
                source.security.mode,
                source.credentials.username if source.credentials else "anonymous",
                failure_reason(error),
            )
            if session is not None and connected:
                await self._discard(session.client)
            self._session = None
            return None
        self._last_publish = time.monotonic()
        self._connected = True
        self._marked_unknown = False
        self.metrics.connected.labels(source.id).set(1)
        if self._was_connected:
            self.metrics.reconnects.labels(source.id).inc()
        _log.info(
            "opcua %s: %s to %s (security %s, user %s): %d of %d nodes monitored, "
            "subscription %d, %d ms publishing interval",
            source.id,
            "reconnected" if self._was_connected else "connected",
            source.endpoint,
            source.security.mode,
            source.credentials.username if source.credentials else "anonymous",
            len(session.items),
            len(self._routes),
            session.subscription_id,
            source.publishing_interval_ms,
        )
        self._was_connected = True
        return session

    def _warn_granted(self, subscribed: Subscribed) -> None:
        """Say, once per source and grant, where the server samples nodes more slowly than
        asked (changes closer together than its interval are merged into one: a stop
        shorter than it can vanish) or keeps a smaller queue than one publishing interval
        needs: one line for all the nodes it concerns, naming a few.

        Asked 0 ms is OPC-UA's "as fast as you can", so the server's fastest rate is what
        was asked for: that is said at INFO. A slower rate than a positive one asked, or a
        short queue, loses changes the configuration expects: WARNING."""
        grants: dict[tuple[str, float, float], list[str]] = {}
        for created in subscribed.created:
            where, handle = created.item.route.where, created.item.handle
            sampling, asked_sampling = created.sampling_ms, created.asked_sampling_ms
            if self._short_grant(handle, "sampling", sampling, asked_sampling):
                grants.setdefault(("sampling", sampling, asked_sampling), []).append(where)
            granted, needed = created.granted_queue_size, created.queue_size
            if self._short_grant(handle, "queue", -granted, -needed):  # smaller is worse
                grants.setdefault(("queue", granted, needed), []).append(where)
        for (what, granted_value, asked_value), nodes in grants.items():
            named = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            if what == "sampling":
                _log.log(
                    logging.INFO if asked_value == 0 else logging.WARNING,
                    "opcua %s: %s: the server samples %d node(s) every %g ms (asked %g ms): "
                    "changes less than %g ms apart may reach us as one: %s",
                    self.source.id,
                    self.source.endpoint,
                    len(nodes),
                    granted_value,
                    asked_value,
                    granted_value,
                    named,
                )
            else:
                _log.warning(
                    "opcua %s: %s: the server keeps %d changes per item for %d node(s) (asked "
                    "%d for a %g ms publishing interval): more changes than that between two "
                    "publishes lose the oldest: %s",
                    self.source.id,
                    self.source.endpoint,
                    granted_value,
                    len(nodes),
                    asked_value,
                    subscribed.publishing_ms,
                    named,
                )

    def _short_grant(self, handle: int, what: str, granted: float, asked: float) -> bool:
        """True when `granted` is worse (greater) than `asked` and not yet warned about."""
        key = (handle, what)
        if granted <= asked:
            self._short_grants.pop(key, None)
            return False
        if self._short_grants.get(key) == granted:
            return False
        self._short_grants[key] = granted
        return True

    async def _hold(self, session: _Session, stop: asyncio.Event) -> bool:
        """Wait until stop (True) or the session is lost (False)."""
        # Keep-alives come about every KEEPALIVE_MS; three missed ones mean a dead
        # subscription even when the transport looks alive.
        stale_s = 3 * KEEPALIVE_MS / 1000 + self.source.timeout_s
        while True:
            await wait_any([stop, session.lost], 1.0)
            if stop.is_set():
                return True
            if session.lost.is_set():
                return False
            silent = time.monotonic() - self._last_publish
            if silent > stale_s and not self._waiting_room:
                self._lose(session, f"no publish response for {silent:.0f} s")

    def _loss_callback(self, session: _Session) -> ConnectionLost:
        async def lost(error: Exception) -> None:
            self._lose(session, failure_reason(error))

        return lost

    def _lose(self, session: _Session, reason: str) -> None:
        """The session is gone: mark the machines unknown now, wake the connection loop."""
        if session.lost.is_set() or session is not self._session:
            return
        session.reason = reason
        session.lost.set()
        self._connected = False
        self.metrics.connected.labels(self.source.id).set(0)
        _log.warning(
            "opcua %s: connection to %s lost: %s", self.source.id, self.source.endpoint, reason
        )
        self._mark_unknown(reason)

    def _mark_unknown(self, why: str) -> None:
        """`state = unknown` for every machine of the endpoint, once per outage."""
        if self._marked_unknown:
            return
        self._marked_unknown = True
        now = epoch_ms(datetime.now(UTC))
        self._floor_ms = now
        self._marker = True
        for machine in self._machines:
            self._batch.add(now, machine, "state", "unknown", where="connection")
        self._full.set()
        _log.info(
            "opcua %s: machines %s marked unknown (%s)",
            self.source.id,
            ", ".join(self._machines),
            why,
        )

    async def _close(self, session: _Session, *, graceful: bool) -> None:
        """Delete the subscription (on shutdown) and drop the session."""
        if graceful and session.subscription_id is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await session.client.uaclient.delete_subscriptions([session.subscription_id])
            except Exception as error:
                _log.info("opcua %s: could not delete subscription: %r", self.source.id, error)
        await self._discard(session.client)
        self._session = None
        if graceful:
            self._connected = False
            self.metrics.connected.labels(self.source.id).set(0)
            _log.info("opcua %s: disconnected from %s", self.source.id, self.source.endpoint)

    async def _discard(self, client: Client) -> None:
        """Disconnect, bounded in time: a client whose connection died may never answer."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.disconnect()
        except Exception as error:
            _log.debug("opcua %s: disconnect: %r", self.source.id, error)
            client.disconnect_socket()

    # -- the data path -----------------------------------------------------------------

    async def _on_publish(self, result: ua.PublishResult) -> None:
        """asyncua's publish loop calls this once per PublishResponse (or keep-alive)."""
        self._last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        received = epoch_ms(datetime.now(UTC))
        take = self._take
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                items = notification.MonitoredItems
                self._notifications += len(items)
                if self._reason_set:
                    # Reasons first, so that a state in the same response finds its reason.
                    reasons = self._reason_set
                    for item in items:
                        if item.ClientHandle in reasons:
                            take(item.ClientHandle, item.Value, received)
                    for item in items:
                        if item.ClientHandle not in reasons:
                            take(item.ClientHandle, item.Value, received)
                    continue
                for item in items:
                    take(item.ClientHandle, item.Value, received)
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good() and self._session is not None:
                    self._lose(self._session, f"subscription status {status_name(status)}")
        if len(self._batch) >= self._batch_samples:
            self._full.set()
        while len(self._batch) >= self._max_pending:
            # The sink is behind: stop the publish loop until a batch is taken.
            self._full.set()
            self._room.clear()
            self._waiting_room = True
            try:
                await self._room.wait()
            finally:
                self._waiting_room = False
            self._last_publish = time.monotonic()

    def _take(self, handle: int, value: ua.DataValue, received_ms: int) -> None:
        """One DataValue into the batch (or a dead letter, or withheld), by its ClientHandle.

        The first reading of a node after a (re)connect whose own time is before the floor
        (see `_floor_ms`) is stamped anew: after an outage with the read's ServerTimestamp,
        else `received_ms` (epoch ms), never before the marker; on a first start at the
        floor."""
        route = self._by_handle.get(handle)
        if route is None:
            return
        status = value.StatusCode
        code = status.value if status is not None else 0
        variant = value.Value
        raw = variant.Value if variant is not None else None
        key = (value.SourceTimestamp, raw, code)
        if self._last.get(handle) == key:
            return
        self._last[handle] = key
        why_not = withheld(value)
        stamp = event_time(value)
        if why_not is not None or stamp is None:
            self._withhold(handle, route, why_not or "no_source_timestamp", status)
            return
        if stamp > self._marks.get(route.key, -1):
            self._marks[route.key] = stamp
        if self._restamp and handle in self._restamp:
            self._restamp.discard(handle)
            if self._floor_ms is not None and stamp < self._floor_ms:
                # After an outage: now, in the server's clock where it says (the read's
                # ServerTimestamp; a PLC's next readings carry its own clock, and a receipt
                # time ahead of it would sort this value after them), never before the
                # marker. On a first start: the floor (see `_floor_ms`).
                now = server_time(value)
                now_ms = received_ms if now is None else now
                stamp = max(self._floor_ms, now_ms) if self._marker else self._floor_ms
        try:
            plain = plain_value(variant)
        except UnsupportedValue as error:
            if code and (variant is None or raw is None):
                # Servers may send no value with a Bad status (Part 4 §7.7.1).
                reason = f"{route.signal}: status {status_name(status)} without a value"
            else:
                reason = f"{route.signal}: {error}"
            self._batch.reject(reason, repr(raw)[:1024], route.where)
            return
        if route.signal == "reason":
            text = None if plain in (None, "") else str(plain)
            self._reasons[route.machine] = (stamp, text)
            return
        why: str | None = None
        if route.signal == "state":
            known = self._reasons.get(route.machine)
            if known is not None and known[0] == stamp:
                why = known[1]
            self._states[route.machine] = (stamp, plain, why)
        self._batch.add(
            stamp, route.machine, route.signal, plain, reason=why, quality=quality_of(code)
        )

    def _withhold(
        self, handle: int, route: Route, why: Withheld, status: ua.StatusCode | None
    ) -> None:
        """Count a value that is no reading (see `opcua_values.withheld`); log once per node."""
        self._withheld[why] += 1
        if (handle, why) in self._withheld_logged:
            return
        self._withheld_logged.add((handle, why))
        if why == "waiting_for_initial_data":
            _log.info(
                "opcua %s: %s: the server has no value yet (%s); nothing emitted until it has",
                self.source.id,
                route.where,
                status_name(status),
            )
        else:
            _log.warning(
                "opcua %s: %s: the server sends values without a SourceTimestamp; they are "
                "not emitted (the time of a reading at the source is what the KPIs count "
                "by); counted as linepulse_ingest_withheld_total{reason=%s}",
                self.source.id,
                route.where,
                why,
            )

    # -- history backfill ----------------------------------------------------------------

    async def _backfill(self, client: Client, items: list[Monitored]) -> None:
        """Take the history after each node's mark, in time order (reasons first at equal
        times, as in `_on_publish`), then state each machine again as it was at the
        `unknown` mark of the outage, if there was one and its state node has history."""
        source = self.source
        if not source.history_backfill:
            return
        now = datetime.now(UTC)
        oldest = epoch_ms(now) - round(source.history_max_age_s * 1000)
        marks = {
            item.handle: self._marks[item.route.key]
            for item in items
            if item.route.key in self._marks
        }
        asked = [
            (item, datetime.fromtimestamp(max(marks[item.handle], oldest) / 1000, UTC))
            for item in items
            if item.handle in marks
        ]
        if not asked:
            return
        async with asyncio.timeout(4 * source.timeout_s):
            found, without = await read_history(client, asked, source.history_max_values)
        if without:
            _log.info(
                "opcua %s: no history for %d node(s) (e.g. %s: %s); their gap stays unknown",
                source.id,
                len(without),
                without[0][0].route.where,
                without[0][1],
            )
        fresh: list[tuple[int, bool, int, ua.DataValue]] = []
        for item, value in found:
            stamp = event_time(value)
            if stamp is not None and stamp > marks[item.handle]:
                fresh.append((stamp, item.handle not in self._reason_set, item.handle, value))
        fresh.sort(key=lambda entry: entry[:2])
        marker = self._floor_ms if self._marker else None
        before = dict(self._states)  # each machine's state as of the outage's mark
        received = epoch_ms(now)
        for stamp, _, handle, value in fresh:
            self._take(handle, value, received)
            machine = self._by_handle[handle].machine
            if marker is not None and stamp <= marker and machine in self._states:
                before[machine] = self._states[machine]
        if marker is not None:
            # Only where the history covers the state node: it returns the value at its
            # mark (the start is inclusive). A server may answer Good and empty for a node
            # it keeps no history of (asyncua does), and a rebooted PLC's state did not hold.
            historized = {item.route.machine for item, _ in found if item.route.signal == "state"}
            for machine in sorted(historized):
                state = before.get(machine)
                if state is not None:
                    _, in_force, reason = state
                    self._batch.add(
                        marker + 1, machine, "state", in_force, reason=reason, where="history"
                    )
        self.metrics.backfilled.labels(source.id).inc(len(fresh))
        if fresh:
            _log.info(
                "opcua %s: %d value(s) from the server's history filled the gap",
                source.id,
                len(fresh),
            )

    # -- marks across restarts ---------------------------------------------------------

    def _load_marks(self) -> dict[str, int]:
        doc = self._marks_file.load()
        if doc is None:
            return {}
        if doc.get("version") != MARKS_VERSION or doc.get("endpoint") != self.source.endpoint:
            _log.info(
                "opcua %s: %s is of another endpoint or version; not used",
                self.source.id,
                self._marks_file.path,
            )
            return {}
        marks = doc.get("marks")
        if not isinstance(marks, dict):
            return {}
        return {str(k): int(v) for k, v in marks.items() if isinstance(v, int)}

    async def _marks_loop(self, done: asyncio.Event) -> None:
        """Every MARKS_SAVE_S (and at the end), the marks of the last flush once the sink
        keeps what they cover: a mark never runs ahead of data that could still be lost."""
        while True:
            await wait_any([done], MARKS_SAVE_S)
            finished = done.is_set()
            pending, self._marks_to_save = self._marks_to_save, None
            if pending is not None:
                position, marks = pending
                try:
                    async with asyncio.timeout(None if not finished else CLOSE_TIMEOUT_S):
                        await self.sink.kept(position)
                except (TimeoutError, SinkClosedError):
                    pending = None  # not kept: the last saved marks stand
                if pending is not None:
                    doc = {
                        "version": MARKS_VERSION,
                        "endpoint": self.source.endpoint,
                        "marks": marks,
                    }
                    await asyncio.to_thread(self._marks_file.save, doc)
            if finished:
                return

    # -- to the sink -------------------------------------------------------------------

    async def _flush_loop(self, done: asyncio.Event) -> None:
        while True:
            await wait_any([self._full, done], FLUSH_S)
            self._full.clear()
            finished = done.is_set()
            await self._flush()
            if finished:
                return

    async def _flush(self) -> None:
        batch = self._batch
        notifications, self._notifications = self._notifications, 0
        withheld_now, self._withheld = self._withheld, Counter()
        for why, count in withheld_now.items():
            self.metrics.withheld.labels(self.source.id, why).inc(count)
        if not len(batch) and not batch.letters:
            if notifications:
                self.metrics.messages_in.labels(self.source.id).inc(notifications)
            return
        frame, letters = batch.take()
        marks = dict(self._marks)  # what this batch (and every earlier one) covers
        self._room.set()
        if frame.height:
            await self.sink.put(frame)
        if letters:
            _log.warning(
                "opcua %s: %d value(s) to the dead-letter topic, first: %s: %s",
                self.source.id,
                len(letters),
                letters[0].source,
                letters[0].reason,
            )
            await self.sink.dead_letter(letters)
        self._marks_to_save = (self.sink.position(), marks)
        source = self.source.id
        if notifications:
            self.metrics.messages_in.labels(source).inc(notifications)
        if frame.height:
            self.metrics.events_in.labels(source).inc(frame.height)
        for kind, count in Counter(reason_kind(letter.reason) for letter in letters).items():
            self.metrics.rejected.labels(source, kind).inc(count)
