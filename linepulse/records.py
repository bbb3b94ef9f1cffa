"""The KPI record: what the core emits, the `kpi` topic carries and the API serves.

Field names and meanings are the contract in docs/kpi.md and
schemas/kpi-record.schema.json. Ratios are `None` when their denominator is zero.

`KpiRecord` is the one place the fields are written down. Everything else that names
them is derived from it here (`RECORD_FIELDS`, `RECORD_TYPES`, `NUMERIC_FIELDS`) or
checked against it: the core's output frame and the store's columns are built from
these; a hand-picked selection (the board's KPIs) goes through `record_fields`, which
fails at import when the record loses a field it names; the alert rules' `KpiField`
literal and the JSON Schema are compared with the model by tests/unit/common/test_records.py.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from linepulse.config import WindowKind


class ProductRun(BaseModel):
    """One product's share of a window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_s: float = Field(ge=0)
    total_count: int = Field(ge=0)
    good_count: int
    reject_count: int = Field(ge=0)
    performance: float | None
    quality: float | None


class LossCost(BaseModel):
    """What a window's losses cost at the config's rates (docs/costs.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str
    total: float = Field(description="the six big losses' cost (time without data is not priced)")
    by_category: dict[str, float] = Field(
        description="per loss category: equipment_failure, setup, small_stops, slow_cycles, "
        "startup_rejects, production_rejects"
    )
    unpriced_machines: list[str] = Field(
        description="line records: its machines whose losses could not be priced (no ideal "
        "cycle time), left out of the sums; empty for a machine record"
    )


class KpiRecord(BaseModel):
    """One machine (or line, with `machine` None) over one window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    line: str
    machine: str | None
    window: WindowKind
    window_start: AwareDatetime
    window_end: AwareDatetime
    shift: str | None = Field(description="shift name, for `shift` windows")
    planned_s: float = Field(ge=0, description="time in a shift, less breaks and planned stops")
    run_s: float = Field(ge=0, description="time running within planned time")
    downtime_s: float = Field(ge=0, description="down, idle, changeover within planned time")
    unknown_s: float = Field(ge=0, description="time without usable data within planned time")
    stops: int = Field(ge=0, description="transitions from running into a downtime state")
    total_count: int = Field(ge=0)
    good_count: int = Field(
        description="total - reject; can dip below 0 in a short window where the reject "
        "counter ticks before the total counter"
    )
    reject_count: int = Field(ge=0)
    availability: float | None = Field(ge=0, description="run_s / planned_s; None if planned_s = 0")
    performance: float | None = Field(
        ge=0, description="ideal cycle time x total_count / run_s; None if run_s = 0 or no ideal"
    )
    quality: float | None = Field(description="good_count / total_count; None if no parts")
    oee: float | None = Field(description="availability x performance x quality")
    mtbf_s: float | None = Field(ge=0, description="run_s / stops; None without stops")
    mttr_s: float | None = Field(ge=0, description="downtime_s / stops; None without stops")
    downtime_by_reason: dict[str, Annotated[float, Field(ge=0)]]
    final: bool
    revision: int = Field(ge=0)
    # -- beyond OEE (README "KPI definitions"): ISO 22400-2, the six big losses, products,
    # the line's constraint, bottleneck and shift target. Ratios are None on a zero
    # denominator, like the fields above.
    product: str | None = Field(description="the product run longest in the window")
    coverage: float | None = Field(
        ge=0,
        le=1,
        description="(planned_s - unknown_s) / planned_s: the share of planned time the "
        "numbers rest on; None if planned_s = 0",
    )
    calendar_s: float = Field(ge=0, description="window length (to the latest event while open)")
    down_s: float = Field(ge=0, description="time in `down` (ADET), small stops excluded")
    idle_s: float = Field(ge=0, description="time in `idle`, small stops excluded")
    setup_s: float = Field(ge=0, description="time in `changeover` (ASUT)")
    small_stops: int = Field(ge=0, description="down/idle stops shorter than small_stop_s")
    small_stop_s: float = Field(ge=0, description="their time, counted in run_s")
    failures: int = Field(ge=0, description="stops into `down`")
    rework_count: int | None = Field(description="None without a rework_count counter")
    effectiveness: float | None = Field(description="ISO 22400 effectiveness = performance")
    technical_efficiency: float | None = Field(description="run_s / (run_s + down_s)")
    setup_rate: float | None = Field(description="setup_s / (run_s + setup_s)")
    nee: float | None = Field(description="fully_productive_s / (planned_s - setup_s)")
    teep: float | None = Field(
        description="oee x planned_s / calendar_s (a line: over its machines' calendar time)"
    )
    throughput_per_h: float | None = Field(description="total_count per planned hour")
    scrap_ratio: float | None = Field(description="reject_count / total_count")
    rework_ratio: float | None = Field(description="rework_count / total_count")
    first_pass_yield: float | None = Field(description="(good_count - rework_count) / total_count")
    mttf_s: float | None = Field(description="run_s / failures")
    fully_productive_s: float | None = Field(description="ideal time of the good parts")
    losses: dict[str, float] | None = Field(
        description="the six big losses and no_data_s (unknown time) in seconds; with "
        "fully_productive_s they sum to planned_s. None when a part has no ideal cycle time"
    )
    by_product: dict[str, ProductRun] = Field(
        description="the window split at product changes, per product"
    )
    constraint: str | None = Field(description="line records: the constraint machine")
    oee_constraint: float | None = Field(description="line records: the constraint's oee")
    bottleneck: str | None = Field(
        description="line records: the machine with the most own stop time (down, setup, "
        "small stops) while others waited"
    )
    bottleneck_s: float | None = Field(description="line records: the bottleneck's stop time")
    output_count: int | None = Field(description="line records: the output machine's good parts")
    target_count: int | None = Field(description="line shift records: the shift's target")
    projected_count: float | None = Field(
        description="line shift records: output at the end of the shift at the current rate"
    )
    loss_cost: LossCost | None = Field(
        description="the losses in money at the config's `costs:` rates; a line's is its "
        "machines' summed. None without rates, or where no machine's losses can be priced"
    )

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.utcoffset() != timedelta(0):
            raise ValueError("must be in UTC (RFC 3339 with 'Z')")
        return value


