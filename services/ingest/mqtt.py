"""The MQTT ingester's connection: plain topics and Sparkplug B, from one broker, to the sink.

Decoding is elsewhere (`mqtt_payload` for plain topics, `sparkplug` for Sparkplug B); this
module connects, subscribes, reconnects and hands each message to its decoder and the
samples to the sink. aiomqtt gives one `Message` per publish and does not reconnect by
itself, so `run` loops: connect (persistent session, so QoS 1 messages published while we
are away wait for us at the broker), subscribe, read until the connection drops, back off
(doubling from `reconnect_min_s` to `reconnect_max_s`), again. A Python MQTT client handles
about 14k messages/s, so the per-message path is kept short: no task and no Prometheus call
per message; samples gather in a `SampleBatch` and go to the sink every `ingest.batch_samples`
samples or every `ingest.linger_ms`, whichever comes first, with the metrics.

Bad input never leaves the loop as an exception: an oversized payload, malformed JSON, a
value of the wrong type, an unknown machine or a garbled Sparkplug payload becomes a
`DeadLetter` with the topic, the reason and the raw payload.

The inbox (aiomqtt's queue between the socket and `_read`) is bounded, and what happens past
the bound depends on the QoS, because only QoS 1 and 2 have flow control in MQTT:

- QoS 1 and 2: never dropped here; the broker holds them back. Messages are acknowledged
  (PUBACK, PUBCOMP; paho's `manual_ack`) neither when they arrive nor when `_read` takes
  them, but once the sink keeps the batch they went into (`Sink.kept`: Kafka acknowledged
  it, or it is in the disk spool), in arrival order: a `kill -9` of the ingester loses
  nothing the broker let go of, since it sends every unacknowledged message again (a kept
  one may come twice; repeated samples are harmless). The connection is MQTT v5 with the
  CONNECT property Receive Maximum = `max_inbox_messages` (MQTT 5 §3.1.2.11.3: the server
  sends no more unacknowledged QoS 1/2 publishes than that), so the inbox never holds more
  than the bound; with acknowledgements after the sink, the bound also covers the batch
  and what waits for Kafka, which paces a source to `max_inbox_messages` per round trip
  to Kafka (10,000 by default: far above a plant's rate). That holds as far
  as the broker keeps to the protocol: Mosquitto 2.0.11 (Debian 12) does while no
  acknowledgement comes in between new publishes, but when they interleave its send quota
  drifts past the Receive Maximum (measured: 495 waiting for a bound of 100, against 908
  under 3.1.1; see tests/integration/test_ingest_mqtt_inbox.py).
  Under 3.1.1 the only limit is the broker's in-flight window, and Mosquitto 2.0 was
  measured sending 470 messages past `max_inflight_messages 20` to a subscriber that
  acknowledged while publishes went on: no true bound. A broker that refuses v5 (CONNACK
  "unsupported protocol version"), or that does not answer a first v5 CONNECT while it
  takes a 3.1.1 one (amqtt closes or ignores it), gets 3.1.1 for the rest of the run,
  with one warning.
- QoS 0: no flow control exists, so past `max_inbox_messages` waiting a message is dropped
  and counted (`linepulse_ingest_mqtt_inbox_dropped_total{source}`). A source that mixes
  QoS 0 and QoS 1 publishes can hold up to the bound of each.

Messages not yet acknowledged when the connection drops are sent again by the broker on
the next connect. At a stop the batch is handed to the sink and its messages acknowledged
once kept (up to `STOP_ACK_WAIT_S`) before the connection closes, so a restart does not
bring them twice. The session is persistent
(`clean_start: false`): under v5 it must be asked to outlive the connection, for
`session_expiry_s`; under 3.1.1 it does by itself.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from typing import Final

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linepulse.config import PlantConfig
from linepulse.events import reason_kind
from linepulse.runtime import wait_set
from linepulse.sources import MqttSource
from services.ingest import sparkplug
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt_payload import PayloadError, PlainDecoder
from services.ingest.samples import RAW_KEEP_BYTES, SampleBatch, Sink
from services.ingest.source_state import SourceStateFile

log = logging.getLogger(__name__)

_SPARKPLUG_PREFIX: Final = f"{sparkplug.NAMESPACE}/"
_REBIRTH_QOS: Final = 0  # Sparkplug 3.0: NCMD is published at QoS 0
_RECEIVE_MAXIMUM_MAX: Final = 65_535  # a two-byte integer (MQTT 5 §3.1.2.11.3)
# The CONNACK reason code 0x84 (MQTT 5 §3.2.2.2); paho reports a 3.1.1 broker's return
# code 1 ("unacceptable protocol version") to a v5 CONNECT as this too.
_UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84
_PROTOCOLS: Final = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
# At a stop, how long the connection stays open for the sink to keep the last batch, so its
# messages are acknowledged rather than sent again by the broker after the restart.
STOP_ACK_WAIT_S: Final = 5.0
# A flushed batch's QoS 1/2 messages (packet id, QoS), acknowledged once the sink keeps
# everything up to its position.
_Acks = tuple[int, list[tuple[int, int]]]


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
        metrics: IngestMetrics,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics
        machines = plant.machines()
        self._batch = SampleBatch(machines, source.id)
        self._decoder = PlainDecoder(
            source.topics, {m: line.id for m, (line, _) in machines.items()}
        )
        self._max_bytes = plant.ingest.max_payload_bytes
        self._flush_at = plant.ingest.batch_samples
        self._linger_s = max(plant.ingest.linger_ms, 10) / 1000
        self._flush_lock = asyncio.Lock()
        self._messages = 0  # since the last flush; a plain int, the counter is per batch
        self._connects = 0
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None  # the connection's
        # QoS 1/2 messages of the connection in the batch being collected, and the queue of
        # flushed ones waiting for the sink to keep them (`_ack_when_kept`).
        self._unacked: list[tuple[int, int]] = []
        self._acks: asyncio.Queue[_Acks | None] | None = None
        self._dropped = 0  # QoS 0 messages dropped at the inbox bound since the last flush
        self.inbox_peak = 0  # the most messages the inbox held at once, since the start
        # v5 unless the config or the broker said otherwise (`_fall_back`)
        self.protocol = _PROTOCOLS[source.mqtt_version]
        # The error of a v5 first connect while 3.1.1 is tried (`_try_311`).
        self._v5_failure: aiomqtt.MqttError | None = None
        # read at scrape time: no Prometheus call per message
        metrics.mqtt_inbox.labels(source.id).set_function(self.inbox_size)
        self.host: sparkplug.SparkplugHost | None = None
        self._sessions: SourceStateFile | None = None
        if source.sparkplug is not None:
            self.host = sparkplug.SparkplugHost(
                source.sparkplug.group,
                devices=source.sparkplug.devices,
                metrics=source.sparkplug.metrics,
                machines=machines,
            )
            self._sessions = SourceStateFile(plant.ingest.state_dir, source.id, "sparkplug")
            self._restore_sessions(self.host, self._sessions)

    def _restore_sessions(self, host: sparkplug.SparkplugHost, sessions: SourceStateFile) -> None:
        """The Sparkplug sessions saved before a restart, so their data decodes at once."""
        doc = sessions.load()
        if doc is None:
            return
        try:
            nodes = host.restore(doc)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("mqtt %s: %s: not used (%s)", self.source.id, sessions.path, error)
            return
        log.info(
            "mqtt %s: %d Sparkplug edge node session(s) restored from %s",
            self.source.id,
            nodes,
            sessions.path,
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

        bound = source.max_inbox_messages

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's incoming queue (its `queue_type` hook), kept so `_read` can take
            the messages already waiting without a task and a wakeup for each, and bounded
            here rather than by aiomqtt's `max_queued_incoming_messages`, which discards
            any message past it: a discarded QoS 1 message, never acknowledged, would hold
            one of the broker's in-flight slots until the next connect."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)  # aiomqtt passes 0: unbounded, see put_nowait
                ingester._inbox = self

            def put_nowait(self, item: aiomqtt.Message) -> None:
                size = self.qsize()
                if item.qos == 0 and size >= bound:
                    ingester._dropped += 1  # counted and logged per batch, in `flush`
                    return
                super().put_nowait(item)
                if size >= ingester.inbox_peak:
                    ingester.inbox_peak = size + 1

        v5 = self.protocol is aiomqtt.ProtocolVersion.V5
        properties: Properties | None = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # The broker's bound on our unacknowledged QoS 1/2 messages: the inbox's.
            properties.ReceiveMaximum = min(bound, _RECEIVE_MAXIMUM_MAX)
            if not source.clean_start:
                properties.SessionExpiryInterval = source.session_expiry_s
        client = aiomqtt.Client(
            source.host,
            source.port,
            identifier=source.client_id or f"linepulse-{source.id}",
            protocol=self.protocol,
            # v5 names it clean_start (and aiomqtt's default cleans on the first connect,
            # which would drop what a persistent session holds for us); 3.1.1 clean_session.
            clean_session=None if v5 else source.clean_start,
            clean_start=source.clean_start if v5 else paho_mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=source.keepalive_s,
            username=credentials.username if credentials else None,
            password=credentials.secret() if credentials else None,
            tls_context=tls_context(source),
            tls_insecure=True if source.tls and source.tls.insecure else None,
            timeout=10.0,
            logger=log,
            queue_type=Inbox,
        )
        # Acknowledge on taking from the inbox (`_read`): what is not taken stays the
        # broker's to resend. aiomqtt has no public switch for paho's manual_ack.
        client._client.manual_ack_set(True)
        return client

    def inbox_size(self) -> int:
        """Messages waiting in the current connection's inbox (0 between connections)."""
        inbox = self._inbox
        return 0 if inbox is None else inbox.qsize()

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
                self._inbox = None  # what it holds is unacknowledged: the broker resends it
                self._set_connected(False)
                if self._fall_back(error) or self._try_311(error):
                    continue
                log.warning(
                    "mqtt %s: connection to %s failed or lost (%s); retrying in %.1f s",
                    source.id,
                    where,
                    error,
                    delay,
                )
                await wait_set(stop, delay)
                delay = min(delay * 2, source.reconnect_max_s)
        log.info("mqtt %s: stopped", source.id)

    def _fall_back(self, error: aiomqtt.MqttError) -> bool:
        """Switch to MQTT 3.1.1 if the broker refused v5; True if it did (connect again
        at once). Only from v5, so a broker refusing 3.1.1 too is retried with the backoff."""
        refused_v5 = (
            self.protocol is aiomqtt.ProtocolVersion.V5
            and isinstance(error, aiomqtt.MqttCodeError)
            and error.rc == _UNSUPPORTED_PROTOCOL_VERSION
        )
        if not refused_v5:
            return False
        self.protocol = aiomqtt.ProtocolVersion.V311
        log.warning(
            "mqtt %s: %s:%d refused MQTT v5 (%s); using 3.1.1, where the inbox's QoS 1/2 "
            "flow control relies on the broker's in-flight window (max_inbox_messages %d is "
            'not enforced for them); set mqtt_version: "3.1.1" to skip the attempt',
            self.source.id,
            self.source.host,
            self.source.port,
            error,
            self.source.max_inbox_messages,
        )
        return True

    def _try_311(self, error: aiomqtt.MqttError) -> bool:
        """Before the first connection, a v5 attempt that failed without a refusal (a
        3.1.1-only broker may just close the connection, or never answer, as amqtt does)
        is tried again at once with 3.1.1; True if so. If that fails too, the broker is
        away rather than old: back to v5 and the backoff."""
        if self._v5_failure is not None:  # the 3.1.1 try failed as well
            self._v5_failure = None
            self.protocol = aiomqtt.ProtocolVersion.V5
            return False
        if self._connects or self.protocol is not aiomqtt.ProtocolVersion.V5:
            return False
        self._v5_failure = error
        self.protocol = aiomqtt.ProtocolVersion.V311
        return True

    def _on_connected(self, where: str) -> None:
        if self._v5_failure is not None:  # connected by the 3.1.1 try: the broker is 3.1.1
            log.warning(
                "mqtt %s: %s:%d did not take MQTT v5 (%s) and took 3.1.1; the inbox's QoS "
                "1/2 flow control relies on the broker's in-flight window "
                '(max_inbox_messages %d is not enforced for them); set mqtt_version: "3.1.1" '
                "to skip the attempt",
                self.source.id,
                self.source.host,
                self.source.port,
                self._v5_failure,
                self.source.max_inbox_messages,
            )
            self._v5_failure = None
        self._connects += 1
        self._set_connected(True)
        if self._connects > 1:
            self.metrics.reconnects.labels(self.source.id).inc()
        log.info(
            "mqtt %s: connected to %s as %s (%s)",
            self.source.id,
            where,
            self.source.client_id or f"linepulse-{self.source.id}",
            "reconnect" if self._connects > 1 else "first connect",
        )

    def _set_connected(self, up: bool) -> None:
        self.metrics.connected.labels(self.source.id).set(1 if up else 0)

    async def _read_until_stopped(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Read messages until the connection drops (MqttError) or `stop` is set; on a stop,
        hand the batch to the sink and acknowledge what it keeps within `STOP_ACK_WAIT_S`
        before the connection closes (the rest the broker sends again next time)."""
        acks: asyncio.Queue[_Acks | None] = asyncio.Queue()
        acker = asyncio.create_task(
            self._ack_when_kept(client, acks), name=f"mqtt:{self.source.id}:ack"
        )
        reader = asyncio.create_task(self._read(client), name=f"mqtt:{self.source.id}:messages")
        stopper = asyncio.create_task(stop.wait(), name=f"mqtt:{self.source.id}:stop")
        self._acks = acks
        try:
            await asyncio.wait({reader, stopper, acker}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await self.flush()
                acks.put_nowait(None)
                await asyncio.wait({acker}, timeout=STOP_ACK_WAIT_S)
        finally:
            self._acks = None  # acknowledgements of this connection die with it
            self._unacked = []
            for task in (reader, stopper, acker):
                task.cancel()
            await asyncio.gather(reader, stopper, acker, return_exceptions=True)
        for task in (reader, acker):
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error

    async def _ack_when_kept(
        self, client: aiomqtt.Client, acks: asyncio.Queue[_Acks | None]
    ) -> None:
        """Acknowledge each flushed batch's QoS 1/2 messages once the sink keeps what they
        carried (MQTT wants acknowledgements in arrival order: batches come in order)."""
        paho = client._client  # manual acknowledgement: see `_new_client`
        while (batch := await acks.get()) is not None:
            position, messages = batch
            await self.sink.kept(position)
            for mid, qos in messages:
                paho.ack(mid, qos)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._message(client, message)
            if message.qos:
                self._unacked.append((message.mid, message.qos))
            # aiomqtt's iterator costs a task and a loop wakeup per message, about a third
            # of the per-message time: take what is already waiting directly.
            inbox = self._inbox
            while inbox is not None and not inbox.empty():
                message = inbox.get_nowait()
                await self._message(client, message)
                if message.qos:
                    self._unacked.append((message.mid, message.qos))

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
        try:
            sample = self._decoder.decode(name, payload, int(time.time() * 1000))
        except PayloadError as error:
            self._batch.reject(str(error), payload, name)
            return
        self._batch.add(
            sample.ts,
            sample.machine,
            sample.signal,
            sample.value,
            reason=sample.reason,
            quality=sample.quality,
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
        if self.host.changed and self._sessions is not None:
            self._sessions.save(self.host.snapshot())  # births and deaths: rare, small
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
            await wait_set(stop, self._linger_s)
            await self.flush()

    async def flush(self) -> None:
        """Hand the collected samples and dead letters to the sink, and count them."""
        async with self._flush_lock:
            messages, self._messages = self._messages, 0
            # Taken with the batch they carried, and with their connection's queue: the
            # connection may be gone by the time the sink has taken the batch.
            unacked, self._unacked, acks = self._unacked, [], self._acks
            self._count_dropped()
            events, reasons = 0, []
            if len(self._batch) or self._batch.letters:
                frame, letters = self._batch.take()
                if frame.height:
                    await self.sink.put(frame)
                if letters:
                    await self.sink.dead_letter(letters)
                    for letter in letters[:3]:  # a sample: the DLQ has them all
                        log.warning("mqtt: rejected %s: %s", letter.source, letter.reason)
                events, reasons = frame.height, [letter.reason for letter in letters]
            if unacked and acks is not None:
                acks.put_nowait((self.sink.position(), unacked))
            self._count(messages, events, reasons)

    def _count_dropped(self) -> None:
        dropped, self._dropped = self._dropped, 0
        if not dropped:
            return
        log.warning(
            "mqtt %s: inbox full (max_inbox_messages %d): dropped %d QoS 0 message(s)",
            self.source.id,
            self.source.max_inbox_messages,
            dropped,
        )
        self.metrics.mqtt_inbox_dropped.labels(self.source.id).inc(dropped)

    def _count(self, messages: int, events: int, reasons: list[str]) -> None:
        metrics = self.metrics
        source = self.source.id
        if messages:
            metrics.messages_in.labels(source).inc(messages)
        if events:
            metrics.events_in.labels(source).inc(events)
        for kind, count in Counter(map(reason_kind, reasons)).items():
            metrics.rejected.labels(source, kind).inc(count)
