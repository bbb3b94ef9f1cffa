"""One simulated OPC-UA endpoint: an asyncua `Server` exposing its machines' nodes.

Nodes are created where the config says the ingester will look: a `node_id` such as
`ns=2;s=press-1.State` becomes a variable with exactly that NodeId (namespaces are
registered until the index exists), a `browse_path` such as `2:Line1/2:Press1/2:State`
becomes objects and a variable with those browse names under Objects. Types follow the
signal: `state` Int32 for PackML-style numeric states, else String; counters UInt32 (Int64
if `counter_max` exceeds it); `product` and `reason` String; everything else Double.

Each write carries the event's time as SourceTimestamp and status Good. Until the first
tick a node's value is Null with BadWaitingForInitialData (OPC UA Part 4 §7.34), so a
client that reads early sees no invented value.

Stop reasons: a machine whose nodes include `reason` gets the reason of each `state`
event written to that node first, in the same batch and with the same SourceTimestamp
("" when the state has none). An ingester attaches a `reason` sample to the `state`
sample of the same machine with the same SourceTimestamp.

Message security: the simulator serves security None only; a source configured for Sign
or SignAndEncrypt is served without it (with a warning), since the simulator holds no
server certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, timedelta

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from linepulse.config import COUNTER_SIGNALS
from linepulse.sources import OpcuaNode, OpcuaSource
from services.ingest.simulator.layout import REASON_NODE
from services.ingest.simulator.model import Event, MachineSpec, Value

log = logging.getLogger(__name__)
# The session timeout the simulator grants at most (asyncua's client default asks 1 h).
SESSION_TIMEOUT_MS = 3_600_000

NAMESPACE_URI = "urn:linepulse:simulator"
# With `historize`: what each variable's history keeps (the ingester reads back at most an
# hour by default, `history_max_age_s`).
HISTORY_PERIOD = timedelta(hours=1)
HISTORY_COUNT = 10_000
_UINT32_MAX = 2**32 - 1
_EPOCH = ua.DateTime(1970, 1, 1, tzinfo=UTC)
_WAITING = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))


def variant_type(spec: MachineSpec, signal: str) -> ua.VariantType:
    """The OPC-UA type of a signal's node on this machine."""
    if signal == "state":
        numeric = any(isinstance(v, int) for v in spec.state_values.values())
        return ua.VariantType.Int32 if numeric else ua.VariantType.String
    if signal in COUNTER_SIGNALS:
        maximum = spec.counter_max.get(signal, 0)
        return ua.VariantType.Int64 if maximum > _UINT32_MAX else ua.VariantType.UInt32
    if signal in ("product", REASON_NODE):
        return ua.VariantType.String
    return ua.VariantType.Double


def _namespace_indexes(nodes: list[OpcuaNode]) -> set[int]:
    out: set[int] = set()
    for node in nodes:
        if node.node_id is not None:
            out.add(ua.NodeId.from_string(node.node_id).NamespaceIndex)
        elif node.browse_path is not None:
            out.update(ua.QualifiedName.from_string(p).NamespaceIndex for p in _path(node))
    return out


def _path(node: OpcuaNode) -> list[str]:
    assert node.browse_path is not None  # noqa: S101 - only called for browse paths
    return [p for p in node.browse_path.strip("/").split("/") if p]


