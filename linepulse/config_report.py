"""What a plant config means, in words an engineer checks before the first start.

`linepulse check` prints this: the lines and machines with the ideal cycle times and
counters the KPIs will use, the shifts of the current week in plant-local time and in UTC,
the time zone's DST changes in the next twelve months and the shifts they lengthen or
shorten, who is paged on which shift through which channel, and warnings for what loads
but will not give a KPI (a machine without an ideal cycle time, a machine no source reads).

Pure: the moment is an argument, and the shift calendar and the paging chain come from the
services' own `Duty` (passed in as `DutyView`), so the report shows the spans the KPI core
computes and the people the alerts service pages, not a second reading of the YAML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from linepulse.config import Line, PlantConfig, config_warnings

HOUR_S = 3600
DST_HORIZON_DAYS = 365


class SpanView(Protocol):
    """One shift occurrence, as `linepulse.calendar.ShiftSpan` has it (epoch ms)."""

    @property
    def name(self) -> str: ...
    @property
    def day(self) -> date: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def breaks(self) -> tuple[tuple[int, int], ...]: ...


class CalendarView(Protocol):
    def spans_on(self, line_id: str, day: date) -> Sequence[SpanView]: ...
    def spans(self, line_id: str, start: int, end: int) -> Sequence[SpanView]: ...


class DutyView(Protocol):
    """`services.alerts.routing.Duty`: the calendar and the paging chain at a moment."""

    @property
    def calendar(self) -> CalendarView: ...
    def chain(self, line: str | None, now: int) -> list[str]: ...


@dataclass(frozen=True)
class MachineView:
    """A machine as the KPI core sees it. `ideal_cycle_time_s` None: none of its own
    (`products` may still give one per product); `source` None: read by no source."""

    id: str
    ideal_cycle_time_s: float | None
    products: dict[str, float]
    counters: tuple[str, ...] | None  # None: learned from the data
    roles: tuple[str, ...]  # "output" (the line's good parts), "constraint" (its OEE)
    source: str | None


@dataclass(frozen=True)
class LineView:
    id: str
    calendar: str  # "site" or "own": whose shifts and days off apply
    machines: tuple[MachineView, ...]


@dataclass(frozen=True)
class ShiftTime:
    """One shift occurrence of the week. `day` is its production date (a night shift
    belongs to the date it starts on); times are aware datetimes, local and UTC."""

    lines: tuple[str, ...]
    day: date
    name: str
    local_start: datetime
    local_end: datetime
    utc_start: datetime
    utc_end: datetime
    length_min: int  # wall-clock minutes actually elapsed (DST applied)
    planned_min: int  # less its breaks
    notes: tuple[str, ...]  # "crosses midnight", "DST: 7 h instead of 8 h"


@dataclass(frozen=True)
class DayOff:
    lines: tuple[str, ...]
    day: date


@dataclass(frozen=True)
class DstChange:
    """A change of the zone's UTC offset; `affected` names the shift occurrences over it."""

    at_utc: datetime
    local_before: datetime  # the change's instant on the wall clock before it (02:00)
    local_after: datetime  # the same instant, after it
    offset_before: str  # "+01:00"
    offset_after: str
    affected: tuple[str, ...]


@dataclass(frozen=True)
class Page:
    """One step of a shift's paging chain: who, and on which channels ("id (type)")."""

    step: str  # "lead", "escalation 1", "escalation 2"
    person: str
    name: str
    channels: tuple[str, ...]


@dataclass(frozen=True)
class Routing:
    """Who is paged for an alert of `lines` during `shift` ("(off shift)" outside shifts)."""

    lines: tuple[str, ...]
    shift: str
    pages: tuple[Page, ...]


