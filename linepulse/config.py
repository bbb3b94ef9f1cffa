"""The plant config: one YAML file, validated once at start-up, frozen afterwards.

Every service receives the `PlantConfig` built here; nothing reads the file twice and
nothing is built at import time. Validation errors name the key at fault in the
dotted form users see in their YAML (`lines[0].machines[3].ideal_cycle_time_s`).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from linepulse.alerting import MANAGER, NEXT_LEAD, AlertSettings, check_forecast_rules
from linepulse.bus.security import KafkaSecurity
from linepulse.costs import LineCosts, MachineCosts, PlantCosts
from linepulse.http.settings import ApiSecurity
from linepulse.production import LineTarget, ReasonCategory, check_tree
from linepulse.sources import IngestSettings, Sources
from linepulse.spc import SpcChart

log = logging.getLogger(__name__)

State = Literal["running", "idle", "down", "changeover", "planned_stop", "unknown"]
STATES: frozenset[str] = frozenset(get_args(State))
# States whose time counts as downtime (docs/kpi.md: `down`, `idle`, `changeover`).
DowntimeState = Literal["down", "idle", "changeover"]
DOWNTIME_STATES: frozenset[str] = frozenset(get_args(DowntimeState))

CounterSignal = Literal["total_count", "good_count", "reject_count"]
COUNTER_SIGNALS: tuple[str, ...] = get_args(CounterSignal)
# A machine's counters, as `counters:` declares them: the three above and rework.
Counter = Literal["total_count", "good_count", "reject_count", "rework_count"]

WindowKind = Literal["1m", "15m", "1h", "shift", "day"]
WINDOW_KINDS: tuple[str, ...] = get_args(WindowKind)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# A key shown bare in an error path; any other is quoted (an empty key, one with a dot).
_PLAIN_KEY = re.compile(r"[^\s.\[\]'\"]+")


# Counters are exact 64-bit integers in the core.
MAX_COUNTER: Final = 2**63 - 1


@dataclass(frozen=True)
class CounterLimit:
    """A plausible counter increment: at most `per_s` x seconds + `burst` parts."""

    per_s: float
    burst: int


class ConfigError(Exception):
    """The plant config cannot be used; the message names each key at fault."""


def _parse_hhmm(value: object) -> time:
    # YAML 1.1 reads an unquoted 06:00 as the sexagesimal integer 360; accept that form
    # too rather than make every user quote their times.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return time(value // 60, value % 60)
    if isinstance(value, time):
        return value.replace(second=0, microsecond=0)
    if not isinstance(value, str) or not _HHMM.match(value):
        raise ValueError(f"must be a local time as HH:MM (00:00-23:59), got {value!r}")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


# Calendar boundaries are whole minutes, which lets the core aggregate per minute exactly.
ClockTime = Annotated[
    time,
    Field(description="local wall-clock time, HH:MM"),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Break(_Model):
    start: ClockTime
    end: ClockTime

    _hhmm = field_validator("start", "end", mode="before")(_parse_hhmm)


class Shift(_Model):
    """A recurring shift; `end` before `start` means the shift crosses midnight."""

    name: str = Field(min_length=1)
    start: ClockTime
    end: ClockTime
    days: tuple[Weekday, ...] = WEEKDAYS  # type: ignore[assignment]
    breaks: tuple[Break, ...] = ()
    # Who is paged for this shift's alerts (person ids from alerts.people).
    lead: str | None = None
    backup: str | None = None

    _hhmm = field_validator("start", "end", mode="before")(_parse_hhmm)

    @field_validator("days", mode="before")
    @classmethod
    def _lower_days(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(str(d).lower()[:3] if isinstance(d, str) else d for d in value)
        return value

    @property
    def length_min(self) -> int:
        """Shift length in minutes of wall-clock time (DST is applied later, per date)."""
        start = self.start.hour * 60 + self.start.minute
        end = self.end.hour * 60 + self.end.minute
        return (end - start) % (24 * 60) or 24 * 60

    def offset_min(self, at: time) -> int:
        """Minutes from the shift's start to the wall-clock time `at` within it."""
        start = self.start.hour * 60 + self.start.minute
        return (at.hour * 60 + at.minute - start) % (24 * 60)

    @model_validator(mode="after")
    def _breaks_inside(self) -> Shift:
        spans: list[tuple[int, int]] = []
        for i, brk in enumerate(self.breaks):
            begin, end = self.offset_min(brk.start), self.offset_min(brk.end)
            if end == 0:  # a break that ends at the shift's end
                end = self.length_min
            if not (begin < end <= self.length_min):
                raise ValueError(
                    f"breaks[{i}] ({brk.start:%H:%M}-{brk.end:%H:%M}) must lie inside the "
                    f"shift {self.start:%H:%M}-{self.end:%H:%M}"
                )
            spans.append((begin, end))
        spans.sort()
        for (_, end_a), (begin_b, _) in itertools.pairwise(spans):
            if begin_b < end_a:
                raise ValueError("breaks overlap each other")
        return self


