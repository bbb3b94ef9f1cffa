"""Sparkplug B: the payload codec, the topic namespace, and a host application's session state.

Sparkplug B (Eclipse Sparkplug 3.0) puts protobuf payloads on
`spBv1.0/<group>/<type>/<edge node>[/<device>]`. An edge node announces itself with an
NBIRTH, its devices with DBIRTHs: a birth lists every metric with its name, datatype and
(usually) a numeric alias, and later NDATA/DDATA messages carry the alias alone to save
bytes. Every message of a node's session carries `seq` (0-255, wrapping), so a host can see
a lost message; the NBIRTH carries a `bdSeq` metric that the node's NDEATH (its MQTT will)
repeats, so a late will of an old session cannot kill the new one. A host that misses a
message or meets an alias it does not know asks the node to publish its births again: an
NCMD with `Node Control/Rebirth` = true.

The codec (`encode_payload`, `decode_payload`, `topic`, `parse_topic`) is shared with the
equipment simulator, which publishes Sparkplug with it. `SparkplugHost` is the ingest side:
pure bookkeeping over decoded payloads (no I/O, time passed in), turning them into samples.

Two things keep data of a node decodable when the host's picture of it is missing:

- **Sessions persisted.** `snapshot()` is each node's alias tables, `bdSeq` and `seq` as a
  JSON document (the ingester writes it after every birth and death); `restore()` puts it
  back at start, so data after an ingester restart decodes at once. The host still asks a
  restored node for a rebirth once (it may have been born again meanwhile), and the
  rebirth's tables replace the restored ones.
- **Data held for its birth.** Data with an alias the host does not know (no birth seen,
  or an alias its birth did not declare) is held, up to `HOLD_MS` and `HOLD_MESSAGES` per
  node, and decoded when the node's birth (asked for at once) arrives, instead of being
  dropped or dead-lettered. What the birth still does not explain, or what waited too
  long, goes where it went before: counted as `before_birth`, or a dead letter.

The protobuf module is generated from `schemas/sparkplug_b.proto` (the Tahu schema); after
changing the schema, regenerate it with grpcio-tools (a dev-time tool only):

    python -m grpc_tools.protoc -Ischemas --python_out=services/ingest \\
        --pyi_out=services/ingest schemas/sparkplug_b.proto
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError

from services.ingest import sparkplug_b_pb2 as pb
from services.ingest.errors import (
    SparkplugError as SparkplugError,  # raised here; defined with its kin
)
from services.ingest.samples import SampleBatch

log = logging.getLogger(__name__)

NAMESPACE: Final = "spBv1.0"
BDSEQ: Final = "bdSeq"
REBIRTH: Final = "Node Control/Rebirth"
SEQ_MODULO: Final = 256

# Message types (Sparkplug 3.0 §6.4).
NBIRTH: Final = "NBIRTH"
NDEATH: Final = "NDEATH"
DBIRTH: Final = "DBIRTH"
DDEATH: Final = "DDEATH"
NDATA: Final = "NDATA"
DDATA: Final = "DDATA"
NCMD: Final = "NCMD"
DCMD: Final = "DCMD"
NODE_TYPES: Final = frozenset({NBIRTH, NDEATH, NDATA, NCMD})
DEVICE_TYPES: Final = frozenset({DBIRTH, DDEATH, DDATA, DCMD})
MESSAGE_TYPES: Final = NODE_TYPES | DEVICE_TYPES

# Metric data types (Sparkplug 3.0 §6.4.16; the same numbers as the schema's comment).
UNKNOWN: Final = 0
INT8: Final = 1
INT16: Final = 2
INT32: Final = 3
INT64: Final = 4
UINT8: Final = 5
UINT16: Final = 6
UINT32: Final = 7
UINT64: Final = 8
FLOAT: Final = 9
DOUBLE: Final = 10
BOOLEAN: Final = 11
STRING: Final = 12
DATETIME: Final = 13  # epoch milliseconds, in long_value
TEXT: Final = 14
UUID: Final = 15
DATASET: Final = 16
BYTES: Final = 17
FILE: Final = 18
TEMPLATE: Final = 19

DATATYPE_NAMES: Final = {
    UNKNOWN: "Unknown",
    INT8: "Int8",
    INT16: "Int16",
    INT32: "Int32",
    INT64: "Int64",
    UINT8: "UInt8",
    UINT16: "UInt16",
    UINT32: "UInt32",
    UINT64: "UInt64",
    FLOAT: "Float",
    DOUBLE: "Double",
    BOOLEAN: "Boolean",
    STRING: "String",
    DATETIME: "DateTime",
    TEXT: "Text",
    UUID: "UUID",
    DATASET: "DataSet",
    BYTES: "Bytes",
    FILE: "File",
    TEMPLATE: "Template",
}
# Signed integers travel as two's complement in an unsigned field; the width tells how to
# read them back (Tahu writes Int8/Int16 in 32 bits, some stacks in their own width: taking
# the low bits of the width first reads both the same way).
_SIGNED_BITS: Final = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}
_UNSIGNED_BITS: Final = {UINT8: 8, UINT16: 16, UINT32: 32, UINT64: 64, DATETIME: 64}
_INT_FIELD: Final = {
    INT8: "int_value",
    INT16: "int_value",
    INT32: "int_value",
    UINT8: "int_value",
    UINT16: "int_value",
    UINT32: "int_value",
    INT64: "long_value",
    UINT64: "long_value",
    DATETIME: "long_value",
}
_TEXT_TYPES: Final = frozenset({STRING, TEXT, UUID})
# Values a telemetry event can hold; the others (DataSet, Bytes, File, Template) cannot.
SUPPORTED: Final = frozenset(_INT_FIELD) | _TEXT_TYPES | {FLOAT, DOUBLE, BOOLEAN}

Value = int | float | bool | str | None


# -- the payload codec ----------------------------------------------------------------------


@dataclass(slots=True)
class Metric:
    """One metric of a payload. `value` is None when the metric is null (`is_null`), when a
    data message carries an alias with no value, or for a datatype a telemetry event cannot
    hold (see `SUPPORTED`). `datatype` is UNKNOWN where a data message leaves it out (the
    birth declared it); `timestamp_ms` is the acquisition time, None when not given."""

    name: str | None
    alias: int | None
    value: Value
    datatype: int
    timestamp_ms: int | None = None
    is_null: bool = False
    is_historical: bool = False


@dataclass(slots=True)
class Payload:
    """A decoded payload: publish time (epoch ms), `seq` (0-255; None on NDEATH) and metrics."""

    timestamp_ms: int | None
    seq: int | None
    metrics: list[Metric] = field(default_factory=list)
    uuid: str | None = None


def infer_datatype(value: Value) -> int:
    """The datatype for a Python value, for metrics written without one."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INT64
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING
    raise SparkplugError(f"cannot infer a Sparkplug datatype for {value!r}")


