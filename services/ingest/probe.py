"""`linepulse check --connect`: does each configured signal exist at its source, right now?

For wiring a first PLC without guessing. Each source is visited once, with the ingester's
own connection code, so what is found here is what `linepulse ingest` will find:

- OPC-UA: `opcua_session.new_client`, `resolve` and `read_current`; a node the server does
  not have is reported with the reason, and the server's address space is browsed (bounded
  in depth and nodes) for Variables whose BrowseName, DisplayName or NodeId resemble the
  configured address or the signal, offered as candidates.
- MQTT: the broker is listened to for `listen_s` (every topic, `#`, besides the configured
  filters) under a client id of its own and a clean session, so the ingester's persistent
  session is never taken over. Each topic seen is matched as the ingester matches it
  (`mqtt_payload.TopicPatterns`, `sparkplug.parse_topic`); Sparkplug births are listed, and an
  edge node seen without its birth is asked for one (NCMD Rebirth) when the source allows
  rebirths, as the ingester would ask.

Nothing raises out of `probe`: an unreachable source is a `SourceResult` with a one-line
reason. Every connection and every request is bounded by `timeout_s`.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import aiomqtt
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from linepulse.config import PlantConfig
from linepulse.sources import MqttSource, OpcuaSource
from services.ingest import sparkplug
from services.ingest.errors import PayloadError, SparkplugError, UnsupportedValue
from services.ingest.mqtt import tls_context
from services.ingest.mqtt_payload import PlainDecoder
from services.ingest.opcua_session import (
    Route,
    failure_reason,
    new_client,
    read_current,
    resolve,
    routes_of,
)
from services.ingest.opcua_values import (
    plain_value,
    quality_of,
    status_name,
)

log = logging.getLogger(__name__)

# Browsing for candidates: at most this deep below Objects, this many nodes, this many
# candidates per missing node, and at least this similar (difflib ratio, 0..1).
BROWSE_DEPTH: Final = 6
BROWSE_NODES: Final = 5_000
CANDIDATES: Final = 5
MIN_SIMILARITY: Final = 0.6
# MQTT: distinct topics remembered (a busy broker has many more in a few seconds).
MAX_TOPICS: Final = 500

Found = Literal["found", "not found"]


@dataclass(frozen=True)
class SignalResult:
    """One configured signal: found or not, its current value and quality (`good`,
    `uncertain`, `bad`) with the source's status, or why it was not found."""

    machine: str
    signal: str
    address: str  # the NodeId or browse path; for MQTT the topic it came on
    found: Found
    value: str | None = None
    quality: str | None = None
    status: str | None = None
    why: str | None = None
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopicSeen:
    """A topic heard on the broker: `configured` when a configured pattern or the Sparkplug
    group covers it; `matched` is the machine/signal it feeds, or why it feeds none."""

    topic: str
    messages: int
    configured: bool
    matched: str


@dataclass
class SourceResult:
    """One source: reachable or not (`error`, one line), and what it has."""

    kind: Literal["opcua", "mqtt"]
    id: str
    where: str
    error: str | None = None
    signals: list[SignalResult] = field(default_factory=list)
    missing_machines: list[str] = field(default_factory=list)  # MQTT: nothing heard
    topics: list[TopicSeen] = field(default_factory=list)
    births: list[str] = field(default_factory=list)  # Sparkplug: "DBIRTH edge/device -> m"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Reachable, every configured signal found, every listed machine heard from."""
        if self.error is not None or self.missing_machines:
            return False
        return all(s.found == "found" for s in self.signals)


async def probe(
    plant: PlantConfig, *, listen_s: float = 5.0, timeout_s: float = 10.0
) -> list[SourceResult]:
    """Every configured source, visited concurrently; results in config order."""
    jobs = [_opcua(s, timeout_s) for s in plant.sources.opcua]
    jobs += [_mqtt(plant, s, listen_s, timeout_s) for s in plant.sources.mqtt]
    return list(await asyncio.gather(*jobs))


# -- OPC-UA --------------------------------------------------------------------------------


