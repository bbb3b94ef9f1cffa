"""The KPI record: what the core emits, the `kpi` topic carries and the API serves.

Field names and meanings are the contract in DESIGN.md and
schemas/kpi-record.schema.json. Ratios are `None` when their denominator is zero.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from linepulse.config import WindowKind


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

    @field_validator("window_start", "window_end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.utcoffset() != timedelta(0):
            raise ValueError("must be in UTC (RFC 3339 with 'Z')")
        return value


RECORD_FIELDS: tuple[str, ...] = tuple(KpiRecord.model_fields)
