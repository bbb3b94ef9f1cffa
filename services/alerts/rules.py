"""What a rule looks at and whether it is breached: observations, targets, readings.

The engine feeds `Observations` with KPI records and telemetry samples; a rule is read
over each `Target` in its scope into a `Reading`: the value, whether it breaches the
trigger, and whether it is back on the good side of `clear` (the hysteresis level that
keeps a value hovering at the threshold from flapping). A forecast rule reads a line's
open shift record: its projected output against the shift's target. Pure: time is
passed in.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from linepulse.alerting import DATA_FIELDS, Rule, elapsed_needed_s, forecast_lines
from linepulse.config import PlantConfig

# A KPI record of a window that ended longer ago than this is history, not now: one the
# KPI worker publishes while it works off a backlog (a simulated plant's past, a spool
# drained after an outage) or restates late. Its figures neither start, promote, cancel
# nor resolve an alert, or a morning's closed hour would page at noon as if fresh. A
# window's final record comes once the watermark passes its end plus the KPI lateness
# (seconds), and the next window's records supersede it at once; 5 min is ample.
PAST_AFTER_MS = 5 * 60_000


@dataclass(frozen=True)
class ChartNews:
    """A live chart's subgroups since the last evaluation: the newest one's end (epoch ms)
    and each rule broken with the end of the subgroup that broke it."""

    newest: int
    broken: tuple[tuple[int, str], ...] = ()

    def broken_since(self, since: int) -> tuple[str, ...]:
        """The rules broken by subgroups that ended at or after `since`, once each."""
        return tuple(dict.fromkeys(rule for end, rule in self.broken if end >= since))


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Target:
    """One thing a rule watches: a machine, or a line's own record (`machine` None)."""

    line: str
    machine: str | None


@dataclass(frozen=True)
class Reading:
    """A rule read over one target at one instant.

    `breach` and `recovered` are None when the value is unknown (no record yet, a ratio
    whose denominator is zero, no sample, a KPI record below the rule's `min_coverage`):
    an unknown value changes no alert's state; so is a KPI record of a window long past.
    `over`: what the rule watched is gone (a forecast's shift has ended): an open alert
    resolves at once. `fields`: more summary template fields (a forecast's target, ...).
    """

    value: float | str | None
    breach: bool | None
    recovered: bool | None
    over: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)


UNKNOWN = Reading(None, None, None)


@dataclass(frozen=True)
class Sample:
    ts: int
    num: float | None
    text: str | None


