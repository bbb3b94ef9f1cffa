"""A simulated Sparkplug B edge node: its machines are devices publishing over one session.

Session (Eclipse Sparkplug 3.0): the MQTT will is an NDEATH carrying this session's
`bdSeq`; on connect the node publishes an NBIRTH (seq 0, `bdSeq`, `Node Control/Rebirth`)
and subscribes to its NCMD topic. A device is born (DBIRTH: every metric with name, alias,
datatype, value and the time of that value) when its first events come; afterwards each
tick's changes of a device go out as one DDATA, metrics by alias only, each with the
event's timestamp. `seq` counts every message of the session, 0-255 wrapping. An NCMD
`Node Control/Rebirth` = true makes the node publish its NBIRTH and DBIRTHs again (same
`bdSeq`, seq from 0). At shutdown: a DDEATH per device, then the NDEATH.

Metric names are the signals, or the name `sparkplug.metrics` maps to that signal. A
`state` metric in a DDATA is preceded by a String metric `reason` with the same timestamp
("" when the state has none): a host attaches it to that `state` sample.

The truth log gets each event once, when the message that first carries it (a first
DBIRTH or a DDATA) is acknowledged; births repeated after a reconnect or a rebirth carry
the values again with their original times, which a host may take as harmless duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiomqtt

from linepulse.config import COUNTER_SIGNALS
from linepulse.sources import MqttSource
from services.ingest import sparkplug as spb
from services.ingest.simulator.layout import REASON_NODE, SparkplugDevice
from services.ingest.simulator.model import Event, MachineSpec, Value
from services.ingest.simulator.mqtt_publisher import MAX_PENDING, MqttOutlet, Published, make_client

log = logging.getLogger(__name__)


def datatype(spec: MachineSpec, signal: str) -> int:
    """The Sparkplug datatype of a signal's metric on this machine."""
    if signal == "state":
        numeric = any(isinstance(v, int) for v in spec.state_values.values())
        return spb.INT32 if numeric else spb.STRING
    if signal in COUNTER_SIGNALS:
        return spb.INT64
    if signal in ("product", REASON_NODE):
        return spb.STRING
    return spb.DOUBLE


