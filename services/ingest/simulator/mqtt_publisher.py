"""Simulated MQTT sources: a publisher per connection that outlives broker restarts.

The tick loop hands events to `submit()` and never waits for the broker. Events wait in a
bounded queue (oldest dropped past `max_pending`, counted in `dropped`) and are published
in order while connected; on a lost connection the publisher reconnects with backoff and
goes on where it stopped, as a store-and-forward edge device does. An event enters the
truth log (`on_published`) only once the broker has acknowledged it (QoS ≥ 1) or taken it
(QoS 0), so the log holds what was on the wire even across outages; a chunk cut off by a
disconnect is sent again whole, so the wire may hold duplicates the log does not.

`MqttJsonOutlet` publishes one JSON message per event on the source's first topic pattern:
`{"ts": <epoch ms>, "value": ..., "reason": ...}` (`reason` only on a `state` that has one),
or the bare value as text for `format: plain` (which carries no time: the receiver's clock
is the event time then). The Sparkplug B publisher builds on the same base
(`sparkplug_publisher`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

import aiomqtt
import orjson

from linepulse.runtime import wait_set
from linepulse.sources import MqttSource
from services.ingest.simulator.model import Event

log = logging.getLogger(__name__)

CHUNK: Final = 1_000  # messages in flight at once
MAX_PENDING: Final = 1_000_000  # events held while the broker is away

Published = Callable[[list[Event]], None]


def make_client(
    source: MqttSource, identifier: str, will: aiomqtt.Will | None = None
) -> aiomqtt.Client:
    """A client for the source's broker with its credentials and TLS settings."""
    tls = None
    if source.tls is not None:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(source.tls.ca) if source.tls.ca else None,
            certfile=str(source.tls.certificate) if source.tls.certificate else None,
            keyfile=str(source.tls.private_key) if source.tls.private_key else None,
        )
    creds = source.credentials
    client = aiomqtt.Client(
        source.host,
        source.port,
        identifier=identifier,
        username=creds.username if creds else None,
        password=creds.secret() if creds else None,
        keepalive=source.keepalive_s,
        will=will,
        clean_session=True,
        max_inflight_messages=CHUNK,
        tls_params=tls,
        tls_insecure=source.tls.insecure if source.tls else None,
    )
    # A chunk in flight is expected; aiomqtt would warn about it on every publish.
    client.pending_calls_threshold = 2 * CHUNK
    return client


class MqttOutlet:
    """Queue, connection loop and ordered draining; subclasses say what goes on the wire."""

    def __init__(
        self, source: MqttSource, identifier: str, on_published: Published, max_pending: int
    ) -> None:
        self.source = source
        self.identifier = identifier
        self.on_published = on_published
        self.pending: deque[Event] = deque()
        self.max_pending = max_pending
        self.connected = asyncio.Event()  # set on the first successful connection
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        # Plant time of the newest event submitted: the time on session messages (births).
        self.now_ms = 0
        self.published = 0
        self.dropped = 0
        self.reconnects = 0

    @property
    def name(self) -> str:
        return f"{self.source.id}/{self.identifier}"

    def submit(self, events: list[Event]) -> None:
        if events:
            self.now_ms = max(self.now_ms, events[-1].ts)
        self.pending.extend(events)
        excess = len(self.pending) - self.max_pending
        if excess > 0:
            for _ in range(excess):
                self.pending.popleft()
            self.dropped += excess
            log.warning(
                "mqtt %s: broker away too long, dropped %d oldest events", self.name, excess
            )
        self._wake.set()

    def close(self) -> None:
        """Publish what is pending, then end the session (`run` returns)."""
        self._closing.set()
        self._wake.set()

    # -- hooks ---------------------------------------------------------------------------

    def client(self) -> aiomqtt.Client:
        return make_client(self.source, self.identifier)

    async def on_connect(self, client: aiomqtt.Client) -> None:
        """After each connection, before publishing pending events."""

    async def listen(self, client: aiomqtt.Client) -> None:
        """Runs beside the publisher while connected (commands from hosts)."""

    async def before_chunk(self, client: aiomqtt.Client) -> None:
        """Before each chunk (a rebirth asked for in between)."""

    async def publish_chunk(self, client: aiomqtt.Client, chunk: list[Event]) -> None:
        raise NotImplementedError

    async def on_close(self, client: aiomqtt.Client) -> None:
        """Before a clean disconnect at shutdown."""

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff on failure; return once closed."""
        backoff = self.source.reconnect_min_s
        while True:
            try:
                async with self.client() as client:
                    log.info(
                        "mqtt %s: connected to %s:%d", self.name, self.source.host, self.source.port
                    )
                    backoff = self.source.reconnect_min_s
                    await self.on_connect(client)
                    self.connected.set()
                    listener = asyncio.create_task(self.listen(client), name=f"{self.name} listen")
                    try:
                        await self._drain(client)
                        await self.on_close(client)
                    finally:
                        listener.cancel()
                        await asyncio.wait([listener])
                return
            except aiomqtt.MqttError as error:
                if self._closing.is_set():
                    log.warning(
                        "mqtt %s: closing with the broker away: %d events not published (%s)",
                        self.name,
                        len(self.pending),
                        error,
                    )
                    return
                self.reconnects += 1
                log.warning(
                    "mqtt %s: %s; reconnecting in %.1f s (%d events waiting)",
                    self.name,
                    error,
                    backoff,
                    len(self.pending),
                )
                await wait_set(self._closing, backoff)
                backoff = min(backoff * 2, self.source.reconnect_max_s)

    async def _drain(self, client: aiomqtt.Client) -> None:
        pending = self.pending
        while True:
            if not pending:
                if self._closing.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.before_chunk(client)
            chunk = [pending.popleft() for _ in range(min(len(pending), CHUNK))]
            try:
                await self.publish_chunk(client, chunk)
            except BaseException:
                pending.extendleft(reversed(chunk))
                raise
            self.published += len(chunk)
            self.on_published(chunk)


def json_payload(event: Event, fmt: str) -> bytes:
    if fmt == "plain":
        return str(event.value).encode()
    body: dict[str, object] = {"ts": event.ts, "value": event.value}
    if event.reason is not None:
        body["reason"] = event.reason
    return orjson.dumps(body)


def json_topic(pattern: str, line: str, machine: str, signal: str) -> str:
    return pattern.replace("{line}", line).replace("{machine}", machine).replace("{signal}", signal)


class MqttJsonOutlet(MqttOutlet):
    """One message per event on `topics[0].pattern`, at the source's QoS."""

    def __init__(
        self,
        source: MqttSource,
        lines: Mapping[str, str],
        on_published: Published,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__(source, f"linepulse-sim-{source.id}", on_published, max_pending)
        self.topic = source.topics[0]
        self.lines = dict(lines)  # machine -> line

    async def publish_chunk(self, client: aiomqtt.Client, chunk: list[Event]) -> None:
        pattern, fmt, qos = self.topic.pattern, self.topic.format, self.source.qos
        await asyncio.gather(
            *(
                client.publish(
                    json_topic(pattern, self.lines[e.machine], e.machine, e.signal),
                    json_payload(e, fmt),
                    qos=qos,
                )
                for e in chunk
            )
        )