class OpcuaOutlet:
    """The server of one `sources.opcua` endpoint and a fast path for writing its events.

    With `historize`, every variable keeps its values of the last `HISTORY_PERIOD` (at
    most `HISTORY_COUNT`) in asyncua's in-memory history, as a PLC's Historizing variables
    do: an ingester that was away reads what it missed with HistoryRead (the ingester's
    `history_backfill`)."""

    def __init__(
        self, source: OpcuaSource, specs: Mapping[str, MachineSpec], *, historize: bool = False
    ) -> None:
        self.source = source
        self.historize = historize
        self.specs = {m.machine: specs[m.machine] for m in source.machines}
        self.server = Server()
        # (machine, signal) -> (NodeId, VariantType)
        self._nodes: dict[tuple[str, str], tuple[ua.NodeId, ua.VariantType]] = {}
        self._reason_nodes: dict[str, ua.NodeId] = {}
        self._reasons: dict[str, str] = {}
        self.written = 0

    async def start(self) -> None:
        """Build the address space and listen on the endpoint."""
        server = self.server
        await server.init()
        server.set_endpoint(self.source.endpoint)
        server.set_server_name(f"LinePulse simulator ({self.source.id})")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        # asyncua warns, on every start, that a server without signing or encryption
        # sends passwords in clear: true, and the point of a loopback simulator serving
        # security None; said once per start it reads as a fault on a first run.
        logging.getLogger("asyncua.server.server").setLevel(logging.ERROR)
        # asyncua's client asks for a 1 h session; its server grants at most 10 min unless
        # told otherwise, and the client warns of the revision at every connect. A PLC grants
        # what it grants; the simulator grants what the ingester asks.
        server.iserver.max_session_timeout_ms = SESSION_TIMEOUT_MS
        if self.source.security.mode != "None":
            log.warning(
                "opcua %s: configured for %s, but the simulator serves security None only",
                self.source.id,
                self.source.security.mode,
            )
        all_nodes = [n for m in self.source.machines for n in m.nodes.values()]
        wanted = max(_namespace_indexes(all_nodes) | {2})
        while len(await server.get_namespace_array()) <= wanted:
            count = len(await server.get_namespace_array())
            await server.register_namespace(f"{NAMESPACE_URI}:{self.source.id}:{count}")
        folders: dict[tuple[str, ...], Node] = {}
        for entry in self.source.machines:
            spec = self.specs[entry.machine]
            home: Node | None = None
            for signal, node in entry.nodes.items():
                vtype = variant_type(spec, signal)
                if node.node_id is not None:
                    if home is None:
                        home = await server.nodes.objects.add_object(2, entry.machine)
                    nodeid = ua.NodeId.from_string(node.node_id)
                    name = ua.QualifiedName(signal, nodeid.NamespaceIndex)
                    variable = await home.add_variable(
                        nodeid, name, _zero(vtype), varianttype=vtype, datatype=vtype.value
                    )
                else:
                    parts = _path(node)
                    parent = server.nodes.objects
                    for depth in range(1, len(parts)):
                        key = tuple(parts[:depth])
                        if key not in folders:
                            name = ua.QualifiedName.from_string(parts[depth - 1])
                            folders[key] = await parent.add_object(name.NamespaceIndex, name.Name)
                        parent = folders[key]
                    name = ua.QualifiedName.from_string(parts[-1])
                    variable = await parent.add_variable(
                        name.NamespaceIndex,
                        name.Name,
                        _zero(vtype),
                        varianttype=vtype,
                        datatype=vtype.value,
                    )
                # Timestamped, as a server's values are: asyncua's history store (with
                # `historize`) cannot keep a value without a SourceTimestamp.
                started = ua.DateTime.now(UTC)
                await server.write_attribute_value(
                    variable.nodeid,
                    ua.DataValue(
                        StatusCode=_WAITING, SourceTimestamp=started, ServerTimestamp=started
                    ),
                )
                if signal == REASON_NODE:
                    self._reason_nodes[entry.machine] = variable.nodeid
                else:
                    self._nodes[entry.machine, signal] = (variable.nodeid, vtype)
        await server.start()
        if self.historize:
            for nodeid in [*self._reason_nodes.values(), *(n for n, _ in self._nodes.values())]:
                await server.historize_node_data_change(
                    server.get_node(nodeid), period=HISTORY_PERIOD, count=HISTORY_COUNT
                )
        log.info(
            "opcua %s: serving %d machines, %d nodes on %s%s",
            self.source.id,
            len(self.specs),
            len(self._nodes) + len(self._reason_nodes),
            self.source.endpoint,
            " with history" if self.historize else "",
        )

    async def write(self, events: list[Event]) -> list[Event]:
        """Write a tick's events to their nodes; returns the events written (all of them)."""
        # Straight to the address space: the same call Server.write_attribute_value makes,
        # minus two layers per value, with the subscriptions' data-change callbacks intact.
        aspace = self.server.iserver.aspace
        value_attr = AttributeIds.Value
        now = ua.DateTime.now(UTC)
        stamp_ms = -1
        stamp = now
        for event in events:
            if event.ts != stamp_ms:
                stamp_ms, stamp = event.ts, _EPOCH + timedelta(milliseconds=event.ts)
            if event.signal == "state":
                reason_node = self._reason_nodes.get(event.machine)
                reason = event.reason or ""
                if reason_node is not None and self._reasons.get(event.machine) != reason:
                    self._reasons[event.machine] = reason
                    await aspace.write_attribute_value(
                        reason_node,
                        value_attr,
                        _data_value(reason, ua.VariantType.String, stamp, now),
                    )
            nodeid, vtype = self._nodes[event.machine, event.signal]
            await aspace.write_attribute_value(
                nodeid, value_attr, _data_value(event.value, vtype, stamp, now)
            )
        self.written += len(events)
        return events

    async def stop(self) -> None:
        await self.server.stop()
        log.info("opcua %s: stopped after %d values", self.source.id, self.written)


def _zero(vtype: ua.VariantType) -> Value:
    """A placeholder of the node's type (overwritten at once by BadWaitingForInitialData)."""
    if vtype == ua.VariantType.String:
        return ""
    return 0.0 if vtype == ua.VariantType.Double else 0


def _data_value(
    value: Value, vtype: ua.VariantType, source: ua.DateTime, server: ua.DateTime
) -> ua.DataValue:
    return ua.DataValue(
        Value=ua.Variant(value, vtype),
        SourceTimestamp=source,
        ServerTimestamp=server,
    )
