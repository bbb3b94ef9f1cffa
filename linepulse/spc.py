"""Statistical process control of process signals, as the plant config asks for it: per
machine and signal (a fill weight, a temperature, a torque), the chart, the subgroup size,
the specification limits, where the control limits come from, and the rules to watch.

The computation is in linepulse/spc_chart.py; docs/spc.md explains each setting.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

ChartKind = Literal["xbar_r", "xbar_s", "imr"]
# Western Electric / Nelson tests on the chart of the centre (X-bar or X), by name, and
# the spread chart's own limits:
SpcRule = Literal[
    "beyond_3sigma",  # one point beyond a control limit
    "2_of_3_beyond_2sigma",  # two of three in a row beyond 2 sigma, on one side
    "4_of_5_beyond_1sigma",  # four of five in a row beyond 1 sigma, on one side
    "8_on_one_side",  # eight in a row on one side of the centre line
    "6_trending",  # six in a row steadily rising or falling
    "spread_beyond_limits",  # a point of the R, S or MR chart beyond its limits
]
SPC_RULES: Final[tuple[SpcRule, ...]] = get_args(SpcRule)
MAX_R_SUBGROUP: Final = 10  # beyond this the range wastes the data: use xbar_s
MAX_SUBGROUP: Final = 25
MAX_EVERY_S: Final = 86_400  # a subgroup a day at the least


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SpecLimits(_Model):
    """What the product must meet (one side may be left out); `target` is informative."""

    lsl: float | None = None
    usl: float | None = None
    target: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> SpecLimits:
        if self.lsl is None and self.usl is None:
            raise ValueError("give lsl, usl or both")
        if self.lsl is not None and self.usl is not None and self.lsl >= self.usl:
            raise ValueError(f"lsl ({self.lsl}) must be below usl ({self.usl})")
        return self


class FixedLimits(_Model):
    """Control limits from a known process: its mean and the standard deviation of single
    values (the chart's limits follow from them and the subgroup size)."""

    center: float
    sigma: float = Field(gt=0)


class Baseline(_Model):
    """A period of stable running whose subgroups set the control limits (phase I); every
    subgroup is then judged against them (phase II)."""

    start: AwareDatetime = Field(alias="from")
    end: AwareDatetime = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> Baseline:
        if self.start >= self.end:
            raise ValueError("a baseline's `from` must be before its `to`")
        return self

    def holds(self, ts_ms: int) -> bool:
        start, end = (int(moment.timestamp() * 1000) for moment in (self.start, self.end))
        return start <= ts_ms < end


class SpcChart(_Model):
    """One control chart: `machine`'s `signal`, in subgroups of `subgroup_size` consecutive
    samples (by time; 1 for individuals), or with `subgroup_every_s`, one subgroup per
    interval of that length: its first `subgroup_size` samples (a sampling plan such as
    "five parts every hour" over a signal that reports every part). Limits are `limits`
    if given, else computed from `baseline`, else from all the data charted (a study of
    the data at hand)."""

    machine: str = Field(min_length=1)
    signal: str = Field(min_length=1)
    chart: ChartKind = "xbar_r"
    subgroup_size: int | None = Field(default=None, ge=1, le=MAX_SUBGROUP)
    subgroup_every_s: int | None = Field(default=None, ge=1, le=MAX_EVERY_S)
    spec: SpecLimits | None = None
    limits: FixedLimits | None = None
    baseline: Baseline | None = None
    rules: tuple[SpcRule, ...] = SPC_RULES

    @property
    def size(self) -> int:
        """The subgroup size: as configured, else 5 (1 for individuals)."""
        if self.subgroup_size is not None:
            return self.subgroup_size
        return 1 if self.chart == "imr" else 5

    @property
    def every_ms(self) -> int | None:
        """The subgroup interval in ms (None: consecutive subgroups)."""
        return None if self.subgroup_every_s is None else self.subgroup_every_s * 1000

    @property
    def name(self) -> str:
        return f"{self.machine}/{self.signal}"

    @model_validator(mode="after")
    def _consistent(self) -> SpcChart:
        size = self.size
        if self.chart == "imr" and size != 1:
            raise ValueError("an individuals chart (imr) charts single values: subgroup_size 1")
        if self.chart != "imr" and size < 2:
            raise ValueError(f"a {self.chart} chart needs subgroups of 2 or more; imr for 1")
        if self.chart == "xbar_r" and size > MAX_R_SUBGROUP:
            raise ValueError(
                f"the range of {size} values wastes most of them: use xbar_s above {MAX_R_SUBGROUP}"
            )
        if self.limits is not None and self.baseline is not None:
            raise ValueError("give fixed `limits` or a `baseline` to compute them, not both")
        return self