@dataclass(frozen=True)
class Report:
    site: str
    timezone: str
    now_local: datetime
    week_start: date  # the Monday of the current local week
    lines: tuple[LineView, ...]
    shifts: tuple[ShiftTime, ...]
    days_off: tuple[DayOff, ...]
    dst: tuple[DstChange, ...]
    routing: tuple[Routing, ...]
    broadcast: tuple[str, ...]  # channels every page also goes to, "id (type)"
    escalate_after: tuple[str, ...]  # distinct escalation delays of the rules ("15m")
    rules: int
    warnings: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: dates and datetimes in ISO 8601 (RFC 3339)."""
        converted: dict[str, Any] = _jsonable(asdict(self))
        return converted


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# -- building ------------------------------------------------------------------------------


def build_report(plant: PlantConfig, duty: DutyView, now: datetime) -> Report:
    """The report at `now` (aware); `duty` is `Duty(plant)` from services.alerts.routing."""
    zone = plant.zone
    now_local = now.astimezone(zone)
    week_start = now_local.date() - timedelta(days=now_local.weekday())
    groups = _calendar_groups(plant)
    shifts: list[ShiftTime] = []
    days_off: list[DayOff] = []
    routing: list[Routing] = []
    for lines in groups:
        line = lines[0]
        ids = tuple(li.id for li in lines)
        off = set(plant.days_off_for(line))
        first_of: dict[str, SpanView] = {}
        for offset in range(7):
            day = week_start + timedelta(days=offset)
            if day in off:
                days_off.append(DayOff(ids, day))
            for span in duty.calendar.spans_on(line.id, day):
                shifts.append(_shift_time(plant, line, ids, span, zone))
                first_of.setdefault(span.name, span)
        for shift in plant.shifts_for(line):
            first = first_of.get(shift.name)
            if first is None:
                routing.append(Routing(ids, f"{shift.name} (not on this week)", ()))
                continue
            chain = duty.chain(line.id, first.start)
            routing.append(Routing(ids, shift.name, _pages(plant, chain)))
        if plant.shifts_for(line):
            routing.append(Routing(ids, "(off shift)", _pages(plant, duty.chain(None, 0))))
    shifts.sort(key=lambda s: (s.utc_start, s.lines))
    now_ms = round(now.timestamp() * 1000)
    dst = [
        DstChange(
            at_utc=_utc(at),
            local_before=_utc(at).astimezone(timezone(_offset_of(zone, at - 1))),
            local_after=_utc(at).astimezone(zone),
            offset_before=_offset(zone, at - 1),
            offset_after=_offset(zone, at),
            affected=_spans_over(plant, duty.calendar, groups, at),
        )
        for at in zone_changes(zone, now_ms, now_ms + DST_HORIZON_DAYS * 86_400_000)
    ]
    delays = sorted({rule.escalate_after for rule in plant.alerts.rules})
    return Report(
        site=plant.site,
        timezone=plant.timezone,
        now_local=now_local,
        week_start=week_start,
        lines=tuple(_line_view(plant, line, line.shifts is not None) for line in plant.lines),
        shifts=tuple(shifts),
        days_off=tuple(days_off),
        dst=tuple(dst),
        routing=tuple(routing),
        broadcast=tuple(_channel(plant, c) for c in plant.alerts.broadcast),
        escalate_after=tuple(_duration(s) for s in delays),
        rules=len(plant.alerts.rules),
        warnings=tuple(warnings(plant, routing)),
    )


def _calendar_groups(plant: PlantConfig) -> list[list[Line]]:
    """Lines that share one calendar (the same shifts and days off), in config order."""
    groups: dict[tuple[object, object], list[Line]] = {}
    for line in plant.lines:
        key = (plant.shifts_for(line), plant.days_off_for(line))
        groups.setdefault(key, []).append(line)
    return list(groups.values())


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _offset_of(zone: ZoneInfo, ms: int) -> timedelta:
    offset = _utc(ms).astimezone(zone).utcoffset()
    return offset if offset is not None else timedelta(0)


def _offset(zone: ZoneInfo, ms: int) -> str:
    text = _utc(ms).astimezone(zone).strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def _shift_time(
    plant: PlantConfig, line: Line, ids: tuple[str, ...], span: SpanView, zone: ZoneInfo
) -> ShiftTime:
    shift = next(s for s in plant.shifts_for(line) if s.name == span.name)
    length = (span.end - span.start) // 60_000
    planned = length - sum(end - begin for begin, end in span.breaks) // 60_000
    local_start, local_end = _utc(span.start).astimezone(zone), _utc(span.end).astimezone(zone)
    notes = []
    if local_end.date() != local_start.date():
        notes.append("crosses midnight")
    if length != shift.length_min:
        notes.append(f"DST: {_hours(length)} instead of {_hours(shift.length_min)}")
    return ShiftTime(
        lines=ids,
        day=span.day,
        name=span.name,
        local_start=local_start,
        local_end=local_end,
        utc_start=_utc(span.start),
        utc_end=_utc(span.end),
        length_min=length,
        planned_min=planned,
        notes=tuple(notes),
    )


def _hours(minutes: int) -> str:
    return f"{minutes // 60} h" + (f" {minutes % 60} min" if minutes % 60 else "")


def zone_changes(zone: ZoneInfo, start_ms: int, end_ms: int) -> list[int]:
    """The instants (epoch ms, whole minutes) in [start_ms, end_ms) where the zone's UTC
    offset changes. zoneinfo exposes no transition list, so the offset is sampled hourly
    (zones change at most a few times a year, never twice within an hour) and each change
    narrowed to its minute by bisection."""
    hour_ms, minute_ms = HOUR_S * 1000, 60_000

    def offset(ms: int) -> timedelta | None:
        return _utc(ms).astimezone(zone).utcoffset()

    out: list[int] = []
    at = start_ms - start_ms % minute_ms
    before = offset(at)
    while at < end_ms:
        step = min(at + hour_ms, end_ms)
        after = offset(step)
        if after != before:
            lo, hi = at, step  # offset(lo) == before, offset(hi) == after
            while hi - lo > minute_ms:
                mid = lo + (hi - lo) // 2 // minute_ms * minute_ms or lo + minute_ms
                if offset(mid) == before:
                    lo = mid
                else:
                    hi = mid
            if start_ms <= hi < end_ms:
                out.append(hi)
            before = after
        at = step
    return out


def _spans_over(
    plant: PlantConfig, calendar: CalendarView, groups: list[list[Line]], at: int
) -> tuple[str, ...]:
    """Shift occurrences that run over the instant `at`, as "<shift> of <date> (lines)"."""
    out = []
    for lines in groups:
        ids = ", ".join(li.id for li in lines)
        for span in calendar.spans(lines[0].id, at, at + 1):
            length = (span.end - span.start) // 60_000
            out.append(f"{span.name} of {span.day:%a %Y-%m-%d} ({ids}): {_hours(length)}")
    return tuple(out)


def _line_view(plant: PlantConfig, line: Line, own_calendar: bool) -> LineView:
    readers = _readers(plant)
    output, constraint = line.output_machine.id, line.constraint_machine.id
    return LineView(
        id=line.id,
        calendar="own" if own_calendar else "site",
        machines=tuple(
            MachineView(
                id=m.id,
                ideal_cycle_time_s=m.ideal_cycle_time_s,
                products={k: p.ideal_cycle_time_s for k, p in m.products.items()},
                counters=m.counters,
                roles=tuple(
                    role
                    for role, mid in (("output", output), ("constraint", constraint))
                    if mid == m.id
                ),
                source=readers.get(m.id),
            )
            for m in line.machines
        ),
    )


def _readers(plant: PlantConfig) -> dict[str, str]:
    """machine -> the id of the source that reads it, as the config names it."""
    out: dict[str, str] = {}
    for opcua in plant.sources.opcua:
        for entry in opcua.machines:
            out[entry.machine] = opcua.id
    for mqtt in plant.sources.mqtt:
        for machine in mqtt.machines:
            out[machine] = mqtt.id
        if mqtt.sparkplug is not None:
            for machine in mqtt.sparkplug.devices.values():
                out.setdefault(machine, mqtt.id)
    return out


def _channel(plant: PlantConfig, channel_id: str) -> str:
    kind = next(c.type for c in plant.alerts.channels if c.id == channel_id)
    return f"{channel_id} ({kind})"


def _pages(plant: PlantConfig, chain: list[str]) -> tuple[Page, ...]:
    """The chain as the alerts service walks it: the first person at once, each next one
    after a rule's `escalate_after` without an ack (two escalations at most)."""
    people = plant.alerts.people
    steps = ("first page", "escalation 1", "escalation 2")
    return tuple(
        Page(step, pid, people[pid].name, tuple(_channel(plant, c) for c in people[pid].channels))
        for step, pid in zip(steps, chain, strict=False)
    )


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def warnings(plant: PlantConfig, routing: Sequence[Routing] = ()) -> list[str]:
    """What loads but will not give what a user expects, each naming the key."""
    out = config_warnings(plant)  # the load-time warnings (no ideal cycle time)
    readers = _readers(plant)
    # An MQTT source with topics but no machine list accepts any configured machine.
    open_mqtt = any(s.topics and not s.machines for s in plant.sources.mqtt)
    has_sources = bool(plant.sources.opcua or plant.sources.mqtt)
    for li, line in enumerate(plant.lines):
        for mi, machine in enumerate(line.machines):
            where = f"lines[{li}].machines[{mi}] ({machine.id})"
            if has_sources and not open_mqtt and machine.id not in readers:
                out.append(f"{where}: no source reads it (sources.opcua, sources.mqtt)")
    if not has_sources:
        out.append("sources: none configured; `linepulse ingest` has nothing to read")
    # An OPC-UA machine publishes only its configured nodes: a chart of another signal
    # never gets a sample (MQTT and Sparkplug publish whatever the machine sends).
    nodes = {
        entry.machine: entry.nodes for source in plant.sources.opcua for entry in source.machines
    }
    for ci, chart in enumerate(plant.spc):
        if chart.machine in nodes and chart.signal not in nodes[chart.machine]:
            out.append(
                f"spc[{ci}] ({chart.name}): {chart.machine}'s OPC-UA source has no "
                f"{chart.signal!r} node, so the chart gets no sample"
            )
    if not plant.shifts and any(line.shifts is None for line in plant.lines):
        out.append("shifts: none; every hour of every day is planned production time")
    if plant.alerts.rules:
        for route in routing:
            if not route.pages and "not on this week" not in route.shift:
                out.append(
                    f"alerts: nobody is paged for {', '.join(route.lines)} during "
                    f"{route.shift} (no lead, backup or alerts.manager)"
                )
    return out