async def _opcua(source: OpcuaSource, timeout_s: float) -> SourceResult:
    result = SourceResult("opcua", source.id, source.endpoint)
    bounded = source.model_copy(update={"timeout_s": min(source.timeout_s, timeout_s)})
    client: Client | None = None
    connected = False
    try:
        # Connect, resolve, read and browse: each request is bounded by the client's
        # timeout; the whole visit by a few of them.
        async with asyncio.timeout(6 * bounded.timeout_s):
            client = await new_client(bounded)
            await client.connect()
            connected = True
            routes = routes_of(source)
            items, unresolved = await resolve(client, routes)
            values = dict(
                zip(
                    (item.handle for item in items),
                    await read_current(client, items),
                    strict=True,
                )
            )
            missing = {id(u.route): u.why for u in unresolved}
            index: list[_Browsed] | None = None
            for handle, route in enumerate(routes):
                if id(route) in missing:
                    if index is None:
                        index = await _browse(client)
                    result.signals.append(
                        SignalResult(
                            route.machine,
                            route.signal,
                            route.address,
                            "not found",
                            why=missing[id(route)],
                            candidates=candidates(route, index),
                        )
                    )
                else:
                    result.signals.append(_reading(route, values[handle]))
    except Exception as error:
        result.error = failure_reason(error)
    finally:
        if client is not None and connected:
            await _disconnect(client)
    return result


def _reading(route: Route, value: ua.DataValue) -> SignalResult:
    status = value.StatusCode
    try:
        shown: str | None = repr(plain_value(value.Value))
    except UnsupportedValue as error:
        shown = f"({error})"
    return SignalResult(
        route.machine,
        route.signal,
        route.address,
        "found",
        value=shown,
        quality=quality_of(status),
        status=status_name(status),
    )


async def _disconnect(client: Client) -> None:
    try:
        async with asyncio.timeout(5.0):
            await client.disconnect()
    except Exception as error:
        log.debug("check: disconnect: %r", error)
        client.disconnect_socket()


@dataclass(frozen=True)
class _Browsed:
    """A Variable found by browsing: its NodeId text and browse path from Objects."""

    node_id: str
    path: str  # "3:Press1/3:State"
    names: tuple[str, ...]  # BrowseName and DisplayName texts


async def _browse(client: Client) -> list[_Browsed]:
    """Variables under Objects, breadth first, one Browse request per level: at most
    BROWSE_DEPTH levels and BROWSE_NODES nodes. Namespace 0 (the server's own Server
    object and its diagnostics) is not entered: no plant tag lives there."""
    objects = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
    level: list[tuple[ua.NodeId, str]] = [(objects, "")]
    out: list[_Browsed] = []
    seen = 0
    mask = ua.NodeClass.Object | ua.NodeClass.Variable
    for _ in range(BROWSE_DEPTH):
        if not level or seen >= BROWSE_NODES:
            break
        params = ua.BrowseParameters()
        params.NodesToBrowse = [
            ua.BrowseDescription(
                NodeId=node,
                BrowseDirection=ua.BrowseDirection.Forward,
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
                IncludeSubtypes=True,
                NodeClassMask=int(mask),
                ResultMask=int(ua.BrowseResultMask.All),
            )
            for node, _ in level
        ]
        results = await client.uaclient.browse(params)
        following: list[tuple[ua.NodeId, str]] = []
        for (_, parent_path), result in zip(level, results, strict=True):
            for ref in result.References or []:
                target = ref.NodeId
                if target.NamespaceIndex == 0 or seen >= BROWSE_NODES:
                    continue
                seen += 1
                name = ref.BrowseName
                path = f"{parent_path}/{name.NamespaceIndex}:{name.Name}".lstrip("/")
                node_id = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                if ref.NodeClass == ua.NodeClass.Variable:
                    names = (str(name.Name), str(ref.DisplayName.Text or ""))
                    out.append(_Browsed(node_id.to_string(), path, names))
                following.append((node_id, path))
        level = following
    return out


def candidates(route: Route, index: Iterable[_Browsed]) -> tuple[str, ...]:
    """Browsed Variables that resemble the route: the configured NodeId (or browse path)
    against theirs, its last name against their BrowseName/DisplayName, and the signal
    name against those; best first, as `<NodeId> (<browse path>)`."""
    wanted = route.node.node_id or route.node.browse_path or ""
    identifier = wanted.split(";s=", 1)[-1].split("/")[-1]
    last = identifier.split(":", 1)[-1].rsplit(".", 1)[-1].lower()
    scored: list[tuple[float, str]] = []
    for node in index:
        their_id = node.node_id.split(";s=", 1)[-1].lower()
        score = max(
            _similar(identifier.lower(), their_id),
            _similar(wanted.lower(), node.path.lower()),
            *(_similar(last, n.lower()) for n in node.names if n),
            *(_similar(route.signal.lower(), n.lower()) for n in node.names if n),
        )
        if score >= MIN_SIMILARITY:
            scored.append((score, f"{node.node_id} ({node.path})"))
    scored.sort(key=lambda pair: -pair[0])
    return tuple(text for _, text in scored[:CANDIDATES])


