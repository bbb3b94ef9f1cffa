"""Config beyond OEE: reason trees, small stops and start-up, line targets.

These settings change how time and parts are classified (a planned reason makes a stop
planned time; a short stop is a performance loss), so they live in the plant config the
core reads, validated with the rest.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A stop whose state sample came without a reason, until an operator codes it.
UNASSIGNED = "unassigned"
# The six big losses of a window, in the order of the waterfall (seconds), and the time
# with no usable data (`unknown_s`): not knowing is not an equipment failure.
LOSS_KEYS: tuple[str, ...] = (
    "equipment_failure_s",
    "setup_s",
    "small_stops_s",
    "slow_cycles_s",
    "startup_rejects_s",
    "production_rejects_s",
    "no_data_s",
)
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/ ]{0,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReasonCategory(_Model):
    """A branch of a reason tree: its codes, and whether they are planned stops.

    A stop coded with a planned reason counts as `planned_stop` time (out of planned
    production time), not as downtime.
    """

    name: str = Field(min_length=1)
    planned: bool = False
    codes: tuple[str, ...] = Field(min_length=1)

    @field_validator("codes")
    @classmethod
    def _code_chars(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        for code in codes:
            if not _CODE.match(code):
                raise ValueError(
                    f"reason code {code!r} must be 1-64 letters, digits, space or '_.-/'"
                )
            if code == UNASSIGNED:
                raise ValueError(f"{UNASSIGNED!r} is reserved for stops without a reason")
        return codes


def check_tree(tree: tuple[ReasonCategory, ...]) -> None:
    """A code belongs to one category only: its planned flag must be unambiguous."""
    seen: dict[str, str] = {}
    for category in tree:
        for code in category.codes:
            if code in seen:
                raise ValueError(
                    f"reason code {code!r} is in categories {seen[code]!r} and {category.name!r}"
                )
            seen[code] = category.name


class LineTarget(_Model):
    """A line's output target per shift: fixed parts, or from its ideal rate.

    `parts` is a number for every shift or a map {shift name: parts}; `efficiency`
    makes the target efficiency x planned time / ideal cycle time of the output machine.
    """

    parts: int | dict[str, int] | None = None
    efficiency: float | None = Field(default=None, gt=0, le=2)

    @field_validator("parts")
    @classmethod
    def _positive(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        for parts in values:
            if parts <= 0:
                raise ValueError(f"target parts must be > 0, got {parts}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> LineTarget:
        if (self.parts is None) == (self.efficiency is None):
            raise ValueError("give either 'parts' or 'efficiency'")
        return self

    def parts_for(
        self, shift: str, planned_s: float, ideal_cycle_time_s: float | None
    ) -> int | None:
        """The shift's target parts; None where the config sets none for it."""
        if self.efficiency is not None:
            if not ideal_cycle_time_s:
                return None
            return int(self.efficiency * planned_s / ideal_cycle_time_s)
        if isinstance(self.parts, dict):
            return self.parts.get(shift)
        return self.parts