# -- text ----------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """The report for a terminal: short sections, aligned columns."""
    out = [
        f"site {report.site}, time zone {report.timezone} "
        f"(now {report.now_local:%a %Y-%m-%d %H:%M} local, UTC{_zone_offset(report.now_local)})",
        "",
        "Lines and machines",
    ]
    rows = [["line", "machine", "ideal cycle", "counters", "role", "source"]]
    for line in report.lines:
        for machine in line.machines:
            rows.append(
                [
                    line.id,
                    machine.id,
                    _ideal(machine),
                    ", ".join(machine.counters) if machine.counters is not None else "learned",
                    ", ".join(machine.roles),
                    machine.source or "-",
                ]
            )
    out += _table(rows)
    end = report.week_start + timedelta(days=6)
    out += ["", f"Shifts this week ({report.week_start:%a %Y-%m-%d} to {end:%a %Y-%m-%d})"]
    if report.shifts:
        rows = [["lines", "day", "shift", "local", "UTC", "planned", "notes"]]
        for s in report.shifts:
            rows.append(
                [
                    ", ".join(s.lines),
                    f"{s.day:%a %m-%d}",
                    s.name,
                    _span(s.local_start, s.local_end),
                    _span(s.utc_start, s.utc_end),
                    _hours(s.planned_min),
                    "; ".join(s.notes),
                ]
            )
        out += _table(rows)
    else:
        out.append("  no shifts: every hour is planned production time")
    for off in report.days_off:
        out.append(f"  day off {off.day:%a %Y-%m-%d}: {', '.join(off.lines)}")
    out += ["", f"DST changes in the next {DST_HORIZON_DAYS // 30} months"]
    if not report.dst:
        out.append(f"  none in {report.timezone}")
    for change in report.dst:
        out.append(
            f"  {change.at_utc:%Y-%m-%d %H:%M} UTC: local {change.local_before:%H:%M} "
            f"(UTC{change.offset_before}) -> {change.local_after:%H:%M} "
            f"(UTC{change.offset_after})"
        )
        out += [f"    {text}" for text in change.affected]
    out += ["", "Alert routing"]
    if report.rules == 0:
        out.append("  no alert rules: nobody is paged")
    else:
        delays = ", ".join(report.escalate_after)
        out.append(f"  {report.rules} rules; unacknowledged pages escalate after {delays}")
        rows = [["lines", "shift", "step", "person", "channels"]]
        for route in report.routing:
            if not route.pages:
                rows.append([", ".join(route.lines), route.shift, "-", "nobody", ""])
            for page in route.pages:
                rows.append(
                    [
                        ", ".join(route.lines),
                        route.shift,
                        page.step,
                        f"{page.person} ({page.name})",
                        ", ".join(page.channels),
                    ]
                )
        out += _table(rows)
        if report.broadcast:
            out.append(f"  every page also goes to: {', '.join(report.broadcast)}")
    out += ["", f"Warnings ({len(report.warnings)})"]
    out += [f"  {w}" for w in report.warnings] or ["  none"]
    return "\n".join(out)


def _zone_offset(moment: datetime) -> str:
    text = moment.strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def _ideal(machine: MachineView) -> str:
    parts = []
    if machine.ideal_cycle_time_s is not None:
        parts.append(f"{machine.ideal_cycle_time_s:g} s")
    if machine.products:
        low, high = min(machine.products.values()), max(machine.products.values())
        span = f"{low:g} s" if low == high else f"{low:g}-{high:g} s"
        count = len(machine.products)
        parts.append(f"{span} by product ({count} product{'s' if count > 1 else ''})")
    return "; ".join(parts) or "NONE"


def _span(start: datetime, end: datetime) -> str:
    days = (end.date() - start.date()).days
    return f"{start:%H:%M}-{end:%H:%M}" + (f" (+{days}d)" if days else "")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
