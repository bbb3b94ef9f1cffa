"""The durable outbox: a page is written to disk before anyone is told it is sent, and
is sent until a channel accepts it, across outages and restarts.

Storage is one SQLite file in WAL mode with `synchronous=FULL`, so a row `enqueue` has
returned for survives a crash or a power cut. Each notification's `key` is unique: the
rule engine may enqueue the same state change twice (a replay, a restart between its own
checkpoint and ours) and it is delivered once. A row is `delivered` only after a 2xx (an
SMTP 250); a rejected request (400 and the other 4xx but 408 and 429) is `failed` at once
with the receiver's reason; anything else is retried with exponential backoff, 1 s
doubling up to 5 min, each delay drawn between half and all of that (jitter, so that
rows failing together do not retry in lockstep). A 429's Retry-After holds back the whole
channel, since a rate limit is the channel's, not the row's.

Order: rows of one (channel, group) go one at a time in enqueue order, so PagerDuty
never sees a resolve before its trigger; different groups, and different channels, go
concurrently (at most `max_in_flight` per channel).

Delivery is at least once: a send whose answer is lost (timeout after the body went out)
is retried. Every HTTP request carries the key as `Idempotency-Key`, PagerDuty dedups by
`dedup_key` and email's Message-ID is derived from the key, so receivers can drop those.

Alertmanager forgets a firing alert after its `resolve_timeout` (5 min by default) unless
it is posted again, as Prometheus does every evaluation. The outbox keeps the last
posted body of each firing alert per Alertmanager channel (table `am_firing`, durable, so
a restart resumes it) and re-posts them every `am_resend_interval_s` (60 s); a resolve
delivered to that channel removes the alert. The re-post lives here rather than in the
rule engine because it is a property of the channel, not a state change: it does not go
through the retry queue (the next round is the retry) and it is not counted as a
notification.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import httpx

from linepulse.alerting import AlertSettings, Channel
from linepulse.runtime import wait_set
from services.alerts import channel_send, channels
from services.alerts.metrics import AlertMetrics
from services.alerts.model import Notification

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0
AM_RESEND_INTERVAL_S = 60.0
MAX_IN_FLIGHT = 8
# How often a closed delivery gate (a standby, or an active instance whose lease lapsed)
# is looked at again.
GATE_RECHECK_S = 0.2
# The columns a replica of a row carries (all but the local `id`, which keeps the order).
_ROW_COLUMNS: Final = (
    "key",
    "channel",
    "grp",
    "kind",
    "body",
    "created_at",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "delivered_at",
)
# One change as a replica carries it (services/alerts/replication.py): an outbox row by
# its key, or a firing alert re-posted to Alertmanager by `channel/fingerprint`, with its
# document, or None where it was deleted.
OutboxKind = Literal["outbox", "am_firing"]
OUTBOX_KINDS: Final[tuple[OutboxKind, ...]] = get_args(OutboxKind)
OutboxChange = tuple[OutboxKind, str, dict[str, Any] | None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    grp TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, id);
CREATE TABLE IF NOT EXISTS am_firing (
    channel TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    alert TEXT NOT NULL,
    PRIMARY KEY (channel, fingerprint)
);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One notification as the outbox holds it. `status`: pending, delivered or failed."""

    id: int
    key: str
    channel: str
    group: str
    kind: str
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: float  # epoch seconds
    delivered_at: float | None  # epoch seconds