def _put_value(out: pb.Payload.Metric, value: Value, datatype: int) -> None:
    if datatype in _INT_FIELD:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SparkplugError(f"{DATATYPE_NAMES[datatype]} needs an int, got {value!r}")
        bits = 32 if _INT_FIELD[datatype] == "int_value" else 64
        width = _SIGNED_BITS.get(datatype) or _UNSIGNED_BITS[datatype]
        low = -(1 << (width - 1)) if datatype in _SIGNED_BITS else 0
        high = (1 << (width - 1)) - 1 if datatype in _SIGNED_BITS else (1 << width) - 1
        if not low <= value <= high:
            raise SparkplugError(f"{value} is out of range for {DATATYPE_NAMES[datatype]}")
        setattr(out, _INT_FIELD[datatype], value & ((1 << bits) - 1))
    elif datatype in (FLOAT, DOUBLE):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SparkplugError(f"{DATATYPE_NAMES[datatype]} needs a number, got {value!r}")
        if datatype == FLOAT:
            out.float_value = float(value)
        else:
            out.double_value = float(value)
    elif datatype == BOOLEAN:
        if not isinstance(value, bool):
            raise SparkplugError(f"Boolean needs a bool, got {value!r}")
        out.boolean_value = value
    elif datatype in _TEXT_TYPES:
        if not isinstance(value, str):
            raise SparkplugError(f"{DATATYPE_NAMES[datatype]} needs a str, got {value!r}")
        out.string_value = value
    else:
        name = DATATYPE_NAMES.get(datatype, str(datatype))
        raise SparkplugError(f"encoding datatype {name} is not supported")


