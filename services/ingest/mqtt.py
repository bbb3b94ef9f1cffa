"""The MQTT ingester: plain topics (JSON or text payloads) and Sparkplug B, from one broker.

aiomqtt gives one `Message` per publish and does not reconnect by itself, so `run` loops:
connect (persistent session, so QoS 1 messages published while we are away wait for us at
the broker), subscribe, read until the connection drops, back off (doubling from
`reconnect_min_s` to `reconnect_max_s`), again. A Python MQTT client handles about 14k
messages/s, so the per-message path is kept short: no task and no Prometheus call per
message; samples gather in a `SampleBatch` and go to the sink every `ingest.batch_samples`
samples or every `ingest.linger_ms`, whichever comes first, with the metrics.

Bad input never leaves the loop as an exception: an oversized payload, malformed JSON, a
value of the wrong type, an unknown machine or a garbled Sparkplug payload becomes a
`DeadLetter` with the topic, the reason and the raw payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiomqtt
import msgspec

from linepulse.config import PlantConfig
from linepulse.events import MAX_TEXT, reason_kind
from linepulse.sources import MqttSource, MqttTopic
from services.ingest import sparkplug
from services.ingest.metrics import IngestMetrics
from services.ingest.samples import RAW_KEEP_BYTES, SampleBatch, Sink

log = logging.getLogger(__name__)

_JSON_KEYS: Final = frozenset({"value", "ts", "reason", "quality"})
# RFC 8259 §6: what a JSON number looks like. A plain payload is a number exactly when it
# would be one in JSON; "0042", "NaN", "1_000" or "+5" are text, as a material number is.
_JSON_NUMBER: Final = re.compile(
    r"-?(?:0|[1-9][0-9]*)"  # an int: no leading zero, no sign but minus
    r"(?P<float>(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"  # a fraction or an exponent: a float
)
_SPARKPLUG_PREFIX: Final = f"{sparkplug.NAMESPACE}/"
_REBIRTH_QOS: Final = 0  # Sparkplug 3.0: NCMD is published at QoS 0


# -- plain topics: pure parsing -------------------------------------------------------------


class PayloadError(ValueError):
    """A plain-topic payload that cannot be read; the message says why."""


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a topic's levels say: the machine, the signal (None when the pattern has no
    `{signal}`: the JSON payload names it) and the line (None without `{line}`)."""

    machine: str
    signal: str | None
    line: str | None
    format: str


class TopicPatterns:
    """Matches topic names against the configured patterns, first match wins."""

    def __init__(self, topics: tuple[MqttTopic, ...]) -> None:
        self._patterns = [(t.split(), t.format) for t in topics]

    def match(self, name: str) -> TopicMatch | None:
        levels = name.split("/")
        for pattern, fmt in self._patterns:
            if len(pattern) != len(levels):
                continue
            found: dict[str, str] = {}
            for want, got in zip(pattern, levels, strict=True):
                if want[0:1] == "{":
                    if not got:
                        break
                    found[want] = got
                elif want != got:
                    break
            else:
                return TopicMatch(
                    found["{machine}"], found.get("{signal}"), found.get("{line}"), fmt
                )
        return None


@dataclass(frozen=True, slots=True)
class Reading:
    """One value from a plain-topic payload; `ts` None means "use the receive time"."""

    value: object
    ts: object = None
    reason: str | None = None
    quality: str = "good"
    signal: str | None = None


def parse_json(payload: bytes, *, signal_in_payload: bool = False) -> Reading:
    """A JSON payload: an object `{"value", "ts"?, "reason"?, "quality"?}` (and `"signal"`
    when the topic has no `{signal}` level), or a bare JSON scalar as the value."""
    try:
        # msgspec keeps JSON's types: an int stays an exact int at any size (orjson would
        # turn one beyond 64 bits into a float), 3.0 stays a float, "0042" text.
        doc = msgspec.json.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise PayloadError(f"malformed JSON: {error}") from None
    if not isinstance(doc, dict):
        if signal_in_payload:
            raise PayloadError("the topic has no {signal}: the payload must be an object")
        return Reading(doc)
    allowed = _JSON_KEYS | {"signal"} if signal_in_payload else _JSON_KEYS
    unknown = doc.keys() - allowed
    if unknown:
        raise PayloadError(f"unknown field(s) in payload: {', '.join(sorted(unknown))}")
    if "value" not in doc:
        raise PayloadError("payload object has no value")
    quality = doc.get("quality", "good")
    if not isinstance(quality, str):
        raise PayloadError(f"quality must be a string, got {quality!r}")
    signal = doc.get("signal")
    if signal_in_payload and not isinstance(signal, str):
        raise PayloadError(f"signal must be a string, got {signal!r}")
    return Reading(doc["value"], doc.get("ts"), doc.get("reason"), quality, signal)


