"""From OPC-UA's data model to telemetry samples: quality, value, event time, node addresses.

Pure functions, no I/O, so the mapping rules are pinned by unit tests: the ingester's
hot path calls them once per notification, and a reconnect's read calls them too, so a
value means the same whichever way it arrived.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal, cast

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from linepulse.sources import browse_path_steps
from services.ingest.errors import (
    UnsupportedValue as UnsupportedValue,  # raised here; defined with its kin
)

Plain = str | int | float | bool

# OPC UA Part 4 §7.34.1: the top two bits of a StatusCode are its severity, the low 16
# bits info bits (overflow, semantics changed...) that do not change its meaning.
_SEVERITY_SHIFT: Final = 30
_GOOD, _UNCERTAIN = 0, 1  # 2 is Bad, 3 is reserved and "shall be treated as Bad"
_CODE_MASK: Final = 0xFFFF_0000
# "No reading yet": BadWaitingForInitialData (Part 4 §7.34.2) is what a server answers
# before its first sample; UncertainInitialValue (Part 8 §6.3.3) is what a server (node-opcua
# among them) holds in a variable nobody has written yet. Neither is a reading of the
# machine: taken as one, a made-up 0 becomes a counter's baseline.
_NO_READING_YET: Final = frozenset(
    {StatusCodes.BadWaitingForInitialData, StatusCodes.UncertainInitialValue}
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Withheld = Literal["waiting_for_initial_data", "no_source_timestamp"]

# Scalars a telemetry event can carry, and the Python type each is read as: the Variant's
# type decides the event's value column (events.typed_value), so a String "0042" stays
# text, every integer type an exact int (a UInt64 above 2**63-1 is refused there with its
# reason), Float and Double a float (3.0 too), Boolean a bool.
_PLAIN: Final[dict[ua.VariantType, type[Plain]]] = {
    ua.VariantType.Boolean: bool,
    ua.VariantType.SByte: int,
    ua.VariantType.Byte: int,
    ua.VariantType.Int16: int,
    ua.VariantType.UInt16: int,
    ua.VariantType.Int32: int,
    ua.VariantType.UInt32: int,
    ua.VariantType.Int64: int,
    ua.VariantType.UInt64: int,
    ua.VariantType.Float: float,
    ua.VariantType.Double: float,
    ua.VariantType.String: str,
}


def quality_of(status: ua.StatusCode | int | None) -> str:
    """`good`, `uncertain` or `bad` from an OPC-UA StatusCode's severity bits; a missing
    status is Good (Part 6 §5.2.2.17: an omitted StatusCode means Good)."""
    if status is None:
        return "good"
    code = status if isinstance(status, int) else status.value
    severity = (code >> _SEVERITY_SHIFT) & 0b11
    if severity == _GOOD:
        return "good"
    if severity == _UNCERTAIN:
        return "uncertain"
    return "bad"


def status_name(status: ua.StatusCode | None) -> str:
    """The StatusCode's symbolic name for a log line or a dead letter's reason."""
    if status is None:
        return "Good"
    try:
        return status.name
    except Exception:  # an unknown code from a vendor stack
        return f"0x{status.value:08X}"


def plain_value(variant: ua.Variant | None) -> Plain:
    """The value of a Variant as the Python type of its VariantType (`_PLAIN`): int, float,
    bool or str; LocalizedText gives its text.

    Raises `UnsupportedValue` for what a telemetry event cannot carry: no value (Null),
    arrays and matrices, structures and every other built-in type."""
    if variant is None or variant.VariantType == ua.VariantType.Null or variant.Value is None:
        raise UnsupportedValue("no value")
    kind = variant.VariantType
    if variant.is_array or isinstance(variant.Value, list):
        raise UnsupportedValue(f"arrays are not supported ({_type_name(kind)}[])")
    if kind in _PLAIN:
        # A decoded Variant already holds that type; one built in-process may not
        # (Variant(5, Double) keeps the int 5), and the type on the wire is what counts.
        value: Plain = _PLAIN[kind](variant.Value)
        return value
    if kind == ua.VariantType.LocalizedText:
        text = variant.Value.Text
        if text is None:
            raise UnsupportedValue("LocalizedText without text")
        return str(text)
    raise UnsupportedValue(f"value type {_type_name(kind)} is not supported")


def _type_name(kind: object) -> str:
    return getattr(kind, "name", str(kind))


def withheld(value: ua.DataValue) -> Withheld | None:
    """Why a DataValue is not a reading to emit, or None when it is one.

    `waiting_for_initial_data`: the server has no value yet (BadWaitingForInitialData, or
    UncertainInitialValue). `no_source_timestamp`: the reading's time at the source is not
    known (Part 4 §7.7.3): the ServerTimestamp is when the server last saw it, which after
    a reconnect or a slow poll can be seconds or hours after the change, and the KPI core
    times states and counts by event time."""
    status = value.StatusCode
    if status is not None and status.value & _CODE_MASK in _NO_READING_YET:
        return "waiting_for_initial_data"
    if value.SourceTimestamp is None:
        return "no_source_timestamp"
    return None


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds of `moment`, floored as every LinePulse timestamp is: a reading
    taken at …850.95 ms belongs to millisecond …850, never …851 (which would put it
    after a reading taken at …851.0). Exact integer arithmetic, no float rounding; a naive
    datetime is UTC (OPC-UA times are, and some stacks leave the zone off)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def event_time(value: ua.DataValue) -> int | None:
    """When the reading was taken, in epoch ms (floored): its SourceTimestamp (Part 4 §7.7:
    the source timestamp is the reading's own); None when the server gave none."""
    source = value.SourceTimestamp
    return None if source is None else epoch_ms(source)


def server_time(value: ua.DataValue) -> int | None:
    """When the server read the value, in epoch ms (floored), by the server's clock: its
    ServerTimestamp; None when the server gave none."""
    server = value.ServerTimestamp
    return None if server is None else epoch_ms(server)


def parse_node_id(text: str) -> ua.NodeId:
    """A NodeId from its string form (`ns=2;s=press-1.State`, `ns=3;i=1001`, `i=2258`,
    `nsu=urn:plant:press;s=Press1.State`). A `nsu=` one comes back as an ExpandedNodeId
    with its NamespaceUri: `local_node_id` turns it into a NodeId of the server at hand.

    Raises `ValueError` naming the text when it is not a NodeId."""
    try:
        return ua.NodeId.from_string(text)
    except Exception as error:
        raise ValueError(f"{text!r} is not a NodeId (e.g. ns=2;s=Press1.State): {error}") from None


def local_node_id(node_id: ua.NodeId, namespaces: list[str]) -> ua.NodeId:
    """`node_id` with its namespace as an index into this server's NamespaceArray.

    A NodeId given by namespace URI (`nsu=`) cannot go on the wire as it is: requests name
    nodes by namespace index (Part 4 §7.2), and a server numbers its namespaces as it
    pleases, differently after a restart or an update. So the URI is looked up in the
    NamespaceArray read at each connect. Raises `ValueError` when the server has no such
    namespace."""
    uri = getattr(node_id, "NamespaceUri", None)
    if not uri:
        return ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)
    try:
        index = namespaces.index(uri)
    except ValueError:
        raise ValueError(
            f"namespace {uri!r} is not on the server (its NamespaceArray: {namespaces})"
        ) from None
    return ua.NodeId(node_id.Identifier, ua.Int16(index), node_id.NodeIdType)


def parse_browse_path(text: str) -> list[ua.QualifiedName]:
    """The names of a browse path `2:Plant/2:press-1/2:State`, from the Objects folder
    (the syntax is `linepulse.sources.browse_path_steps`, checked at config load).

    Raises `ValueError` naming the step at fault."""
    return [
        ua.QualifiedName(Name=name, NamespaceIndex=index) for index, name in browse_path_steps(text)
    ]


def relative_path(names: list[ua.QualifiedName]) -> ua.RelativePath:
    """A RelativePath following hierarchical references (and subtypes) through `names`."""
    return ua.RelativePath(
        Elements=[
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.Int32(ObjectIds.HierarchicalReferences)),
                # asyncua types these as its own Boolean class; the encoder takes bools.
                IsInverse=cast(ua.Boolean, False),
                IncludeSubtypes=cast(ua.Boolean, True),
                TargetName=name,
            )
            for name in names
        ]
    )
