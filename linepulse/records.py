"""The KPI record: what the core emits, the `kpi` topic carries and the API serves.

Field names and meanings are the contract in DESIGN.md and
schemas/kpi-record.schema.json. Ratios are `None` when their denominator is zero.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

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

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.utcoffset() != timedelta(0):
            raise ValueError("must be in UTC (RFC 3339 with 'Z')")
        return value


RECORD_FIELDS: tuple[str, ...] = tuple(KpiRecord.model_fields)
