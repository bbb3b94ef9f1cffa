"""The `alerts` section of the plant config: rules, people, channels and routing.

Who is paged comes from the shift calendar: each shift names its `lead` and `backup`
(person ids from `alerts.people`), per line where a line has its own shifts; after the
lead and the backup comes `alerts.manager`. Durations are written as `30s`, `10m`, `2h`.
Secrets (API token, routing keys, SMTP passwords) come from the environment or a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from linepulse.http.settings import ApiAccess, ApiSecurity, HttpLimits, TlsSettings
from linepulse.sources import Credentials

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `10m`, `2h`, `1d`, `500ms`, or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"must be a duration like 30s, 10m or 2h, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]

Op = Literal["<", "<=", ">", ">=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
# linepulse.records.NUMERIC_FIELDS but `revision`: written out because mypy needs a
# static Literal; tests/unit/common/test_records.py checks it against the record.
# Line-only fields (oee_constraint, output_count, ...) need `line_records`.
KpiField = Literal[
    "oee",
    "availability",
    "performance",
    "quality",
    "planned_s",
    "run_s",
    "downtime_s",
    "unknown_s",
    "stops",
    "total_count",
    "good_count",
    "reject_count",
    "mtbf_s",
    "mttr_s",
    # beyond OEE
    "calendar_s",
    "down_s",
    "idle_s",
    "setup_s",
    "small_stops",
    "small_stop_s",
    "failures",
    "rework_count",
    "effectiveness",
    "technical_efficiency",
    "setup_rate",
    "nee",
    "teep",
    "throughput_per_h",
    "scrap_ratio",
    "rework_ratio",
    "first_pass_yield",
    "mttf_s",
    "fully_productive_s",
    "coverage",
    # line records
    "oee_constraint",
    "bottleneck_s",
    "output_count",
    "target_count",
    "projected_count",
]
Forecast = Literal["target_miss"]
# KPI fields that measure the data itself rather than rest on it: `min_coverage` never
# holds a rule on them (it would hold it exactly when it should fire).
DATA_FIELDS: frozenset[str] = frozenset({"coverage", "unknown_s"})
DEFAULT_MIN_COVERAGE = 0.8
DEFAULT_SUMMARY = "{rule} on {machine}: {value}"
FORECAST_SUMMARY = (
    "{line}: shift {shift} projected {projected} of target {target} ({shortfall} short)"
)
SPC_SUMMARY = "{machine} {signal} out of control: {value}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scope(_Model):
    """Which machines a rule watches: listed machines, all machines of listed lines, or
    (both empty) every machine of the site. `line_records` makes a KPI rule watch the
    lines' own records instead of their machines'."""

    lines: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    line_records: bool = False


# Window lengths a rule's default `min_elapsed` is a third of (capped at MAX_MIN_ELAPSED_S).
RULE_WINDOW_S: dict[str, float] = {
    "1m": 60,
    "15m": 900,
    "1h": 3600,
    "shift": 8 * 3600,  # a typical shift
    "day": 86400,
}
MAX_MIN_ELAPSED_S = 900.0


def elapsed_needed_s(rule: Rule) -> float:
    """How long a window must have run before `rule` judges its record (`min_elapsed`)."""
    if rule.min_elapsed is not None:
        return rule.min_elapsed
    window = "shift" if rule.forecast is not None else rule.window
    return min(RULE_WINDOW_S[window] / 3, MAX_MIN_ELAPSED_S)


class Rule(_Model):
    """One alert rule; exactly one of `kpi`, `signal`, `no_data`, `forecast` or `spc` says
    what it watches.

    - `kpi: oee` with `window: 1h`, `op: "<"`, `threshold: 0.6`: the latest record of the
      current window of each machine (or line) in scope.
    - `signal: temperature` with `op: ">"`, `threshold: 85`; or `signal: state`, `op: "=="`,
      `value: down`: the latest sample of each machine in scope.
    - `no_data: 2m`: no event at all from a machine in scope for that long.
    - `spc: filler-1/fill_weight`: the control chart of that name (`spc:` of the plant,
      with fixed limits) followed live; breached while its newest subgroups break one
      of the chart's rules, recovered at the next subgroup in control (docs/spc.md).
      Summary fields: `signal`, `chart`, `value` (the rules broken).
    - `forecast: target_miss` with `margin: 0.05`: the open shift record of each line in
      scope (`scope.lines`, or every line with a `target`) projects its output at the
      current rate to fall short of the shift's target by more than the margin:
      `projected_count < target_count x (1 - margin)`. One alert per line and shift (its
      labels carry `shift` and `shift_start`). It resolves when the projection is back at
      or above that level (after `keep_firing_for`), and at once when the shift is over
      (its record final, a later shift's record seen, or the clock past its end): the
      miss is then a fact, not a forecast. Breaks do not hold it (the projection already
      leaves breaks out of the remaining time); a line whose machines are all in a
      planned stop does, as for KPI rules. Summary fields: `target`, `projected`,
      `shortfall` (parts), `output` (parts so far), `shift`, `margin`.

    `clear` is the hysteresis level: a firing alert resolves only once the value is on the
    good side of `clear` (e.g. trigger below 0.60, clear above 0.65).

    `min_coverage` (KPI and forecast rules, 0..1, default 0.8): a record whose `coverage`
    (the share of planned time with data) is below it, or null, changes nothing: it
    neither starts nor resolves an alert, so a pending one stays pending and a firing one
    stays firing (a forecast alert still ends with its shift). An OEE computed over ten
    minutes of data in an hour, or a projection from them, says little, and lost data is
    paged by `no_data` rules, not by every KPI rule at once. `0` judges every record, as
    before coverage existed; so are records that carry no `coverage` field at all (from a
    KPI service older than the field). Rules on `coverage` or `unknown_s` are never held.

    `min_elapsed` (KPI and forecast rules): a record of a window that has run for less
    than this (its `calendar_s`) changes nothing either: an hour's OEE one minute into the
    hour is one minute's OEE, and a slow press that has not finished its first part in it
    reads 0 %. Default a third of the window, at most 15 min (1m: 20 s, 15m: 5 min, 1h,
    shift and day: 15 min); `0` judges every record.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    kpi: KpiField | None = None
    window: Literal["1m", "15m", "1h", "shift", "day"] = "shift"
    signal: str | None = None
    no_data: Duration | None = None
    forecast: Forecast | None = None
    spc: str | None = None  # a chart of `spc:`, machine/signal
    margin: float = Field(default=0.05, ge=0, lt=1)  # forecast: the shortfall tolerated
    min_coverage: float = Field(default=DEFAULT_MIN_COVERAGE, ge=0, le=1)  # kpi, forecast
    min_elapsed: Duration | None = None  # kpi, forecast; default: see `elapsed_needed_s`
    op: Op | None = None
    threshold: float | None = None
    value: str | None = None  # for text comparisons, e.g. state == down
    clear: float | None = None
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    scope: Scope = Scope()
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = DEFAULT_SUMMARY  # FORECAST_SUMMARY for forecast rules
    runbook: str | None = None
    escalate_after: Duration = 900.0
    repeat_interval: Duration | None = None  # default: alerts.repeat_interval

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _forecast_summary(cls, data: Any) -> Any:
        if isinstance(data, dict) and "summary" not in data:
            if data.get("forecast") is not None:
                return {**data, "summary": FORECAST_SUMMARY}
            if data.get("spc") is not None:
                return {**data, "summary": SPC_SUMMARY}
        return data

    @model_validator(mode="after")
    def _one_subject(self) -> Rule:
        kinds = ("kpi", "signal", "no_data", "forecast", "spc")
        subjects = [k for k in kinds if getattr(self, k) is not None]
        if len(subjects) != 1:
            raise ValueError(
                f"give exactly one of kpi, signal, no_data, forecast, spc; got {subjects or 'none'}"
            )
        if self.forecast is None and "margin" in self.model_fields_set:
            raise ValueError("margin is for forecast rules")
        if "min_elapsed" in self.model_fields_set and self.kpi is None and self.forecast is None:
            raise ValueError("min_elapsed is for kpi and forecast rules")
        if "min_coverage" in self.model_fields_set:
            if self.kpi is None and self.forecast is None:
                raise ValueError("min_coverage is for kpi and forecast rules")
            if self.kpi in DATA_FIELDS:
                raise ValueError(
                    f"a rule on {self.kpi} watches the data itself and is never held by "
                    "min_coverage: drop it"
                )
        if self.spc is not None:
            given = [
                k for k in ("op", "threshold", "value", "clear") if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(f"an spc rule fires on its chart's own rules: drop {given}")
            if self.scope.lines or self.scope.machines:
                raise ValueError("an spc rule watches its chart's machine: drop scope")
            return self
        if self.forecast is not None:
            given = [
                k for k in ("op", "threshold", "value", "clear") if getattr(self, k) is not None
            ]
            if given:
                raise ValueError(
                    f"a forecast rule compares with its shift target and margin: drop {given}"
                )
            if self.window != "shift":
                raise ValueError("a forecast rule reads the shift record: window must be shift")
            if self.scope.machines:
                raise ValueError("a forecast rule watches lines: use scope.lines, not machines")
            return self
        if self.no_data is None:
            if self.op is None:
                raise ValueError("op is required (one of <, <=, >, >=, ==, !=)")
            if (self.threshold is None) == (self.value is None):
                raise ValueError("give exactly one of threshold (a number) and value (text)")
            if self.value is not None and self.op not in ("==", "!="):
                raise ValueError(f"a text value compares with == or !=, not {self.op}")
            if self.kpi is not None and self.value is not None:
                raise ValueError("a kpi rule compares numbers: use threshold")
        if self.clear is not None:
            if self.threshold is None or self.op not in ("<", "<=", ">", ">="):
                raise ValueError("clear (hysteresis) needs a numeric threshold and <, <=, > or >=")
            below = self.op in ("<", "<=")
            if (below and self.clear < self.threshold) or (
                not below and self.clear > self.threshold
            ):
                side = "at or above" if below else "at or below"
                raise ValueError(f"clear must be {side} the threshold {self.threshold}")
        return self


class Person(_Model):
    name: str = Field(min_length=1)
    # Channel ids (from alerts.channels) this person is reached on, and their address there.
    email: str | None = None
    slack_user: str | None = None  # mentioned in Slack messages, e.g. U024BE7LH
    channels: tuple[str, ...] = Field(min_length=1)


ChannelType = Literal["webhook", "slack", "pagerduty", "email", "alertmanager", "console"]


class Channel(_Model):
    """A way to deliver notifications. `url` for webhook, slack, pagerduty and alertmanager;
    SMTP settings for email; `routing_key_env`/`routing_key_file` for PagerDuty."""

    id: str = Field(min_length=1)
    type: ChannelType
    url: str | None = None
    routing_key_env: str | None = None
    routing_key_file: Path | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    credentials: Credentials | None = None
    sender: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=0, ge=0)  # 0: retry until delivered

    @model_validator(mode="after")
    def _settings_for_type(self) -> Channel:
        if self.type in ("webhook", "slack", "alertmanager") and not self.url:
            raise ValueError(f"a {self.type} channel needs url")
        if self.type == "pagerduty" and not (self.routing_key_env or self.routing_key_file):
            raise ValueError("a pagerduty channel needs routing_key_env or routing_key_file")
        if self.type == "email" and not (self.smtp_host and self.sender):
            raise ValueError("an email channel needs smtp_host and sender")
        return self


class HighAvailability(_Model):
    """Several `linepulse alerts` on one Kafka, one of them active (docs/alerts-ha.md).

    The active instance holds partition 0 of the `kafka.alerts` topic in a consumer group
    and writes its alert state and outbox there; the others follow it and take over when
    the group gives them the partition: `failover` after the active one stops answering
    (Kafka's session timeout; the broker's `group.min.session.timeout.ms`, 6 s by default,
    is the floor)."""

    enabled: bool = False
    failover: Duration = Field(default=6.0, ge=1.0)


# Who gets a line's shift report, besides person ids: the lead of the line's shift that
# follows it (who takes over) and `alerts.manager`.
NEXT_LEAD: Final = "next_lead"
MANAGER: Final = "manager"
# The channel types a report goes out on (a page-shaped channel has no room for one).
REPORT_CHANNELS: Final = ("email", "slack", "webhook", "console")


class PlantReports(_Model):
    """The plant's reports over every line, sent when a production day or an ISO week is
    over (GET /v1/reports/plant)."""

    to: tuple[str, ...] = (MANAGER,)  # person ids and manager
    daily: bool = True
    weekly: bool = True


class ShiftReports(_Model):
    """Shift reports sent when a shift is over, and the plant's daily and weekly reports
    (services/alerts/reports.py)."""

    # The KPI API that builds them (GET /v1/reports/shift): `linepulse api`'s address.
    api_url: str = Field(min_length=1)
    to: tuple[str, ...] = (NEXT_LEAD, MANAGER)
    # Recipients of one line's reports instead of `to` (line id: person ids, next_lead,
    # manager), e.g. a line with a manager of its own.
    lines: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Recipients of one shift's reports instead of `to` (shift name: as above), e.g. the
    # night shift's also to the maintenance lead; a line's own list comes first.
    shifts: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # The report's page printed to PDF and attached to the mail, where the service finds a
    # headless Chromium (linepulse/pdf.py); without one the mail goes without it.
    pdf: bool = True
    plant: PlantReports = PlantReports()
    # How long after the shift's end to wait for its final record (the KPI lateness and
    # the time the records take to reach the API, with room to spare).
    after: Duration = 300.0
    # How far back a restarted service still sends the reports it owes.
    lookback: Duration = 24 * 3600.0


class AlertSettings(_Model):
    rules: tuple[Rule, ...] = ()
    people: dict[str, Person] = Field(default_factory=dict)
    channels: tuple[Channel, ...] = ()
    manager: str | None = None  # person id paged after the lead and the backup
    # Channels every notification goes to besides the people's (e.g. an Alertmanager or a
    # team webhook that records everything).
    broadcast: tuple[str, ...] = ()
    group_wait: Duration = 5.0  # machines of one line breaching together make one page
    repeat_interval: Duration = 4 * 3600.0
    state_dir: Path = Path("alerts")  # relative: under the data dir (linepulse/data_dir.py)
    api_token_env: str | None = "LINEPULSE_ALERTS_TOKEN"  # noqa: S105 - a variable's name
    api_token_file: Path | None = None
    # Origins of pages allowed to call the alerts API from a browser (the live board's, e.g.
    # http://linepulse.plant.example:8080); none by default.
    cors_origins: tuple[str, ...] = ()
    # Request size and rate limits and HTTPS of the alerts API (linepulse/http/settings.py).
    api_limits: HttpLimits = HttpLimits()
    api_tls: TlsSettings | None = None
    high_availability: HighAvailability = HighAvailability()
    reports: ShiftReports | None = None

    def api_access(self, environ: Mapping[str, str] | None = None) -> ApiAccess:
        """The alerts API's tokens (read now), limits and CORS: the KPI API's guard."""
        security = ApiSecurity(
            token_env=self.api_token_env,
            token_file=self.api_token_file,
            cors_origins=self.cors_origins,
            limits=self.api_limits,
            tls=self.api_tls,
        )
        return security.resolve("alerts", environ, keys=("api_token_env", "api_token_file"))


class _LineLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def target(self) -> object | None: ...


class _AlertsLike(Protocol):
    @property
    def rules(self) -> Sequence[Rule]: ...


class _PlantLike(Protocol):
    @property
    def lines(self) -> Sequence[_LineLike]: ...
    @property
    def alerts(self) -> _AlertsLike: ...


def forecast_lines(rule: Rule, plant: _PlantLike) -> list[str]:
    """The lines a forecast rule watches: `scope.lines`, or every line with a target."""
    if rule.scope.lines:
        return list(rule.scope.lines)
    return [line.id for line in plant.lines if line.target is not None]


def check_forecast_rules(plant: _PlantLike) -> None:
    """A forecast rule needs a target on every line it watches (ValueError naming the key).

    Called from the plant config's validation, after the rules' lines are known to exist.
    """
    index = {line.id: (li, line) for li, line in enumerate(plant.lines)}
    for ri, rule in enumerate(plant.alerts.rules):
        if rule.forecast is None:
            continue
        if not rule.scope.lines:
            if not forecast_lines(rule, plant):
                raise ValueError(
                    f"alerts.rules[{ri}].forecast: no line has a target (lines[].target) "
                    f"for rule {rule.name!r} to forecast against"
                )
            continue
        for k, line_id in enumerate(rule.scope.lines):
            if line_id not in index:
                continue  # an unknown line: reported by the scope check
            li, line = index[line_id]
            if line.target is None:
                raise ValueError(
                    f"alerts.rules[{ri}].scope.lines[{k}]: line {line_id!r} has no target "
                    f"(lines[{li}].target), which forecast rule {rule.name!r} needs"
                )