class Product(_Model):
    ideal_cycle_time_s: float = Field(gt=0)


class Machine(_Model):
    id: str
    ideal_cycle_time_s: float | None = Field(default=None, gt=0)
    products: dict[str, Product] = Field(default_factory=dict)
    # Source value -> LinePulse state (PackML state numbers, PLC enums, vendor strings).
    state_map: dict[str, State] = Field(default_factory=dict)
    # Counter maximum before it wraps to 0; a step down is then a rollover, not a reset.
    counter_max: dict[Counter, int] = Field(default_factory=dict)
    # The counters this machine has. They decide how counts combine (good = total - reject,
    # or total = good + reject); when left out, they are learned from the data.
    counters: tuple[Counter, ...] | None = None
    # A down/idle stop shorter than this is a small stop: a performance loss, counted in
    # run time, not downtime. None: the site's `kpi.small_stop_s`.
    small_stop_s: float | None = Field(default=None, ge=0)
    # Rejects within this long after a changeover or a shift start are start-up rejects.
    startup_s: float | None = Field(default=None, ge=0)
    # Counter plausibility (README "Counters"); None: the site's `kpi` value.
    max_rate_factor: float | None = Field(default=None, gt=0)
    max_burst: int | None = Field(default=None, ge=0)
    max_rate_per_s: float | None = Field(default=None, gt=0)
    # This machine's reason tree; None: the site's `reasons`.
    reasons: tuple[ReasonCategory, ...] | None = None
    # What its losses cost, where it differs from its line's (linepulse/costs.py).
    costs: MachineCosts | None = None

    @field_validator("id")
    @classmethod
    def _id_chars(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"must be letters, digits, '_', '.', '-', got {value!r}")
        return value

    @field_validator("state_map", mode="before")
    @classmethod
    def _state_keys_as_text(cls, value: object) -> object:
        # PackML states arrive as numbers; YAML keys may be ints. Normalise to text.
        if isinstance(value, Mapping):
            return {_source_key(k): v for k, v in value.items()}
        return value

    @field_validator("counter_max", mode="before")
    @classmethod
    def _one_max_for_all(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return dict.fromkeys(get_args(Counter), value)
        return value

    @field_validator("counter_max")
    @classmethod
    def _positive_max(cls, value: dict[str, int]) -> dict[str, int]:
        for signal, maximum in value.items():
            if not 0 < maximum <= MAX_COUNTER:
                raise ValueError(f"{signal}: must be > 0 and <= 2^63 - 1, got {maximum}")
        return value

    def min_ideal_cycle_time_s(self) -> float | None:
        """The fastest ideal cycle time configured (its own and its products'), or None."""
        times = [p.ideal_cycle_time_s for p in self.products.values()]
        if self.ideal_cycle_time_s is not None:
            times.append(self.ideal_cycle_time_s)
        return min(times, default=None)

    @field_validator("products", mode="before")
    @classmethod
    def _product_shorthand(cls, value: object) -> object:
        # `products: {sku-a: 0.8}` is shorthand for `{sku-a: {ideal_cycle_time_s: 0.8}}`.
        if isinstance(value, Mapping):
            return {
                str(k): {"ideal_cycle_time_s": v} if isinstance(v, int | float) else v
                for k, v in value.items()
            }
        return value


class Line(_Model):
    id: str
    machines: tuple[Machine, ...] = Field(min_length=1)
    shifts: tuple[Shift, ...] | None = None  # overrides the site's shifts for this line
    days_off: tuple[date, ...] | None = None
    # The machine whose OEE is the line's `oee_constraint`; default: the slowest (largest
    # ideal cycle time), the later one on a tie.
    constraint: str | None = None
    # The machine whose good parts are the line's output; default: the last one.
    output: str | None = None
    target: LineTarget | None = None
    costs: LineCosts | None = None  # rates and budget where they differ from the plant's

    _id = field_validator("id")(Machine._id_chars.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _named_machines(self) -> Line:
        ids = [m.id for m in self.machines]
        for key in ("constraint", "output"):
            value = getattr(self, key)
            if value is not None and value not in ids:
                raise ValueError(f"{key}: {value!r} is not a machine of line {self.id!r}")
        if self.target is not None and self.target.efficiency is not None:
            out = self.output_machine
            if out.ideal_cycle_time_s is None:
                raise ValueError(
                    f"target.efficiency needs an ideal_cycle_time_s on the output machine "
                    f"{out.id!r}"
                )
        return self

    @property
    def output_machine(self) -> Machine:
        return next(m for m in self.machines if m.id == (self.output or self.machines[-1].id))

    @property
    def constraint_machine(self) -> Machine:
        if self.constraint is not None:
            return next(m for m in self.machines if m.id == self.constraint)
        best = self.machines[-1]
        for machine in self.machines:
            ict, top = machine.ideal_cycle_time_s, best.ideal_cycle_time_s
            if ict is not None and (top is None or ict >= top):
                best = machine
        return best


class KpiSettings(_Model):
    """Event-time settings of the windowed core."""

    lateness_s: float = Field(default=10.0, ge=0)
    # How far behind the watermark a late event may still restate a closed window.
    restate_horizon_s: float = Field(default=3600.0, ge=0)
    # Defaults for machines that set none (0: no small stops, no start-up period).
    small_stop_s: float = Field(default=0.0, ge=0)
    startup_s: float = Field(default=0.0, ge=0)
    # Counter plausibility: an increment above max_rate_factor x seconds since the last
    # sample / the fastest ideal cycle time + max_burst (or max_rate_per_s x seconds +
    # max_burst for a machine without an ideal cycle time) is a glitch, not production.
    max_rate_factor: float = Field(default=3.0, gt=0)
    max_burst: int = Field(default=100, ge=0)
    max_rate_per_s: float | None = Field(default=None, gt=0)
    windows: tuple[WindowKind, ...] = WINDOW_KINDS  # type: ignore[assignment]


class Topic(_Model):
    name: str = Field(min_length=1)
    partitions: int = Field(default=6, ge=1)
    replication: int = Field(default=1, ge=1)


# Open-window records of these kinds go out at most this often per key (seconds); the
# others (1m, 15m) within `open_deadline_s`. At 1,000 machines in lines of 20 (1,050 keys
# a kind) that is 1,050 x (5 + 5 + 1 + 0.2 + 0.2) = 11,970 records/s at most, against
# 15,750 with every kind at the deadline (docs/scaling.md has the arithmetic).
OPEN_CADENCE_S: Final[Mapping[WindowKind, float]] = {"1h": 1.0, "shift": 5.0, "day": 5.0}


class KafkaSettings(_Model):
    """Kafka topics and the consumer group; the broker address comes from `--kafka` or
    `LINEPULSE_KAFKA` when `bootstrap` is not set here."""

    bootstrap: str | None = None
    telemetry: Topic = Topic(name="telemetry")
    kpi: Topic = Topic(name="kpi")
    dlq: Topic = Topic(name="telemetry.dlq", partitions=1)
    status: Topic = Topic(name="machine.status", partitions=1)
    # The replicated alerts service's state and leadership (alerts.high_availability):
    # compacted, one partition (whoever holds it in the group is the active instance).
    alerts: Topic = Topic(name="alerts.state", partitions=1)
    # Operators' reason corrections of stops and their audit trail, one record a
    # correction: compacted; every API replica rebuilds its stops' codes and audit from it.
    reasons: Topic = Topic(name="stops.reasons", partitions=1)
    # The control charts' subgroups (`spc:` with fixed limits), one record each, from the
    # KPI worker that owns the machine's line: compacted (keyed by chart and end).
    spc: Topic = Topic(name="spc.points", partitions=1)
    group: str = Field(default="linepulse-kpi", min_length=1)
    # Where workers keep partition checkpoints: shared by the workers of one group. A
    # relative path is under the data directory (linepulse/data_dir.py).
    state_dir: Path = Path("kpi/checkpoints")
    # Open-window records: one whose window changed is on the kpi topic at most
    # `open_deadline_s` later (the changes in between coalesce: the latest wins), except the
    # kinds in `open_cadence_s`, whose records go out at most that often per key: a shift
    # or day record moves little in a second, and a plant has as many of them as 1m ones.
    # Kinds given there replace their default (OPEN_CADENCE_S); finals go out at once.
    open_deadline_s: float = Field(default=0.2, ge=0)
    open_cadence_s: dict[WindowKind, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(OPEN_CADENCE_S)
    )
    # The single interval of earlier versions: when set, the open records of every kind go
    # out at most this often per key (0: with every batch), as they did, and the two above
    # are not used (a dumped config, which holds all three, loads as it was).
    open_interval_s: float | None = Field(default=None, ge=0)
    # A restarted worker re-reads at most this much; shorter costs more state writes.
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    # TLS and SASL for every client the services make (linepulse/bus/security.py).
    security: KafkaSecurity = KafkaSecurity()

    @field_validator("open_cadence_s", mode="before")
    @classmethod
    def _over_default_cadences(cls, value: object) -> object:
        """Kinds given replace their default; the others keep theirs."""
        return {**OPEN_CADENCE_S, **value} if isinstance(value, Mapping) else value

    def open_cadence(self, kind: WindowKind) -> float:
        """Seconds, at least, between two open-window records of one key of window `kind`,
        and at most between a change of such a window and its record on the kpi topic."""
        if self.open_interval_s is not None:
            return self.open_interval_s
        return self.open_cadence_s.get(kind, self.open_deadline_s)


class PlantConfig(_Model):
    site: str = Field(min_length=1)
    timezone: str = "UTC"
    day_start: ClockTime = time(0, 0)
    shifts: tuple[Shift, ...] = ()
    days_off: tuple[date, ...] = ()
    state_map: dict[str, State] = Field(default_factory=dict)
    # The reason tree of every machine that has none of its own.
    reasons: tuple[ReasonCategory, ...] = ()
    lines: tuple[Line, ...] = Field(min_length=1)
    kpi: KpiSettings = KpiSettings()
    kafka: KafkaSettings = KafkaSettings()
    sources: Sources = Sources()
    ingest: IngestSettings = IngestSettings()
    alerts: AlertSettings = AlertSettings()
    # The KPI query API's tokens, limits, CORS and TLS (linepulse/http/settings.py).
    api: ApiSecurity = ApiSecurity()
    # What losses cost and the budget (linepulse/costs.py, docs/costs.md).
    costs: PlantCosts = PlantCosts()
    # Control charts of process signals (linepulse/spc.py, docs/spc.md).
    spc: tuple[SpcChart, ...] = ()

    _hhmm = field_validator("day_start", mode="before")(_parse_hhmm)

    @field_validator("state_map", mode="before")
    @classmethod
    def _state_keys_as_text(cls, value: object) -> object:
        return Machine._state_keys_as_text(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. 'Europe/Berlin')") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PlantConfig:
        seen_lines: set[str] = set()
        seen_machines: dict[str, str] = {}
        try:
            check_tree(self.reasons)
        except ValueError as error:
            raise ValueError(f"reasons: {error}") from None
        for li, line in enumerate(self.lines):
            if line.id in seen_lines:
                raise ValueError(f"lines[{li}].id: duplicate line id {line.id!r}")
            seen_lines.add(line.id)
            for mi, machine in enumerate(line.machines):
                if machine.id in seen_machines:
                    raise ValueError(
                        f"lines[{li}].machines[{mi}].id: machine {machine.id!r} is already "
                        f"on line {seen_machines[machine.id]!r}; machine ids are plant-wide"
                    )
                seen_machines[machine.id] = line.id
                if machine.reasons is not None:
                    try:
                        check_tree(machine.reasons)
                    except ValueError as error:
                        raise ValueError(f"lines[{li}].machines[{mi}].reasons: {error}") from None
            shifts = line.shifts if line.shifts is not None else self.shifts
            where = f"lines[{li}].shifts" if line.shifts is not None else "shifts"
            _check_shifts_disjoint(shifts, where)
        _check_sources(self.sources, seen_machines)
        _check_alerts(self, seen_machines)
        _check_spc(self.spc, seen_machines)
        return self

    # -- lookups -----------------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def machines(self) -> dict[str, tuple[Line, Machine]]:
        return {m.id: (line, m) for line in self.lines for m in line.machines}

    def shifts_for(self, line: Line) -> tuple[Shift, ...]:
        return line.shifts if line.shifts is not None else self.shifts

    def days_off_for(self, line: Line) -> tuple[date, ...]:
        return line.days_off if line.days_off is not None else self.days_off

    def state_map_for(self, machine: Machine) -> dict[str, str]:
        return {**self.state_map, **machine.state_map}

    def reasons_for(self, machine: Machine) -> tuple[ReasonCategory, ...]:
        return machine.reasons if machine.reasons is not None else self.reasons

    def planned_reasons(self, machine: Machine) -> frozenset[str]:
        """Codes that make a stop planned time on this machine."""
        return frozenset(c for cat in self.reasons_for(machine) if cat.planned for c in cat.codes)

    def small_stop_ms(self, machine: Machine) -> int:
        value = machine.small_stop_s if machine.small_stop_s is not None else self.kpi.small_stop_s
        return round(value * 1000)

    def startup_ms(self, machine: Machine) -> int:
        value = machine.startup_s if machine.startup_s is not None else self.kpi.startup_s
        return round(value * 1000)

    def counter_limit(self, machine: Machine) -> CounterLimit | None:
        """How many parts a counter of this machine may plausibly add in a time span.

        A machine's own `max_rate_per_s` wins; else its fastest ideal cycle time with
        `max_rate_factor`; else the site's `max_rate_per_s`; else it is not checked.
        """
        kpi = self.kpi
        burst = machine.max_burst if machine.max_burst is not None else kpi.max_burst
        factor = machine.max_rate_factor or kpi.max_rate_factor
        ict = machine.min_ideal_cycle_time_s()
        if machine.max_rate_per_s is not None:
            return CounterLimit(machine.max_rate_per_s, burst)
        if ict is not None:
            return CounterLimit(factor / ict, burst)
        if kpi.max_rate_per_s is not None:
            return CounterLimit(kpi.max_rate_per_s, burst)
        return None


def _check_alerts(plant: PlantConfig, machines: dict[str, str]) -> None:
    """Every person, channel, line and machine the alerts section names exists."""
    alerts = plant.alerts
    channels = [c.id for c in alerts.channels]
    for cid in channels:
        if channels.count(cid) > 1:
            raise ValueError(f"alerts.channels: channel id {cid!r} is used twice")
    for pid, person in alerts.people.items():
        for cid in person.channels:
            if cid not in channels:
                raise ValueError(f"alerts.people.{pid}.channels: unknown channel {cid!r}")
    for cid in alerts.broadcast:
        if cid not in channels:
            raise ValueError(f"alerts.broadcast: unknown channel {cid!r}")
    if alerts.manager is not None and alerts.manager not in alerts.people:
        raise ValueError(f"alerts.manager: unknown person {alerts.manager!r}")
    names = [r.name for r in alerts.rules]
    lines = {line.id for line in plant.lines}
    charts = {chart.name: chart for chart in plant.spc}
    for ri, rule in enumerate(alerts.rules):
        if rule.spc is None:
            continue
        chart = charts.get(rule.spc)
        if chart is None:
            said = ", ".join(charts) or "none"
            raise ValueError(f"alerts.rules[{ri}].spc: no chart {rule.spc!r} in spc: ({said})")
        if chart.limits is None:
            raise ValueError(
                f"alerts.rules[{ri}].spc: chart {rule.spc!r} has no fixed limits; a chart "
                "followed live needs them (`linepulse spc` computes them from a baseline)"
            )
    if alerts.reports is not None:
        lists = {"alerts.reports.to": alerts.reports.to}
        for line, to in alerts.reports.lines.items():
            if line not in lines:
                raise ValueError(f"alerts.reports.lines: unknown line {line!r}")
            lists[f"alerts.reports.lines.{line}"] = to
        shift_names = {s.name for s in plant.shifts} | {
            s.name for line in plant.lines for s in line.shifts or ()
        }
        for name, to in alerts.reports.shifts.items():
            if name not in shift_names:
                said = ", ".join(sorted(shift_names)) or "none"
                raise ValueError(
                    f"alerts.reports.shifts: unknown shift {name!r} (there are: {said})"
                )
            lists[f"alerts.reports.shifts.{name}"] = to
        for where, to in lists.items():
            for who in to:
                if who not in (*alerts.people, NEXT_LEAD, MANAGER):
                    raise ValueError(
                        f"{where}: {who!r} is neither a person (alerts.people) nor "
                        f"{NEXT_LEAD!r} or {MANAGER!r}"
                    )
        for who in alerts.reports.plant.to:
            if who not in (*alerts.people, MANAGER):
                raise ValueError(
                    f"alerts.reports.plant.to: {who!r} is neither a person (alerts.people) "
                    f"nor {MANAGER!r} (a plant report follows no one shift)"
                )
    for ri, rule in enumerate(alerts.rules):
        if names.count(rule.name) > 1:
            raise ValueError(f"alerts.rules[{ri}].name: rule name {rule.name!r} is used twice")
        for line in rule.scope.lines:
            if line not in lines:
                raise ValueError(f"alerts.rules[{ri}].scope.lines: unknown line {line!r}")
        for machine in rule.scope.machines:
            if machine not in machines:
                raise ValueError(f"alerts.rules[{ri}].scope.machines: unknown machine {machine!r}")
    check_forecast_rules(plant)
    shift_sets = [("shifts", plant.shifts)] + [
        (f"lines[{li}].shifts", line.shifts)
        for li, line in enumerate(plant.lines)
        if line.shifts is not None
    ]
    for where, shifts in shift_sets:
        for si, shift in enumerate(shifts):
            for role in ("lead", "backup"):
                pid = getattr(shift, role)
                if pid is not None and pid not in alerts.people:
                    raise ValueError(f"{where}[{si}].{role}: unknown person {pid!r}")


def _check_spc(charts: tuple[SpcChart, ...], machines: Mapping[str, str]) -> None:
    """Each chart of a machine the plant has, and one chart per machine and signal."""
    seen: set[tuple[str, str]] = set()
    for ci, chart in enumerate(charts):
        if chart.machine not in machines:
            raise ValueError(f"spc[{ci}].machine: unknown machine {chart.machine!r}")
        if (chart.machine, chart.signal) in seen:
            raise ValueError(f"spc[{ci}]: {chart.name} is charted twice")
        seen.add((chart.machine, chart.signal))


def _check_sources(sources: Sources, machines: dict[str, str]) -> None:
    """Source ids are unique and every machine a source names is on a line."""
    ids = sources.ids()
    for sid in ids:
        if ids.count(sid) > 1:
            raise ValueError(f"sources: source id {sid!r} is used twice")
    served: dict[str, str] = {}
    for si, opcua in enumerate(sources.opcua):
        for mi, entry in enumerate(opcua.machines):
            where = f"sources.opcua[{si}].machines[{mi}].machine"
            if entry.machine not in machines:
                raise ValueError(f"{where}: unknown machine {entry.machine!r}")
            if entry.machine in served:
                raise ValueError(
                    f"{where}: machine {entry.machine!r} is already read from "
                    f"{served[entry.machine]!r}"
                )
            served[entry.machine] = opcua.id
    for si, mqtt in enumerate(sources.mqtt):
        for mi, machine in enumerate(mqtt.machines):
            where = f"sources.mqtt[{si}].machines[{mi}]"
            if machine not in machines:
                raise ValueError(f"{where}: unknown machine {machine!r}")
            if machine in served:
                other = served[machine]
                raise ValueError(f"{where}: machine {machine!r} is already read from {other!r}")
            served[machine] = mqtt.id
        if mqtt.sparkplug is not None:
            for device, machine in mqtt.sparkplug.devices.items():
                if machine not in machines:
                    where = f"sources.mqtt[{si}].sparkplug.devices.{device}"
                    raise ValueError(f"{where}: unknown machine {machine!r}")


def _source_key(key: object) -> str:
    if isinstance(key, bool):
        return str(key).lower()
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


def _check_shifts_disjoint(shifts: tuple[Shift, ...], where: str) -> None:
    names = [s.name for s in shifts]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{where}: shift name {name!r} is used twice")
    # Two shifts that run on the same weekday must not overlap in wall-clock time.
    # Minutes of the week make shifts over midnight and Sunday->Monday wrap simple.
    week = 7 * 24 * 60
    occupied: dict[int, str] = {}
    for shift in shifts:
        start = shift.start.hour * 60 + shift.start.minute
        for day in shift.days:
            base = WEEKDAYS.index(day) * 24 * 60 + start
            for minute in range(base, base + shift.length_min):
                other = occupied.setdefault(minute % week, shift.name)
                if other != shift.name:
                    raise ValueError(
                        f"{where}: shifts {other!r} and {shift.name!r} overlap on {day}"
                    )


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the key as `lines[0].machines[3].key`."""
    items = error.errors()
    locs = [tuple(item["loc"]) for item in items]
    lines = []
    for item, loc in zip(items, locs, strict=True):
        # pydantic also reports a list as too short when its only items failed: noise.
        if item["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        if item["type"] == "invalid_key":  # a key that is not text (YAML's `?` or `null:`)
            loc = loc[:-1]  # is no name to show: name the mapping that holds it
        path = ""
        for part in loc:
            if part == "[key]":  # pydantic's marker for "the key itself", already named
                continue
            if isinstance(part, int):
                path += f"[{part}]"
            elif not _PLAIN_KEY.fullmatch(part):  # "", a newline, "a.b": quoted, or unreadable
                path += f"[{part!r}]"
            else:
                path += f".{part}" if path else part
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and indentation)"
        got = item.get("input")
        scalar = got is None or isinstance(got, str | int | float | bool)
        if (
            item["type"] not in {"extra_forbidden", "missing"}
            and scalar
            and repr(got) not in message
        ):
            message += f", got {got!r}"
        lines.append(f"{path or '(top level)'}: {message}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> PlantConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {data!r}")
    try:
        plant = PlantConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid:\n{format_validation_error(error)}") from None
    for warning in config_warnings(plant):
        log.warning("%s: %s", source, warning)
    return plant


def config_warnings(plant: PlantConfig) -> list[str]:
    """What a valid config leaves the KPIs without, one sentence each, by key.

    A machine with no ideal cycle time (its own or a product's) can still send one as the
    `ideal_cycle_time_s` signal; until it does, every part it makes has none, so its
    performance and OEE (and NEE, TEEP and the losses built on them) are null
    (services/kpi/core/oee.py), and so are its line's, whose figures sum its machines."""
    warnings = []
    for i, line in enumerate(plant.lines):
        for j, machine in enumerate(line.machines):
            if machine.min_ideal_cycle_time_s() is None:
                warnings.append(
                    f"lines[{i}].machines[{j}] ({machine.id}) has no ideal_cycle_time_s "
                    "(nor products with one): in a window where it counts parts, its "
                    "performance, OEE, NEE, TEEP and loss breakdown, and those of line "
                    f"{line.id!r}, are null unless it sends an ideal_cycle_time_s signal; "
                    "availability and quality are computed"
                )
    return warnings


def load_config(path: str | Path) -> PlantConfig:
    """Read and validate a plant YAML file; raise `ConfigError` naming each bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read plant config {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        where = f"byte {error.start}"
        raise ConfigError(f"{path} is not UTF-8 text ({where}): save it as UTF-8") from None
    try:
        # libyaml's parser when PyYAML has it: the same safe constructors, about 4x faster
        # (a 1,000-machine plant loads in ~0.17 s instead of ~0.7 s, at every CLI start).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(data, str(path))