def encode_payload(metrics: list[Metric], *, seq: int | None, timestamp_ms: int) -> bytes:
    """Serialise a Sparkplug B payload. A metric's datatype UNKNOWN is inferred from its value
    (bool -> Boolean, int -> Int64, float -> Double, str -> String); pass the real datatype
    in births, since hosts read later aliased values with it."""
    if seq is not None and not 0 <= seq < SEQ_MODULO:
        raise SparkplugError(f"seq must be 0..255, got {seq}")
    message = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        message.seq = seq
    for metric in metrics:
        out = message.metrics.add()
        if metric.name is not None:
            out.name = metric.name
        if metric.alias is not None:
            out.alias = metric.alias
        if metric.timestamp_ms is not None:
            out.timestamp = metric.timestamp_ms
        if metric.is_historical:
            out.is_historical = True
        datatype = metric.datatype
        if metric.is_null or metric.value is None:
            if datatype == UNKNOWN:
                raise SparkplugError(f"null metric {metric.name or metric.alias} needs a datatype")
            out.datatype = datatype
            out.is_null = True
            continue
        if datatype == UNKNOWN:
            datatype = infer_datatype(metric.value)
        out.datatype = datatype
        _put_value(out, metric.value, datatype)
    return message.SerializeToString()


def convert(raw: Value, datatype: int) -> Value:
    """A wire value read as `datatype`: signed integers from their two's complement, Float
    to the shortest decimal that is the same float32; other values unchanged.

    The datatype decides the value's type, and so its column in the telemetry event
    (events.typed_value): integer types (UInt64 and DateTime too) stay exact ints, Float
    and Double floats even when a stack sent a whole number in an integer field, String
    and Text stay text ("0815" is a material number, not 815)."""
    if datatype in _SIGNED_BITS and isinstance(raw, int) and not isinstance(raw, bool):
        bits = _SIGNED_BITS[datatype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >> (bits - 1) else raw
    if datatype in (FLOAT, DOUBLE) and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if datatype == FLOAT and isinstance(raw, float):
        return _float32(raw)
    return raw


def _float32(value: float) -> float:
    """float32 values come back as doubles like 1.100000023841858; give 1.1 instead."""
    if not math.isfinite(value):
        return value
    try:
        exact = struct.pack("<f", value)
    except OverflowError:  # a Double sent under a Float datatype: keep what was sent
        return value
    for digits in (6, 7, 8):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == exact:
            return short
    return value


def _metric(m: pb.Payload.Metric) -> Metric:
    datatype = m.datatype
    kind = m.WhichOneof("value")
    value: Value = None
    if m.is_null:
        pass
    elif kind in ("dataset_value", "template_value", "extension_value", "bytes_value"):
        pass  # not a telemetry value; the datatype tells the host why there is none
    elif kind is not None:
        value = convert(getattr(m, kind), datatype)
    name = m.name if m.HasField("name") else None
    # upb hands back a proto2 string field that is not UTF-8 as bytes instead of failing.
    if isinstance(name, bytes) or isinstance(value, bytes):
        where = name if name is not None else m.alias
        raise SparkplugError(f"metric {where!r}: its name or string value is not valid UTF-8")
    return Metric(
        name=name,
        alias=m.alias if m.HasField("alias") else None,
        value=value,
        datatype=datatype,
        timestamp_ms=m.timestamp if m.HasField("timestamp") else None,
        is_null=m.is_null,
        is_historical=m.is_historical,
    )


def decode_payload(data: bytes) -> Payload:
    """Parse a Sparkplug B payload; raises `SparkplugError` saying why it is not one."""
    try:
        message = pb.Payload.FromString(data)
    except DecodeError:
        raise SparkplugError(
            f"not a Sparkplug B payload: protobuf wire format is corrupt ({len(data)} bytes)"
        ) from None
    if not message.ListFields():
        raise SparkplugError("empty Sparkplug B payload (no timestamp, seq or metrics)")
    seq = message.seq if message.HasField("seq") else None
    if seq is not None and seq >= SEQ_MODULO:
        raise SparkplugError(f"seq must be 0..255, got {seq}")
    return Payload(
        timestamp_ms=message.timestamp if message.HasField("timestamp") else None,
        seq=seq,
        metrics=[_metric(m) for m in message.metrics],
        uuid=message.uuid if message.HasField("uuid") else None,
    )


# -- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    group: str
    message_type: str
    edge: str
    device: str | None = None


def topic(group: str, message_type: str, edge: str, device: str | None = None) -> str:
    """`spBv1.0/<group>/<type>/<edge>[/<device>]`; device types need a device, node types
    must not have one."""
    if message_type not in MESSAGE_TYPES:
        raise SparkplugError(f"unknown Sparkplug message type {message_type!r}")
    if (device is None) != (message_type in NODE_TYPES):
        kind = "node" if message_type in NODE_TYPES else "device"
        raise SparkplugError(f"{message_type} is a {kind} message: device={device!r} is wrong")
    for part in (group, edge, device):
        if part is not None and (not part or any(c in part for c in "/+#")):
            raise SparkplugError(f"{part!r} is not a valid Sparkplug id (empty, or has / + #)")
    levels = [NAMESPACE, group, message_type, edge]
    if device is not None:
        levels.append(device)
    return "/".join(levels)


def parse_topic(name: str) -> SparkplugTopic | None:
    """The parts of a Sparkplug B topic, or None if it is not one (wrong namespace, unknown
    type, or the STATE topic of a host application)."""
    levels = name.split("/")
    if len(levels) not in (4, 5) or levels[0] != NAMESPACE:
        return None
    group, message_type, edge = levels[1], levels[2], levels[3]
    device = levels[4] if len(levels) == 5 else None
    if message_type not in MESSAGE_TYPES or (device is None) != (message_type in NODE_TYPES):
        return None
    if not group or not edge or device == "":
        return None
    return SparkplugTopic(group, message_type, edge, device)


def rebirth_request(timestamp_ms: int) -> bytes:
    """The NCMD payload that asks an edge node to publish its births again."""
    return encode_payload(
        [Metric(name=REBIRTH, alias=None, value=True, datatype=BOOLEAN)],
        seq=None,
        timestamp_ms=timestamp_ms,
    )


def next_seq(seq: int) -> int:
    return (seq + 1) % SEQ_MODULO


# -- the host application's view of edge nodes ----------------------------------------------

REBIRTH_HOLDOFF_MS: Final = 5_000  # ask a node for a rebirth at most this often
# Data with unknown aliases waits this long for the birth that explains it (a rebirth is
# asked for at once and comes within a second from a live node), and at most this many
# messages of a node wait.
HOLD_MS: Final = 10_000
HOLD_MESSAGES: Final = 1_000
SNAPSHOT_VERSION: Final = 1
# Why a restored node is asked for one rebirth (expected: logged at INFO).
RESTORED: Final = "restored its session from before the restart"
UNKNOWN_STATE: Final = "unknown"
# The metric that carries a `state` sample's downtime reason (the simulator's, and any
# device metric `sparkplug.metrics` maps to it): "" means none.
REASON_SIGNAL: Final = "reason"


@dataclass(frozen=True, slots=True)
class Declared:
    """A metric as its birth declared it: the signal it feeds and how to read its values."""

    name: str
    signal: str | None  # None: a node-control or bookkeeping metric, not a signal
    datatype: int


@dataclass(slots=True)
class MetricTable:
    """The metrics of one node or device, by alias and by name, from its birth."""

    machine: str
    by_alias: dict[int, Declared] = field(default_factory=dict)
    by_name: dict[str, Declared] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Held:
    """A data message waiting for the birth that declares its aliases."""

    where: SparkplugTopic
    payload: Payload
    received_ms: int
    raw: bytes


@dataclass(slots=True)
class EdgeNode:
    """What the host knows about one edge node's current session."""

    bd_seq: int | None = None  # from its NBIRTH; None before one is seen
    seq: int | None = None  # the last seq seen
    node: MetricTable | None = None  # node-level metrics, when the node is a machine itself
    devices: dict[str, MetricTable] = field(default_factory=dict)
    birth_seen: bool = False
    rebirth_asked_ms: int | None = None
    restored: bool = False  # from a snapshot: no message of this run seen yet
    held: list[_Held] = field(default_factory=list)  # data waiting for its birth

    def table(self, device: str | None) -> MetricTable | None:
        """The metrics of the node itself (`device` None) or of one of its devices."""
        return self.node if device is None else self.devices.get(device)


class SparkplugHost:
    """Turns Sparkplug messages of one group into samples, keeping each edge node's session:
    alias tables from births, `seq` continuity, and births paired with deaths by `bdSeq`.

    Pure: `handle` takes the receive time and a `SampleBatch`, and returns the reason to ask
    the node for a rebirth (or None); the caller publishes the NCMD. Rebirth requests are
    held off for REBIRTH_HOLDOFF_MS per node, so a burst of bad messages asks once.
    """

    def __init__(
        self,
        group: str,
        *,
        devices: Mapping[str, str],
        metrics: Mapping[str, str],
        machines: Collection[str],
    ) -> None:
        self.group = group
        self._devices = dict(devices)
        self._metrics = dict(metrics)
        self._machines = frozenset(machines)
        self.nodes: dict[str, EdgeNode] = {}
        self.seq_gaps = 0
        self.unknown_aliases = 0
        # Aliased metrics of a node whose birth this host has not seen (it started after
        # the node, the compose stack's order): expected, not bad input; the rebirth it
        # asks for brings their current values.
        self.before_birth = 0
        # machine -> receipt time (ms) of its latest `unknown` mark not yet followed by a state
        self._unknown_at: dict[str, int] = {}
        self.rebirths_asked = 0
        self.held_decoded = 0  # held data messages decoded when their birth came
        self._held = 0  # held data messages of all nodes: none, no expiry scan
        # True when births or deaths changed what `snapshot` returns since it last ran.
        self.changed = False

    # -- mapping from Sparkplug ids to the plant's -------------------------------------------

    def machine_for(self, edge: str, device: str | None) -> str:
        """A device's machine: `devices[edge/device]`, else `devices[device]`, else the
        device id. Node-level metrics belong to `devices[edge]`, else the edge node id."""
        if device is None:
            return self._devices.get(edge, edge)
        return self._devices.get(f"{edge}/{device}") or self._devices.get(device, device)

    def signal_for(self, name: str) -> str | None:
        """The signal a metric feeds; None for Sparkplug's own bookkeeping metrics."""
        if name == BDSEQ or name.startswith(("Node Control/", "Device Control/")):
            return None
        return self._metrics.get(name, name)

    # -- messages ----------------------------------------------------------------------------

    def handle(
        self,
        where: SparkplugTopic,
        payload: Payload,
        received_ms: int,
        batch: SampleBatch,
        raw: bytes,
    ) -> str | None:
        """Apply one message; add its samples (and dead letters) to `batch`. Returns why the
        node should be asked for a rebirth now, or None."""
        self._expire_held(received_ms, batch)
        node = self.nodes.setdefault(where.edge, EdgeNode())
        kind = where.message_type
        if kind == NDEATH:
            self._node_death(where, node, payload, received_ms, batch)
            return None
        if kind in (NCMD, DCMD):
            return None  # commands to nodes (ours or another host's); nothing to ingest
        restored, node.restored = node.restored, False
        if restored:
            # The first message after a restart: a seq gap is the time the ingester was
            # away, and the node may have been born again meanwhile: one rebirth confirms.
            node.seq = None
        wants = self._check_seq(where, node, payload)
        if restored:
            wants = wants or RESTORED
        # A birth's held data goes before the birth's own values: it is older.
        if kind == NBIRTH:
            self._node_birth(where, node, payload)
            wants = None
            self._release_held(node, None, batch)
            self._samples(where, node.node, payload, received_ms, batch, raw, birth=True)
        elif kind == DBIRTH:
            assert where.device is not None  # noqa: S101 - parse_topic guarantees it
            table = MetricTable(self.machine_for(where.edge, where.device))
            node.devices[where.device] = table
            self._declare(table, payload)
            self.changed = True
            self._release_held(node, where.device, batch)
            self._samples(where, table, payload, received_ms, batch, raw, birth=True)
            if not node.birth_seen:
                wants = wants or "DBIRTH before any NBIRTH of this session"
        elif kind == DDEATH:
            assert where.device is not None  # noqa: S101 - parse_topic guarantees it
            gone = node.devices.pop(where.device, None)
            self.changed = True
            machine = gone.machine if gone else self.machine_for(where.edge, where.device)
            self._unknown([machine], received_ms, batch, where)
        else:  # NDATA, DDATA
            known = node.table(where.device)
            unknown = _unknown_aliases(known, payload)
            if unknown and len(node.held) < HOLD_MESSAGES:
                node.held.append(_Held(where, payload, received_ms, raw))
                self._held += 1
                return self._ask(where, node, wants or f"unknown alias {unknown[0]}", received_ms)
            missing = self._samples(
                where,
                known,
                payload,
                received_ms,
                batch,
                raw,
                birth=False,
                late_join=not node.birth_seen,
            )
            if missing:
                wants = wants or missing
        return self._ask(where, node, wants, received_ms)

    # -- data waiting for its birth ------------------------------------------------------

    def _release_held(self, node: EdgeNode, device: str | None, batch: SampleBatch) -> None:
        """A birth came: decode the held data of what it declared (the node's own after an
        NBIRTH, the device's after its DBIRTH), in arrival order."""
        waiting, node.held = node.held, []
        for held in waiting:
            if held.where.device != device:
                node.held.append(held)
                continue
            table = node.table(device)
            self.held_decoded += 1
            self._held -= 1
            self._samples(
                held.where, table, held.payload, held.received_ms, batch, held.raw, birth=False
            )

    def _expire_held(self, now_ms: int, batch: SampleBatch) -> None:
        """Held data whose birth did not come within HOLD_MS goes where it would have gone
        without holding: counted before a node's first birth, a dead letter after."""
        if not self._held:
            return
        for node in self.nodes.values():
            if not node.held or now_ms - node.held[0].received_ms < HOLD_MS:
                continue
            keep = []
            for held in node.held:
                if now_ms - held.received_ms < HOLD_MS:
                    keep.append(held)
                    continue
                self._held -= 1
                table = node.table(held.where.device)
                self._samples(
                    held.where,
                    table,
                    held.payload,
                    held.received_ms,
                    batch,
                    held.raw,
                    birth=False,
                    late_join=not node.birth_seen,
                )
            node.held = keep

    # -- sessions across restarts --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Each node's session as JSON: `bdSeq`, `seq`, and the alias tables of the node and
        its devices (names and datatypes; machines and signals come from the config)."""
        self.changed = False

        def table(t: MetricTable) -> list[list[Any]]:
            aliases = {d.name: alias for alias, d in t.by_alias.items()}
            return [[d.name, d.datatype, aliases.get(d.name)] for d in t.by_name.values()]

        return {
            "version": SNAPSHOT_VERSION,
            "group": self.group,
            "nodes": {
                edge: {
                    "bd_seq": node.bd_seq,
                    "seq": node.seq,
                    "node": None if node.node is None else table(node.node),
                    "devices": {d: table(t) for d, t in node.devices.items()},
                }
                for edge, node in self.nodes.items()
                if node.birth_seen
            },
        }

    def restore(self, doc: Mapping[str, Any]) -> int:
        """Put back the sessions of `snapshot()` (of this group, same version); the number
        of nodes restored. Raises ValueError for a document of another shape."""
        if doc.get("version") != SNAPSHOT_VERSION or doc.get("group") != self.group:
            raise ValueError(
                f"a Sparkplug session snapshot of version {doc.get('version')!r} and group "
                f"{doc.get('group')!r}, not {SNAPSHOT_VERSION} and {self.group!r}"
            )

        def table(machine: str, rows: list[list[Any]]) -> MetricTable:
            out = MetricTable(machine)
            for name, datatype, alias in rows:
                declared = Declared(str(name), self.signal_for(str(name)), int(datatype))
                out.by_name[declared.name] = declared
                if alias is not None:
                    out.by_alias[int(alias)] = declared
            return out

        for edge, saved in doc["nodes"].items():
            rows = saved["node"]
            self.nodes[edge] = EdgeNode(
                bd_seq=saved["bd_seq"],
                seq=saved["seq"],
                node=None if rows is None else table(self.machine_for(edge, None), rows),
                devices={
                    device: table(self.machine_for(edge, device), rows)
                    for device, rows in saved["devices"].items()
                },
                birth_seen=True,
                restored=True,
            )
        return len(doc["nodes"])

    def _check_seq(self, where: SparkplugTopic, node: EdgeNode, payload: Payload) -> str | None:
        seq = payload.seq
        if seq is None:
            return None
        last, node.seq = node.seq, seq
        if where.message_type == NBIRTH or last is None or seq == next_seq(last):
            return None
        self.seq_gaps += 1
        log.warning(
            "sparkplug %s/%s: seq gap (expected %d, got %d) on %s",
            where.group,
            where.edge,
            next_seq(last),
            seq,
            where.message_type,
        )
        return f"seq gap: expected {next_seq(last)}, got {seq}"

    def _node_birth(self, where: SparkplugTopic, node: EdgeNode, payload: Payload) -> None:
        self.changed = True
        node.bd_seq = _bd_seq(payload)
        node.birth_seen = True
        node.devices.clear()  # a new session: devices must be born again
        node.node = MetricTable(self.machine_for(where.edge, None))
        self._declare(node.node, payload)
        log.info("sparkplug %s/%s: NBIRTH (bdSeq %s)", where.group, where.edge, node.bd_seq)

    def _node_death(
        self,
        where: SparkplugTopic,
        node: EdgeNode,
        payload: Payload,
        received_ms: int,
        batch: SampleBatch,
    ) -> None:
        bd_seq = _bd_seq(payload)
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            log.info(
                "sparkplug %s/%s: NDEATH of an older session (bdSeq %d, current %d) ignored",
                where.group,
                where.edge,
                bd_seq,
                node.bd_seq,
            )
            return
        machines = [t.machine for t in node.devices.values()]
        if node.node is not None and node.node.machine in self._machines:
            machines.append(node.node.machine)
        log.warning(
            "sparkplug %s/%s: NDEATH (bdSeq %s); machines unknown: %s",
            where.group,
            where.edge,
            bd_seq,
            ", ".join(machines) or "none",
        )
        self._unknown(machines, received_ms, batch, where)
        self.nodes[where.edge] = EdgeNode(rebirth_asked_ms=node.rebirth_asked_ms, held=node.held)
        self.changed = True

    def _unknown(
        self, machines: list[str], received_ms: int, batch: SampleBatch, where: SparkplugTopic
    ) -> None:
        for machine in dict.fromkeys(machines):
            if machine in self._machines:
                batch.add(received_ms, machine, "state", UNKNOWN_STATE, where=_where(where))
                self._unknown_at[machine] = received_ms

    def _declare(self, table: MetricTable, payload: Payload) -> None:
        for m in payload.metrics:
            if m.name is None:
                continue
            declared = Declared(m.name, self.signal_for(m.name), m.datatype)
            table.by_name[m.name] = declared
            if m.alias is not None:
                table.by_alias[m.alias] = declared

    def _samples(
        self,
        where: SparkplugTopic,
        table: MetricTable | None,
        payload: Payload,
        received_ms: int,
        batch: SampleBatch,
        raw: bytes,
        *,
        birth: bool,
        late_join: bool = False,
    ) -> str | None:
        """Add a message's metrics as samples; returns a rebirth reason if aliases or the
        birth were missing. Node-level metrics are samples only if the node is a machine.

        `late_join`: no NBIRTH of this node's session has been seen here, so its aliases
        cannot be known yet; they are counted in `before_birth`, not dead letters. After a
        birth, an alias it did not declare is a broken message: a dead letter."""
        machine = table.machine if table else self.machine_for(where.edge, where.device)
        if where.device is None and machine not in self._machines:
            return None if birth or table else "NDATA before NBIRTH"
        if machine not in self._machines:
            batch.reject(
                f"unknown machine {machine!r} (Sparkplug device {where.edge}/{where.device})",
                raw,
                _where(where),
            )
            return None
        default_ts = payload.timestamp_ms if payload.timestamp_ms is not None else received_ms
        place = _where(where)
        unknown: list[int] = []
        # A `reason` metric is not a signal of its own (as the OPC-UA reason node is not):
        # it goes with the `state` sample of the same time, whichever comes first.
        samples: list[tuple[int, str, Value]] = []
        reasons: dict[int, str | None] = {}
        for m in payload.metrics:
            declared = None
            if table is not None:
                if m.alias is not None and m.name is None:
                    declared = table.by_alias.get(m.alias)
                elif m.name is not None:
                    declared = table.by_name.get(m.name)
            if declared is None:
                if m.name is None:
                    unknown.append(m.alias if m.alias is not None else -1)
                    continue
                declared = Declared(m.name, self.signal_for(m.name), m.datatype)
            signal = declared.signal
            if signal is None:
                continue
            value = m.value
            datatype = m.datatype or declared.datatype
            if m.is_null:
                if signal != "state":
                    continue  # a null reading has no value to record
                value = UNKNOWN_STATE
            elif value is None:
                batch.reject(
                    f"metric {declared.name!r}: datatype "
                    f"{DATATYPE_NAMES.get(datatype, datatype)} is not a telemetry value",
                    raw,
                    place,
                )
                continue
            elif m.datatype == UNKNOWN:
                value = convert(value, datatype)
            ts = m.timestamp_ms if m.timestamp_ms is not None else default_ts
            if signal == REASON_SIGNAL:
                reasons[ts] = str(value) or None
                continue
            samples.append((ts, signal, value))
        for ts, signal, value in samples:
            reason = reasons.get(ts) if signal == "state" else None
            marked = self._unknown_at.get(machine) if signal == "state" else None
            if marked is not None:
                # A birth's state is the current one, but stamped when it began: before the
                # `unknown` mark of the death, it would leave the machine unknown in event
                # time until its next change. Stamped on receipt instead (as OPC-UA does).
                if birth and ts < marked:
                    ts = received_ms
                if ts >= marked:
                    del self._unknown_at[machine]
            batch.add(ts, machine, signal, value, reason=reason, where=place)
        if not unknown:
            return None if table is not None or birth else f"{where.message_type} before birth"
        if late_join:
            self.before_birth += len(unknown)
            return f"unknown alias {unknown[0]}"
        self.unknown_aliases += len(unknown)
        batch.reject(
            f"unknown alias(es) {sorted(unknown)[:10]} without a birth "
            f"({len(unknown)} metric(s) dropped)",
            raw,
            place,
        )
        return f"unknown alias {unknown[0]}"

    def _ask(
        self, where: SparkplugTopic, node: EdgeNode, reason: str | None, now_ms: int
    ) -> str | None:
        if reason is None:
            return None
        if node.rebirth_asked_ms is not None and now_ms - node.rebirth_asked_ms < (
            REBIRTH_HOLDOFF_MS
        ):
            return None
        node.rebirth_asked_ms = now_ms
        self.rebirths_asked += 1
        # Joining after a node's birth, the host asks for one: Sparkplug's normal start
        # (INFO). A node whose birth was seen and that still sends what it did not declare
        # has lost step with the host (WARNING).
        log.log(
            logging.WARNING if node.birth_seen and reason != RESTORED else logging.INFO,
            "sparkplug %s/%s: asking for a rebirth: %s%s",
            where.group,
            where.edge,
            reason,
            "" if node.birth_seen else " (joined after its birth)",
        )
        return reason


def _bd_seq(payload: Payload) -> int | None:
    for m in payload.metrics:
        if m.name == BDSEQ and isinstance(m.value, int) and not isinstance(m.value, bool):
            return m.value
    return None


def _where(where: SparkplugTopic) -> str:
    device = f"/{where.device}" if where.device else ""
    return f"{where.message_type} {where.edge}{device}"


def _unknown_aliases(table: MetricTable | None, payload: Payload) -> list[int]:
    """The aliases of a data message's metrics sent by alias alone that `table` (None: no
    birth seen) does not declare; -1 for a metric with neither name nor alias."""
    return [
        -1 if m.alias is None else m.alias
        for m in payload.metrics
        if m.name is None and (table is None or m.alias not in table.by_alias)
    ]