def parse_plain(payload: bytes) -> Reading:
    """A text payload: a number when it is a JSON number (an int without fraction or
    exponent, else a float), otherwise the text, kept as it is ("0042" stays text)."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("plain payload is not UTF-8 text") from None
    if not text:
        raise PayloadError("empty payload")
    number = _JSON_NUMBER.fullmatch(text)
    if number is None or len(text) > MAX_TEXT:  # a longer one is refused as text is
        return Reading(text)
    return Reading(float(text) if number.group("float") else int(text))


# -- the ingester ---------------------------------------------------------------------------


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails. paho-mqtt 2.2 (`_ssl_wrap_socket`) drops
    the socket without closing it then, so each refused attempt leaked a file descriptor."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(source: MqttSource) -> ssl.SSLContext | None:
    """The TLS context from `source.tls`: the CA (else the system's), a client certificate
    if given; `insecure` skips the host name check only, never the chain."""
    tls = source.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.certificate is not None:
        key = str(tls.private_key) if tls.private_key else None
        context.load_cert_chain(str(tls.certificate), key)
    if tls.insecure:
        context.check_hostname = False
    context.sslsocket_class = _ClosingSSLSocket
    return context


class MqttIngester:
    """Reads one MQTT source into the sink until `stop` is set."""

    def __init__(
        self,
        source: MqttSource,
        plant: PlantConfig,
        sink: Sink,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics
        machines = plant.machines()
        self._line_of: Mapping[str, str] = {m: line.id for m, (line, _) in machines.items()}
        self._batch = SampleBatch(machines, source.id)
        self._patterns = TopicPatterns(source.topics)
        self._max_bytes = plant.ingest.max_payload_bytes
        self._flush_at = plant.ingest.batch_samples
        self._linger_s = max(plant.ingest.linger_ms, 10) / 1000
        self._flush_lock = asyncio.Lock()
        self._messages = 0  # since the last flush; a plain int, the counter is per batch
        self._connects = 0
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None
        self.host: sparkplug.SparkplugHost | None = None
        if source.sparkplug is not None:
            self.host = sparkplug.SparkplugHost(
                source.sparkplug.group,
                devices=source.sparkplug.devices,
                metrics=source.sparkplug.metrics,
                machines=machines,
            )

    # -- connection ----------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        filters = [t.subscription() for t in self.source.topics]
        if self.source.sparkplug is not None:
            filters.append(f"{sparkplug.NAMESPACE}/{self.source.sparkplug.group}/#")
        return list(dict.fromkeys(filters))

    def _new_client(self) -> aiomqtt.Client:
        source = self.source
        credentials = source.credentials
        ingester = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's incoming queue (its `queue_type` hook), kept so `_read` can take
            the messages already waiting without a task and a wakeup for each."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                ingester._inbox = self

        return aiomqtt.Client(
            source.host,
            source.port,
            identifier=source.client_id or f"linepulse-{source.id}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=source.clean_start,
            keepalive=source.keepalive_s,
            username=credentials.username if credentials else None,
            password=credentials.secret() if credentials else None,
            tls_context=tls_context(source),
            tls_insecure=True if source.tls and source.tls.insecure else None,
            timeout=10.0,
            logger=log,
            queue_type=Inbox,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set; then flush what is collected and return."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._flush_loop(stop), name=f"mqtt:{self.source.id}:flush")
                group.create_task(self._connect_loop(stop), name=f"mqtt:{self.source.id}:read")
        finally:
            self._set_connected(False)
            await self.flush()

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        source = self.source
        delay = source.reconnect_min_s
        where = f"{source.host}:{source.port}"
        while not stop.is_set():
            try:
                async with self._new_client() as client:
                    # Subscribed before "connected": a persistent session then holds them.
                    for name in self.subscriptions():
                        await client.subscribe(name, qos=source.qos)
                    self._on_connected(where)
                    delay = source.reconnect_min_s
                    await self._read_until_stopped(client, stop)
            except aiomqtt.MqttError as error:
                self._set_connected(False)
                log.warning(
                    "mqtt %s: connection to %s failed or lost (%s); retrying in %.1f s",
                    source.id,
                    where,
                    error,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, source.reconnect_max_s)
        log.info("mqtt %s: stopped", source.id)

    def _on_connected(self, where: str) -> None:
        self._connects += 1
        self._set_connected(True)
        if self._connects > 1 and self.metrics is not None:
            self.metrics.reconnects.labels(self.source.id).inc()
        log.info(
            "mqtt %s: connected to %s as %s (%s)",
            self.source.id,
            where,
            self.source.client_id or f"linepulse-{self.source.id}",
            "reconnect" if self._connects > 1 else "first connect",
        )

    def _set_connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.labels(self.source.id).set(1 if up else 0)

    async def _read_until_stopped(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Read messages until the connection drops (MqttError) or `stop` is set."""
        reader = asyncio.create_task(self._read(client), name=f"mqtt:{self.source.id}:messages")
        stopper = asyncio.create_task(stop.wait(), name=f"mqtt:{self.source.id}:stop")
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, stopper):
                task.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if error is not None:
                raise error

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._message(client, message)
            # aiomqtt's iterator costs a task and a loop wakeup per message, about a third
            # of the per-message time: take what is already waiting directly.
            inbox = self._inbox
            while inbox is not None and not inbox.empty():
                await self._message(client, inbox.get_nowait())

    async def _message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        name = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes):  # aiomqtt types it loosely; paho gives bytes
            payload = bytes(payload) if isinstance(payload, bytearray) else str(payload).encode()
        self._messages += 1
        if len(payload) > self._max_bytes:
            self._batch.reject(
                f"payload too large: {len(payload)} bytes > max_payload_bytes {self._max_bytes}",
                payload[:RAW_KEEP_BYTES],
                name,
            )
        elif self.host is not None and name.startswith(_SPARKPLUG_PREFIX):
            await self._sparkplug(client, name, payload)
        else:
            self._plain(name, payload)
        if len(self._batch) + len(self._batch.letters) >= self._flush_at:
            await self.flush()

    # -- messages ------------------------------------------------------------------------

    def _plain(self, name: str, payload: bytes) -> None:
        batch = self._batch
        found = self._patterns.match(name)
        if found is None:
            batch.reject("topic matches no configured pattern", payload, name)
            return
        machine = found.machine
        line = self._line_of.get(machine)
        if found.line is not None and line is not None and found.line != line:
            batch.reject(
                f"line mismatch: topic says line {found.line!r}, machine {machine!r} is on "
                f"{line!r}",
                payload,
                name,
            )
            return
        try:
            if found.format == "json":
                reading = parse_json(payload, signal_in_payload=found.signal is None)
            else:
                if found.signal is None:
                    raise PayloadError("plain payloads need a {signal} level in the pattern")
                reading = parse_plain(payload)
        except PayloadError as error:
            batch.reject(str(error), payload, name)
            return
        ts = reading.ts if reading.ts is not None else int(time.time() * 1000)
        signal = found.signal or reading.signal or ""
        batch.add(
            ts,
            machine,
            signal,
            reading.value,
            reason=reading.reason,
            quality=reading.quality,
            raw=payload,
            where=name,
        )

    async def _sparkplug(self, client: aiomqtt.Client, name: str, payload: bytes) -> None:
        assert self.host is not None  # noqa: S101 - only called with a host
        where = sparkplug.parse_topic(name)
        if where is None or where.group != self.host.group:
            self._batch.reject("not a Sparkplug B topic of this group", payload, name)
            return
        if where.message_type in (sparkplug.NCMD, sparkplug.DCMD):
            return  # commands (our own rebirth requests among them) are not telemetry
        try:
            decoded = sparkplug.decode_payload(payload)
        except sparkplug.SparkplugError as error:
            self._batch.reject(f"bad Sparkplug payload: {error}", payload, name)
            return
        now_ms = int(time.time() * 1000)
        reason = self.host.handle(where, decoded, now_ms, self._batch, payload)
        if reason is not None and self.source.sparkplug and self.source.sparkplug.rebirth:
            await self._ask_rebirth(client, where, now_ms)

    async def _ask_rebirth(
        self, client: aiomqtt.Client, where: sparkplug.SparkplugTopic, now_ms: int
    ) -> None:
        target = sparkplug.topic(where.group, sparkplug.NCMD, where.edge)
        await client.publish(target, sparkplug.rebirth_request(now_ms), qos=_REBIRTH_QOS)

    # -- batches -------------------------------------------------------------------------

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._linger_s)
            await self.flush()

    async def flush(self) -> None:
        """Hand the collected samples and dead letters to the sink, and count them."""
        async with self._flush_lock:
            messages, self._messages = self._messages, 0
            if not len(self._batch) and not self._batch.letters:
                self._count(messages, 0, [])
                return
            frame, letters = self._batch.take()
            if frame.height:
                await self.sink.put(frame)
            if letters:
                await self.sink.dead_letter(letters)
                for letter in letters[:3]:  # a sample: the DLQ has them all
                    log.warning("mqtt: rejected %s: %s", letter.source, letter.reason)
            self._count(messages, frame.height, [letter.reason for letter in letters])

    def _count(self, messages: int, events: int, reasons: list[str]) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        source = self.source.id
        if messages:
            metrics.messages_in.labels(source).inc(messages)
        if events:
            metrics.events_in.labels(source).inc(events)
        for kind, count in Counter(map(reason_kind, reasons)).items():
            metrics.rejected.labels(source, kind).inc(count)