def backoff_s(attempts: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Delay before retry number `attempts` (1 after the first failure): `base` doubling per
    attempt up to `cap`, drawn uniformly between half and all of it."""
    ceiling = min(cap, base * 2.0 ** min(attempts - 1, 62))
    return rng.uniform(ceiling / 2, ceiling)


def _encode(notification: Notification) -> str:
    return json.dumps(asdict(notification), separators=(",", ":"), default=str)


def _decode(body: str) -> Notification:
    data: dict[str, Any] = json.loads(body)
    data["alerts"] = tuple(data["alerts"])
    return Notification(**data)


class Outbox:
    """Durable, retrying delivery of notifications; see the module doc for the guarantees.

    `enqueue` is synchronous (a local fsync) and may be called at any time; `run` delivers
    until `stop` is set, then lets the sends in flight finish (each bounded by its
    channel's `timeout_s`) and returns.
    """

    def __init__(
        self,
        path: Path,
        settings: AlertSettings,
        metrics: AlertMetrics,
        *,
        external_url: str = "",
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
        am_resend_interval_s: float = AM_RESEND_INTERVAL_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._channels: dict[str, Channel] = {c.id: c for c in settings.channels}
        self._metrics = metrics
        self._external_url = external_url
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s
        self._am_resend_interval_s = am_resend_interval_s
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each statement, or each explicit BEGIN … COMMIT, is one transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed row is on disk before enqueue returns (NORMAL in WAL mode may
        # lose the last transactions on power loss).
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._wake = asyncio.Event()
        self._in_flight: set[tuple[str, str]] = set()  # (channel, group) being sent
        self._channel_not_before: dict[str, float] = {}  # from 429 Retry-After
        self._am_locks: dict[str, asyncio.Lock] = {}
        # Told every row change (the active instance of a replicated alerts service hands
        # them to its standbys).
        self.on_change: Callable[[list[OutboxChange]], None] | None = None
        # Whether this instance may send now (a replicated service's standby may not).
        self.may_deliver: Callable[[], bool] = lambda: True
        self._update_depth()

    # -- storage ----------------------------------------------------------------------

    def enqueue(self, notifications: list[Notification]) -> int:
        """Store notifications durably; returns how many were new (a known key is ignored)."""
        before = self._db.total_changes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox (key, channel, grp, kind, body, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (n.key, n.channel, n.group, n.kind, _encode(n), n.created_at)
                    for n in notifications
                ],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        added = self._db.total_changes - before
        if added:
            self._wake.set()
            self._update_depth()
            self._tell(
                "key IN (SELECT value FROM json_each(?))",
                json.dumps([n.key for n in notifications]),
            )
        return added

    def _tell(self, where: str, *params: object) -> None:
        """Hand the rows matching `where` to `on_change`, as they are now."""
        if self.on_change is None:
            return
        cursor = self._db.execute(
            f"SELECT {', '.join(_ROW_COLUMNS)} FROM outbox WHERE {where} ORDER BY id",  # noqa: S608
            params,
        )
        self.on_change(
            [("outbox", row[0], dict(zip(_ROW_COLUMNS, row, strict=True))) for row in cursor]
        )

    def apply(self, changes: Iterable[OutboxChange]) -> None:
        """Write rows another instance changed, in one transaction; a new key goes after
        every row held, so rows keep the order they were enqueued in."""
        columns = ", ".join(_ROW_COLUMNS)
        marks = ", ".join("?" * len(_ROW_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS[1:])
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for kind, key, doc in changes:
                if kind == "am_firing":
                    channel, _, fingerprint = key.partition("/")
                    if doc is None:
                        self._db.execute(
                            "DELETE FROM am_firing WHERE channel = ? AND fingerprint = ?",
                            (channel, fingerprint),
                        )
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO am_firing (channel, fingerprint, alert)"
                            " VALUES (?, ?, ?)",
                            (channel, fingerprint, json.dumps(doc)),
                        )
                elif doc is None:
                    self._db.execute("DELETE FROM outbox WHERE key = ?", (key,))
                else:
                    self._db.execute(
                        f"INSERT INTO outbox ({columns}) VALUES ({marks})"  # noqa: S608
                        f" ON CONFLICT(key) DO UPDATE SET {updates}",
                        [doc[c] for c in _ROW_COLUMNS],
                    )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._update_depth()

    def clear(self) -> None:
        """Delete every row (a standby rebuilds its copy from the replica topic)."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM outbox")
        self._db.execute("DELETE FROM am_firing")
        self._db.execute("COMMIT")
        self._update_depth()

    def has(self, key: str) -> bool:
        """Whether a notification with this key was ever enqueued (sent or not)."""
        row = self._db.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone()
        return row is not None

    def depth(self) -> int:
        """Notifications not yet delivered nor given up."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
        ).fetchone()
        return int(count)

    def rows(self) -> list[OutboxRow]:
        """Every row, in enqueue order (for tests and diagnostics)."""
        cursor = self._db.execute(
            "SELECT id, key, channel, grp, kind, status, attempts, last_error,"
            " next_attempt_at, delivered_at FROM outbox ORDER BY id"
        )
        return [OutboxRow(*row) for row in cursor.fetchall()]

    def alertmanager_firing(self, channel: str) -> list[dict[str, Any]]:
        """The firing alerts re-posted to an Alertmanager channel, as last posted."""
        cursor = self._db.execute(
            "SELECT alert FROM am_firing WHERE channel = ? ORDER BY fingerprint", (channel,)
        )
        return [json.loads(alert) for (alert,) in cursor.fetchall()]

    def close(self) -> None:
        self._db.close()

    def _update_depth(self) -> None:
        self._metrics.outbox_depth.set(self.depth())

    def _pending(self) -> list[tuple[int, str, str, str, int, float]]:
        cursor = self._db.execute(
            "SELECT id, channel, grp, body, attempts, next_attempt_at FROM outbox"
            " WHERE status = 'pending' ORDER BY id"
        )
        return list(cursor.fetchall())

    def _finish(self, row_id: int, status: str, error: str | None) -> None:
        delivered_at = self._clock() if status == "delivered" else None
        self._db.execute(
            "UPDATE outbox SET status = ?, last_error = ?, delivered_at = ?,"
            " attempts = attempts + 1 WHERE id = ?",
            (status, error, delivered_at, row_id),
        )
        self._update_depth()
        self._tell("id = ?", row_id)

    def _reschedule(self, row_id: int, attempts: int, at: float, error: str) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (attempts, at, error, row_id),
        )
        self._tell("id = ?", row_id)

    def _remember_firing(self, channel: str, notification: Notification) -> None:
        """Track what Alertmanager must keep hearing: firing alerts in, resolved out."""
        posted = channels.alertmanager_alerts(notification, external_url=self._external_url)
        changes: list[OutboxChange] = []
        for alert, body in zip(notification.alerts, posted, strict=True):
            resolved = channels.alert_status(alert) == "resolved"
            changes.append(
                ("am_firing", f"{channel}/{alert['fingerprint']}", None if resolved else body)
            )
        self.apply(changes)  # `apply` tells no one: the change is ours, so tell here
        if self.on_change is not None:
            self.on_change(changes)

    # -- delivery ---------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due rows now (a gate that held them may have opened)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver due rows until `stop` is set."""
        async with httpx.AsyncClient() as client, asyncio.TaskGroup() as tasks:
            tasks.create_task(self._resend_loop(stop, client), name="outbox-am-resend")
            while not stop.is_set():
                self._wake.clear()
                next_due = self._dispatch(tasks, client)
                await self._sleep(stop, next_due)

    def _dispatch(self, tasks: asyncio.TaskGroup, client: httpx.AsyncClient) -> float | None:
        """Start a send for the head row of each idle (channel, group) that is due; return
        when the earliest row that is not yet due will be."""
        now = self._clock()
        if not self.may_deliver():
            return now + GATE_RECHECK_S
        next_due: float | None = None
        heads: set[tuple[str, str]] = set()
        per_channel: dict[str, int] = {}
        for busy_channel, _ in self._in_flight:
            per_channel[busy_channel] = per_channel.get(busy_channel, 0) + 1
        for row_id, channel_id, group, body, attempts, next_attempt_at in self._pending():
            lane = (channel_id, group)
            if lane in heads:
                continue  # a row of this lane is ahead of this one
            heads.add(lane)
            if lane in self._in_flight:
                continue
            channel = self._channels.get(channel_id)
            if channel is None:
                self._give_up(row_id, channel_id, "rejected", f"no channel {channel_id!r}")
                continue
            due = max(next_attempt_at, self._channel_not_before.get(channel_id, 0.0))
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if per_channel.get(channel_id, 0) >= self._max_in_flight:
                continue  # a finishing send wakes the loop
            per_channel[channel_id] = per_channel.get(channel_id, 0) + 1
            self._in_flight.add(lane)
            tasks.create_task(
                self._deliver(row_id, channel, group, body, attempts, client),
                name=f"outbox-send-{row_id}",
            )
        return next_due

    async def _sleep(self, stop: asyncio.Event, until: float | None) -> None:
        timeout = None if until is None else max(0.0, until - self._clock())
        waiters = {
            asyncio.create_task(self._wake.wait(), name="outbox-wake"),
            asyncio.create_task(stop.wait(), name="outbox-stop"),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _deliver(
        self,
        row_id: int,
        channel: Channel,
        group: str,
        body: str,
        attempts: int,
        client: httpx.AsyncClient,
    ) -> None:
        try:
            try:
                notification = _decode(body)
            except (ValueError, TypeError) as exc:
                self._give_up(row_id, channel.id, "rejected", f"unreadable row: {exc}")
                return
            lock = self._am_lock(channel.id) if channel.type == "alertmanager" else nullcontext()
            async with lock:
                outcome = await self._send(notification, channel, client)
                self._record(row_id, channel, notification, attempts + 1, outcome)
        finally:
            self._in_flight.discard((channel.id, group))
            self._wake.set()

    async def _send(
        self, notification: Notification, channel: Channel, client: httpx.AsyncClient
    ) -> channel_send.Outcome:
        try:
            return await channel_send.send(
                notification, channel, self._settings, client, external_url=self._external_url
            )
        except Exception as exc:  # a bug in a formatter must not stop every other page
            log.exception("sending %s through %s failed", notification.key, channel.id)
            return channel_send.Outcome("retry", f"{type(exc).__name__}: {exc}")

    def _record(
        self,
        row_id: int,
        channel: Channel,
        notification: Notification,
        attempts: int,
        outcome: channel_send.Outcome,
    ) -> None:
        if outcome.status == "delivered":
            if channel.type == "alertmanager":
                self._remember_firing(channel.id, notification)
            self._finish(row_id, "delivered", None)
            self._metrics.sent.labels(channel.id).inc()
            return
        if outcome.status == "failed":
            self._give_up(row_id, channel.id, "rejected", outcome.reason)
            return
        if channel.max_attempts and attempts >= channel.max_attempts:
            self._give_up(row_id, channel.id, "attempts", outcome.reason)
            return
        now = self._clock()
        if outcome.retry_after_s is not None:
            at = now + outcome.retry_after_s
            self._channel_not_before[channel.id] = at
        else:
            at = now + backoff_s(
                attempts, self._rng, base=self._retry_base_s, cap=self._retry_cap_s
            )
        self._reschedule(row_id, attempts, at, outcome.reason)
        self._metrics.retries.labels(channel.id).inc()
        log.info(
            "notification %s to %s: %s; attempt %d, next in %.1f s",
            notification.key,
            channel.id,
            outcome.reason,
            attempts,
            at - now,
        )

    def _give_up(self, row_id: int, channel_id: str, reason: str, error: str) -> None:
        log.warning("notification %d to %s failed (%s): %s", row_id, channel_id, reason, error)
        self._finish(row_id, "failed", error)
        self._metrics.failed.labels(channel_id, reason).inc()

    def _am_lock(self, channel_id: str) -> asyncio.Lock:
        # One post at a time per Alertmanager channel: a re-post of a firing alert must not
        # land after the resolve that ended it.
        return self._am_locks.setdefault(channel_id, asyncio.Lock())

    async def _resend_loop(self, stop: asyncio.Event, client: httpx.AsyncClient) -> None:
        targets = [c for c in self._channels.values() if c.type == "alertmanager"]
        if not targets:
            return
        while not stop.is_set():
            for channel in targets:
                if self.may_deliver():
                    await self.resend_firing(channel, client)
            await wait_set(stop, self._am_resend_interval_s)

    async def resend_firing(self, channel: Channel, client: httpx.AsyncClient) -> bool:
        """Re-post the alerts still firing on an Alertmanager channel; True if accepted.
        Best effort: a failure is logged and the next round tries again."""
        async with self._am_lock(channel.id):
            alerts = self.alertmanager_firing(channel.id)
            if not alerts:
                return True
            url = channels.alertmanager_url(str(channel.url))
            try:
                response = await client.post(url, json=alerts, timeout=channel.timeout_s)
            except httpx.HTTPError as exc:
                log.warning("re-posting firing alerts to %s: %s", channel.id, exc)
                return False
            if not response.is_success:
                log.warning(
                    "re-posting firing alerts to %s: HTTP %d", channel.id, response.status_code
                )
                return False
            self._metrics.am_resends.labels(channel.id).inc(len(alerts))
            return True