@dataclass
class Observations:
    """The latest of everything rules read, with the keys changed since the last save.

    Records: the latest record of the current window per (line, machine, window): the
    highest `window_start`, then the highest `revision`. Samples: the latest value per
    (machine, signal). Heard: the event time of the latest sample per machine, epoch ms.
    """

    windows: frozenset[str]
    records: dict[tuple[str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    samples: dict[tuple[str, str], Sample] = field(default_factory=dict)
    heard: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    # Per live chart (machine/signal): its newest subgroups since the engine last
    # evaluated. Not saved: a restarted chart starts over.
    spc: dict[str, ChartNews] = field(default_factory=dict)

    def add_record(self, record: Mapping[str, Any]) -> None:
        window = record.get("window")
        line = record.get("line")
        if window not in self.windows or not isinstance(line, str):
            return
        key = (line, record.get("machine"), str(window))
        rank = _record_rank(record)
        current = self.records.get(key)
        if current is not None and _record_rank(current) > rank:
            return  # an older window, or an older revision of this one
        self.records[key] = dict(record)
        self.dirty.add(_record_key(key))

    def add_sample(
        self, ts: int, machine: str, signal: str, num: float | None, text: str | None, now: int
    ) -> None:
        current = self.samples.get((machine, signal))
        if current is None or ts >= current.ts:
            self.samples[(machine, signal)] = Sample(ts, num, text)
            self.dirty.add(f"s|{machine}|{signal}")
        # A source clock ahead of ours must not hide a silence: cap at now.
        heard = min(ts, now)
        if heard > self.heard.get(machine, -1):
            self.heard[machine] = heard
            self.dirty.add(f"h|{machine}")

    def state(self, machine: str) -> str | None:
        sample = self.samples.get((machine, "state"))
        return None if sample is None else sample.text

    # -- persistence: flat documents keyed by text ---------------------------------------

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key in self.dirty:
            kind, _, rest = key.partition("|")
            if kind == "r":
                line, machine, window = rest.split("|")
                out[key] = self.records[(line, machine or None, window)]
            elif kind == "s":
                machine, signal = rest.split("|", 1)
                s = self.samples[(machine, signal)]
                out[key] = {"ts": s.ts, "num": s.num, "text": s.text}
            else:
                out[key] = {"ts": self.heard[rest]}
        self.dirty.clear()
        return out

    def restore(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        for key, doc in docs.items():
            kind, _, rest = key.partition("|")
            if kind == "r":
                line, machine, window = rest.split("|")
                if window in self.windows:
                    self.records[(line, machine or None, window)] = dict(doc)
            elif kind == "s":
                machine, signal = rest.split("|", 1)
                self.samples[(machine, signal)] = Sample(doc["ts"], doc["num"], doc["text"])
            elif kind == "h":
                self.heard[rest] = int(doc["ts"])


def _record_key(key: tuple[str, str | None, str]) -> str:
    return f"r|{key[0]}|{key[1] or ''}|{key[2]}"


def _record_rank(record: Mapping[str, Any]) -> tuple[float, int]:
    start = record.get("window_start")
    try:
        begin = datetime.fromisoformat(str(start).replace("Z", "+00:00")).timestamp()
    except ValueError:
        begin = float("-inf")
    revision = record.get("revision")
    return begin, revision if isinstance(revision, int) else 0


def targets(rule: Rule, plant: PlantConfig) -> list[Target]:
    """The targets in a rule's scope: listed machines plus all machines of listed lines
    (every machine of the site when both are empty); with `line_records`, those lines. A
    forecast rule: its lines (`scope.lines`, or every line with a target)."""
    if rule.forecast is not None:
        return [Target(line, None) for line in forecast_lines(rule, plant)]
    machines = plant.machines()
    if rule.spc is not None:
        machine = rule.spc.partition("/")[0]
        return [Target(machines[machine][0].id, machine)]
    scope = rule.scope
    if not scope.lines and not scope.machines:
        chosen = list(machines)
    else:
        chosen = [m for m, (line, _) in machines.items() if line.id in scope.lines]
        chosen += [m for m in scope.machines if m not in chosen]
    if rule.kpi is not None and scope.line_records:
        lines = dict.fromkeys(machines[m][0].id for m in chosen)
        return [Target(line, None) for line in lines]
    return [Target(machines[m][0].id, m) for m in chosen]


def read(rule: Rule, obs: Observations, target: Target, now: int) -> Reading:
    """Read `rule` over `target`: the value and which side of trigger and clear it is."""
    if rule.no_data is not None:
        if target.machine is None or target.machine not in obs.heard:
            return UNKNOWN  # never heard: the engine seeds a baseline at its first run
        silent_s = (now - obs.heard[target.machine]) / 1000
        breach = silent_s > rule.no_data
        return Reading(round(silent_s, 3), breach, not breach)
    if rule.forecast is not None:
        return read_forecast(rule, obs.records.get((target.line, None, "shift")), now)
    if rule.spc is not None:
        news = obs.spc.get(rule.spc)
        # No subgroup yet, or only subgroups of the past (a backlog worked off, a
        # simulated plant's history): like a KPI record's, they page nobody now.
        if news is None or now - news.newest > PAST_AFTER_MS:
            return UNKNOWN
        broken = news.broken_since(now - PAST_AFTER_MS)
        fields = {"signal": rule.spc.partition("/")[2], "chart": rule.spc}
        return Reading(", ".join(broken) or "in control", bool(broken), not broken, False, fields)
    if rule.kpi is not None:
        record = obs.records.get((target.line, target.machine, rule.window))
        if record is None or not covered(rule, record) or is_past(record, now):
            return UNKNOWN
        value = record.get(rule.kpi)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return UNKNOWN
        return compare(rule, float(value))
    assert rule.signal is not None  # noqa: S101 - the Rule validator demands one subject
    if target.machine is None:
        return UNKNOWN
    sample = obs.samples.get((target.machine, rule.signal))
    if sample is None:
        return UNKNOWN
    if rule.value is not None:
        text = sample.text if sample.text is not None else _num_text(sample.num)
        return UNKNOWN if text is None else compare(rule, text)
    return UNKNOWN if sample.num is None else compare(rule, sample.num)


def covered(rule: Rule, record: Mapping[str, Any]) -> bool:
    """Whether a KPI record rests on enough data for `rule` (a KPI or forecast rule) to
    judge it: its window has run for the rule's `min_elapsed` and its `coverage` is
    at or above the rule's `min_coverage`. A null coverage (no planned time) is not
    enough unless `min_coverage` is 0; a record without the field (from a KPI service
    older than it) is judged as before. Rules on the data itself (`coverage`,
    `unknown_s`) are never held."""
    if rule.kpi in DATA_FIELDS:
        return True
    elapsed = record.get("calendar_s")
    if isinstance(elapsed, int | float) and elapsed < elapsed_needed_s(rule):
        return False  # too little of the window yet (`min_elapsed`)
    if rule.min_coverage <= 0 or "coverage" not in record:
        return True
    coverage = record["coverage"]
    if not isinstance(coverage, int | float) or isinstance(coverage, bool):
        return False
    return coverage >= rule.min_coverage


def is_past(record: Mapping[str, Any], now: int) -> bool:
    """Whether `record`'s window ended more than `PAST_AFTER_MS` before `now` (see there);
    a record without a readable `window_end` is taken as current."""
    return now - _ms(record.get("window_end")) > PAST_AFTER_MS


def read_forecast(rule: Rule, record: Mapping[str, Any] | None, now: int) -> Reading:
    """`forecast: target_miss` over a line's latest shift record: breached while the
    projection is short of the target by more than the margin; over once the record is
    final or the clock has passed the shift's end (whatever its coverage: that is a fact
    of time). Below the rule's `min_coverage` the projection is unknown."""
    if record is None:
        return UNKNOWN
    projected, target = _number(record.get("projected_count")), _number(record.get("target_count"))
    fields: dict[str, Any] = {
        "shift": record.get("shift") or "",
        "shift_start": record.get("window_start"),
        "output": record.get("output_count"),
        "margin": rule.margin,
        "target": None if target is None else round(target),
        "projected": None if projected is None else round(projected),
        "shortfall": None,
    }
    if projected is not None and target is not None:
        fields["shortfall"] = max(0, round(target) - round(projected))
    if record.get("final") is True or now >= _ms(record.get("window_end")):
        return Reading(projected, False, True, over=True, fields=fields)
    if projected is None or target is None or not covered(rule, record):
        return UNKNOWN  # a projection from a shift mostly without data says nothing yet
    breach = projected < target * (1 - rule.margin)
    return Reading(projected, breach, not breach, fields=fields)


def forecast_labels(record: Mapping[str, Any] | None) -> dict[str, str]:
    """The labels that make a forecast alert one per shift: its name and start."""
    if record is None:
        return {}
    return {"shift": str(record.get("shift") or ""), "shift_start": str(record.get("window_start"))}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _ms(text: object) -> float:
    """Epoch ms of an RFC 3339 time; +inf when it is missing or unreadable."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return float("inf")


def compare(rule: Rule, value: float | str) -> Reading:
    """Trigger when `value op threshold`; recovered when `value op clear` no longer holds
    (clear defaults to the threshold), so between the two levels neither is true."""
    assert rule.op is not None  # noqa: S101 - the Rule validator demands op for these
    test = _OPS[rule.op]
    if isinstance(value, str):
        breach = bool(test(value, rule.value))
        return Reading(value, breach, not breach)
    if rule.threshold is None:
        return UNKNOWN  # a text rule over a numeric sample: nothing to compare
    level = rule.clear if rule.clear is not None else rule.threshold
    return Reading(value, bool(test(value, rule.threshold)), not test(value, level))


def _num_text(num: float | None) -> str | None:
    if num is None:
        return None
    return str(int(num)) if num.is_integer() else str(num)


class _Fallback(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, fields: Mapping[str, Any]) -> str:
    """`template.format_map(fields)`, leaving unknown placeholders as written; a template
    that still cannot be formatted (a bad format spec, `{0}`) comes back unchanged, since a
    typo in a runbook text must never stop a page."""
    try:
        return template.format_map(_Fallback(fields))
    except (ValueError, LookupError, AttributeError, TypeError):
        return template