RECORD_FIELDS: tuple[str, ...] = tuple(KpiRecord.model_fields)

FieldKind = Literal["string", "integer", "number", "boolean", "datetime", "object"]
"""What a field holds, in JSON Schema's words (`datetime`: a UTC time, RFC 3339 text on
the wire; `object`: a JSON object, such as `downtime_by_reason`)."""


@dataclass(frozen=True)
class FieldType:
    """A record field's kind and whether it may be None: what its SQL column, its frame
    column and its JSON Schema type are derived from."""

    kind: FieldKind
    nullable: bool


_KINDS: Final[Mapping[object, FieldKind]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    datetime: "datetime",
    AwareDatetime: "datetime",
}


def field_type(annotation: object) -> FieldType:
    """The `FieldType` of a model field's annotation; `TypeError` for a type this
    contract has no column for, so a new kind of field is mapped on purpose."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) == 1:
            return FieldType(field_type(kinds[0]).kind, nullable=True)
    elif origin is Annotated:
        return field_type(get_args(annotation)[0])
    elif origin is Literal:
        if all(isinstance(value, str) for value in get_args(annotation)):
            return FieldType("string", nullable=False)
    elif origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return FieldType("object", nullable=False)
    elif annotation in _KINDS:
        return FieldType(_KINDS[annotation], nullable=False)
    raise TypeError(f"no record field type for {annotation!r}")


RECORD_TYPES: Final[Mapping[str, FieldType]] = {
    name: field_type(info.annotation) for name, info in KpiRecord.model_fields.items()
}
# The fields holding a number (bool is its own kind): what an alert rule may compare.
NUMERIC_FIELDS: Final[tuple[str, ...]] = tuple(
    name for name, kind in RECORD_TYPES.items() if kind.kind in ("integer", "number")
)


def record_fields(*names: str) -> tuple[str, ...]:
    """`names`, each checked to be a field of `KpiRecord`: a module's selection of
    fields fails at import, naming the field, instead of reading a missing key later."""
    unknown = [name for name in names if name not in KpiRecord.model_fields]
    if unknown:
        raise KeyError(f"not fields of the KPI record: {unknown}")
    return names


# Fields added to the record after its first release: a record written before them (still
# on the compacted `kpi` topic, or sent by a worker not yet upgraded) is read with them
# None instead of being refused.
LATER_FIELDS: Final = frozenset(record_fields("loss_cost"))