def _similar(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio() if a and b else 0.0


# -- MQTT ----------------------------------------------------------------------------------


async def _mqtt(
    plant: PlantConfig, source: MqttSource, listen_s: float, timeout_s: float
) -> SourceResult:
    where = f"{source.host}:{source.port}"
    result = SourceResult("mqtt", source.id, where)
    machines = plant.machines()
    # The ingester's own decoder: a message the probe reads is one ingest would send.
    decoder = PlainDecoder(source.topics, {m: line.id for m, (line, _) in machines.items()})
    spb = source.sparkplug
    host = (
        sparkplug.SparkplugHost(spb.group, devices=spb.devices, metrics=spb.metrics, machines=())
        if spb is not None
        else None
    )
    counts: dict[str, int] = {}
    matched: dict[str, str] = {}
    configured: dict[str, bool] = {}
    heard: set[str] = set()  # machines
    latest: dict[tuple[str, str], SignalResult] = {}
    born: set[str] = set()  # edge nodes whose NBIRTH was seen
    asked: set[str] = set()

    def note_plain(name: str, payload: bytes) -> None:
        match = decoder.match(name)
        if match is None:
            return
        configured[name] = True
        if match.machine not in machines:
            matched[name] = f"pattern matched, but {match.machine!r} is no configured machine"
            return
        try:
            sample = decoder.decode_match(match, payload, _now_ms())
        except PayloadError as error:
            matched[name] = f"{match.machine}: unreadable payload ({error})"
            return
        heard.add(match.machine)
        matched[name] = f"{match.machine}/{sample.signal}"
        latest[match.machine, sample.signal] = SignalResult(
            match.machine, sample.signal, name, "found", repr(sample.value), sample.quality
        )

    async def note_sparkplug(client: aiomqtt.Client, name: str, payload: bytes) -> None:
        where = sparkplug.parse_topic(name)
        if host is None or where is None or where.group != host.group:
            return
        configured[name] = True
        machine = host.machine_for(where.edge, where.device)
        kind = where.message_type
        if where.device is None and machine not in machines:
            matched[name] = f"{kind} of edge node {where.edge}"  # node-level: no machine
        elif machine not in machines:
            matched[name] = f"{kind}: {machine!r} is no configured machine (sparkplug.devices)"
        else:
            matched[name] = f"{kind} {machine}"
            heard.add(machine)
        if kind == sparkplug.NBIRTH:
            born.add(where.edge)
        if kind in (sparkplug.NBIRTH, sparkplug.DBIRTH):
            try:
                decoded = sparkplug.decode_payload(payload)
            except SparkplugError as error:
                matched[name] = f"{kind}: unreadable payload ({error})"
                return
            signals = [(host.signal_for(m.name), m) for m in decoded.metrics if m.name is not None]
            known = [(s, m) for s, m in signals if s is not None]
            device = where.edge if where.device is None else f"{where.edge}/{where.device}"
            text = f"{kind} {device} -> {machine}: {', '.join(s for s, _ in known) or 'no metrics'}"
            if text not in result.births:
                result.births.append(text)
            if machine in machines:
                for signal, metric in known:
                    latest[machine, signal] = SignalResult(
                        machine, signal, name, "found", repr(metric.value), "good"
                    )
        elif (
            spb is not None
            and spb.rebirth
            and where.edge not in born
            and where.edge not in asked
            and kind in (sparkplug.NDATA, sparkplug.DDATA)
        ):
            asked.add(where.edge)
            ncmd = sparkplug.topic(host.group, sparkplug.NCMD, where.edge)
            await client.publish(ncmd, sparkplug.rebirth_request(_now_ms()), qos=0)
            result.notes.append(f"asked edge node {where.edge} for a rebirth (its data came first)")

    try:
        async with asyncio.timeout(timeout_s + listen_s + timeout_s):
            async with _client(source, timeout_s) as client:
                filters = [t.subscription() for t in source.topics]
                if spb is not None:
                    filters.append(f"{sparkplug.NAMESPACE}/{spb.group}/#")
                for name in dict.fromkeys(["#", *filters]):
                    await client.subscribe(name, qos=0, timeout=timeout_s)
                try:
                    async with asyncio.timeout(listen_s):
                        async for message in client.messages:
                            name = message.topic.value
                            if name not in counts and len(counts) >= MAX_TOPICS:
                                continue
                            counts[name] = counts.get(name, 0) + 1
                            payload = message.payload
                            raw = payload if isinstance(payload, bytes) else str(payload).encode()
                            if name.startswith(f"{sparkplug.NAMESPACE}/"):
                                await note_sparkplug(client, name, raw)
                            else:
                                note_plain(name, raw)
                except TimeoutError:
                    pass  # listened for listen_s: done
    except TimeoutError:
        result.error = f"timed out talking to {where} (after {timeout_s:g} s)"
    except aiomqtt.MqttError as error:
        result.error = f"cannot connect to {where}: {error}"
    except (OSError, ValueError) as error:
        result.error = f"cannot connect to {where}: {error}"
    if result.error is not None:
        return result
    result.topics = [
        TopicSeen(
            name,
            counts[name],
            configured.get(name, False),
            matched.get(name, "not configured"),
        )
        for name in sorted(counts)
    ]
    listed = list(source.machines) + (list(spb.devices.values()) if spb is not None else [])
    result.missing_machines = [m for m in dict.fromkeys(listed) if m not in heard]
    result.signals = [latest[key] for key in sorted(latest)]
    if not listed and not heard:
        result.missing_machines = ["(any configured machine)"]
    return result


def _client(source: MqttSource, timeout_s: float) -> aiomqtt.Client:
    """A listening client of its own: a fresh id and a clean session, so the ingester's
    persistent session (and the QoS 1 messages it holds) is never taken over."""
    credentials = source.credentials
    return aiomqtt.Client(
        source.host,
        source.port,
        identifier=f"linepulse-check-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        keepalive=source.keepalive_s,
        username=credentials.username if credentials else None,
        password=credentials.secret() if credentials else None,
        tls_context=tls_context(source),
        tls_insecure=True if source.tls and source.tls.insecure else None,
        timeout=timeout_s,
        logger=log,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- text ----------------------------------------------------------------------------------


def render_results(results: list[SourceResult], listen_s: float) -> str:
    """The results for a terminal: one block per source, one line per signal."""
    out: list[str] = []
    for source in results:
        head = f"{source.kind} {source.id} {source.where}"
        if source.error is not None:
            out.append(f"{head}: UNREACHABLE: {source.error}")
            continue
        found = sum(1 for s in source.signals if s.found == "found")
        if source.kind == "opcua":
            out.append(f"{head}: connected, {found} of {len(source.signals)} nodes found")
        else:
            out.append(f"{head}: connected, listened {listen_s:g} s, {len(source.topics)} topics")
        rows = []
        for s in source.signals:
            status = "" if s.status in (None, "Good") else f", {s.status}"
            shown = (
                f"{s.value} ({s.quality}{status})" if s.found == "found" else f"NOT FOUND: {s.why}"
            )
            rows.append([s.machine, s.signal, s.address, s.found, shown])
        out += _rows(rows, "  ")
        for s in source.signals:
            if s.found != "found":
                hint = "; ".join(s.candidates) if s.candidates else "no similar node found"
                out.append(f"  {s.machine}/{s.signal}: candidates: {hint}")
        for machine in source.missing_machines:
            out.append(f"  {machine}: NOT FOUND: nothing heard in {listen_s:g} s")
        if source.topics:
            out.append("  topics seen:")
            out += _rows(
                [
                    [
                        t.topic,
                        f"{t.messages}x",
                        "configured" if t.configured else "not configured",
                        t.matched if t.configured else "",
                    ]
                    for t in source.topics
                ],
                "    ",
            )
        for birth in source.births:
            out.append(f"  birth seen: {birth}")
        out += [f"  note: {n}" for n in source.notes]
    return "\n".join(out)


def _rows(rows: list[list[str]], indent: str) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
