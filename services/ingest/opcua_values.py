"""From OPC-UA's data model to telemetry samples: quality, value, event time, node addresses.

Pure functions, no I/O, so the mapping rules are pinned by unit tests: the ingester's
hot path calls them once per notification, and a reconnect's read calls them too, so a
value means the same whichever way it arrived.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, cast

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds

# OPC UA Part 4 §7.34.1: the top two bits of a StatusCode are its severity.
_SEVERITY_SHIFT: Final = 30
_GOOD, _UNCERTAIN = 0, 1  # 2 is Bad, 3 is reserved and "shall be treated as Bad"

# Scalars a telemetry event can carry as they are (numbers, booleans, text).
_PLAIN: Final = frozenset(
    {
        ua.VariantType.Boolean,
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Float,
        ua.VariantType.Double,
        ua.VariantType.String,
    }
)
_BROWSE_STEP: Final = re.compile(r"^(\d+):(.+)$")

Plain = str | int | float | bool


class UnsupportedValue(ValueError):
    """A notification's value has no telemetry form (array, structure, missing); the
    message is the dead letter's reason."""


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
    """The value of a Variant as a number, bool or string; LocalizedText gives its text.

    Raises `UnsupportedValue` for what a telemetry event cannot carry: no value (Null),
    arrays and matrices, structures and every other built-in type."""
    if variant is None or variant.VariantType == ua.VariantType.Null or variant.Value is None:
        raise UnsupportedValue("no value")
    kind = variant.VariantType
    if variant.is_array or isinstance(variant.Value, list):
        raise UnsupportedValue(f"arrays are not supported ({_type_name(kind)}[])")
    if kind in _PLAIN:
        value: Plain = variant.Value
        return value
    if kind == ua.VariantType.LocalizedText:
        text = variant.Value.Text
        if text is None:
            raise UnsupportedValue("LocalizedText without text")
        return str(text)
    raise UnsupportedValue(f"value type {_type_name(kind)} is not supported")


def _type_name(kind: object) -> str:
    return getattr(kind, "name", str(kind))


def event_time(value: ua.DataValue, received: datetime) -> datetime:
    """When the reading was taken: SourceTimestamp, else ServerTimestamp, else the time the
    notification was received (Part 4 §7.7: the source timestamp is the reading's own)."""
    return value.SourceTimestamp or value.ServerTimestamp or received


def parse_node_id(text: str) -> ua.NodeId:
    """A NodeId from its string form (`ns=2;s=press-1.State`, `ns=3;i=1001`, `i=2258`).

    Raises `ValueError` naming the text when it is not a NodeId."""
    try:
        return ua.NodeId.from_string(text)
    except Exception as error:
        raise ValueError(f"{text!r} is not a NodeId (e.g. ns=2;s=Press1.State): {error}") from None


def parse_browse_path(text: str) -> list[ua.QualifiedName]:
    """The names of a browse path `2:Plant/2:press-1/2:State`, from the Objects folder.

    Each step is `<namespace index>:<browse name>`; a name may hold any character but `/`
    (dots and dashes are common in PLC tag names, which is why this does not go through
    the Part 4 §A.2 RelativePath text syntax, where `.` and `-` would need escaping)."""
    steps = text.strip().strip("/").split("/")
    if not steps or any(not step for step in steps):
        raise ValueError(f"browse path {text!r} has an empty step")
    names = []
    for step in steps:
        match = _BROWSE_STEP.match(step)
        if match is None:
            raise ValueError(
                f"browse path {text!r}: step {step!r} must be <namespace index>:<name>, "
                "e.g. 2:Plant/2:press-1/2:State"
            )
        names.append(ua.QualifiedName(Name=match.group(2), NamespaceIndex=int(match.group(1))))
    return names


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