class SparkplugOutlet(MqttOutlet):
    """One edge node of a source's Sparkplug group, with its devices."""

    def __init__(
        self,
        source: MqttSource,
        edge: str,
        devices: list[SparkplugDevice],
        specs: Mapping[str, MachineSpec],
        on_published: Published,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__(source, f"linepulse-sim-{source.id}-{edge}", on_published, max_pending)
        assert source.sparkplug is not None  # noqa: S101 - layout only makes these for it
        self.group = source.sparkplug.group
        self.edge = edge
        self.devices = {d.machine: d for d in devices}
        names = {signal: name for name, signal in source.sparkplug.metrics.items()}
        # machine -> signal -> (metric name, alias, datatype); aliases from 1, per device.
        self.metrics: dict[str, dict[str, tuple[str, int, int]]] = {}
        for machine in self.devices:
            spec = specs[machine]
            table = {}
            for alias, signal in enumerate((*spec.signals, REASON_NODE), start=1):
                table[signal] = (names.get(signal, signal), alias, datatype(spec, signal))
            self.metrics[machine] = table
        self.bd_seq = 0
        self.seq = 0
        self.last: dict[str, dict[str, tuple[Value, int]]] = {m: {} for m in self.devices}
        self.born: set[str] = set()
        self.rebirth_asked = False
        self.births = 0

    def _topic(self, kind: str, device: str | None = None) -> str:
        return spb.topic(self.group, kind, self.edge, device)

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = spb.next_seq(seq)
        return seq

    def _death(self, now_ms: int) -> bytes:
        metric = spb.Metric(spb.BDSEQ, None, self.bd_seq, spb.INT64)
        return spb.encode_payload([metric], seq=None, timestamp_ms=now_ms)

    def client(self) -> aiomqtt.Client:
        # Each connection is a new session with the next bdSeq; its will is its NDEATH.
        self.bd_seq = (self.bd_seq + 1) % 256 if self.births else 0
        will = aiomqtt.Will(self._topic(spb.NDEATH), self._death(self.now_ms), qos=1)
        return make_client(self.source, self.identifier, will)

    async def on_connect(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._topic(spb.NCMD), qos=1)
        await self._births(client)

    async def listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                payload = spb.decode_payload(message.payload)
            except spb.SparkplugError as error:
                log.warning("sparkplug %s: bad NCMD ignored: %s", self.name, error)
                continue
            if any(m.name == spb.REBIRTH and m.value is True for m in payload.metrics):
                log.info("sparkplug %s: rebirth requested", self.name)
                self.rebirth_asked = True
                self._wake.set()

    async def before_chunk(self, client: aiomqtt.Client) -> None:
        if self.rebirth_asked:
            self.rebirth_asked = False
            await self._births(client)

    async def _births(self, client: aiomqtt.Client) -> None:
        """NBIRTH, then a DBIRTH for each device whose values are known."""
        self.seq = 0
        self.born.clear()
        now = self.now_ms
        node = [
            spb.Metric(spb.BDSEQ, None, self.bd_seq, spb.INT64),
            spb.Metric(spb.REBIRTH, None, False, spb.BOOLEAN),
        ]
        payload = spb.encode_payload(node, seq=self._next_seq(), timestamp_ms=now)
        await client.publish(self._topic(spb.NBIRTH), payload, qos=self.source.qos)
        self.births += 1
        births = [self._dbirth(machine) for machine in self.devices if self.last[machine]]
        await self._send(client, births)

    async def _send(self, client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
        # paho sends in call order, so seq stays in order while acknowledgements overlap.
        qos = self.source.qos
        await asyncio.gather(*(client.publish(t, p, qos=qos) for t, p in messages))

    def _dbirth(self, machine: str) -> tuple[str, bytes]:
        table = self.metrics[machine]
        metrics = []
        newest = 0
        for signal, (value, ts) in self.last[machine].items():
            name, alias, kind = table[signal]
            metrics.append(spb.Metric(name, alias, value, kind, timestamp_ms=ts))
            newest = max(newest, ts)
        payload = spb.encode_payload(metrics, seq=self._next_seq(), timestamp_ms=newest)
        self.born.add(machine)
        return self._topic(spb.DBIRTH, self.devices[machine].device), payload

    def _remember(self, event: Event) -> None:
        last = self.last[event.machine]
        last[event.signal] = (event.value, event.ts)
        if event.signal == "state":
            last[REASON_NODE] = (event.reason or "", event.ts)

    async def publish_chunk(self, client: aiomqtt.Client, chunk: list[Event]) -> None:
        # One DDATA per device and tick; a device's first events make its DBIRTH instead.
        groups: dict[tuple[str, int], list[Event]] = {}
        for event in chunk:
            groups.setdefault((event.machine, event.ts), []).append(event)
        messages: list[tuple[str, bytes]] = []
        for (machine, ts), events in groups.items():
            born = machine in self.born
            for event in events:
                self._remember(event)
            if not born:
                messages.append(self._dbirth(machine))
                continue
            table = self.metrics[machine]
            metrics = []
            for event in events:
                if event.signal == "state":
                    _, alias, kind = table[REASON_NODE]
                    metrics.append(spb.Metric(None, alias, event.reason or "", kind, ts))
                _, alias, kind = table[event.signal]
                metrics.append(spb.Metric(None, alias, event.value, kind, ts))
            payload = spb.encode_payload(metrics, seq=self._next_seq(), timestamp_ms=ts)
            messages.append((self._topic(spb.DDATA, self.devices[machine].device), payload))
        await self._send(client, messages)

    async def on_close(self, client: aiomqtt.Client) -> None:
        now = self.now_ms
        deaths = [
            (
                self._topic(spb.DDEATH, self.devices[machine].device),
                spb.encode_payload([], seq=self._next_seq(), timestamp_ms=now),
            )
            for machine in sorted(self.born)
        ]
        await self._send(client, deaths)
        await client.publish(self._topic(spb.NDEATH), self._death(now), qos=1)
        log.info("sparkplug %s: DDEATH x%d and NDEATH published", self.name, len(self.born))
