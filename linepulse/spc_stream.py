"""A control chart followed live: samples as they arrive, subgroups as event time passes
them, each new point judged by the chart's rules against its fixed limits.

Live charts need fixed limits (`spc[].limits`): the limits come from a study of a stable
period (`linepulse spc` over its telemetry, docs/spc.md), as SPC's phase I precedes its
phase II. Exactness, as the KPI core's: a sample is accepted unless it is more than the
lateness behind the newest sample seen before it (then it is counted late and left out);
a subgroup forms from the accepted samples below the watermark (the newest less the
lateness), in time order. A later accepted sample is never below a watermark already
passed, so the subgroups are the consecutive chunks of the time-ordered accepted samples
however the samples were batched, and they equal `linepulse spc`'s over the same samples.
With an interval (`subgroup_every_s`), an interval's subgroup forms once its first
`subgroup_size` samples are below the watermark (they are then its first for good), and an
interval the watermark has passed with fewer gives none; the rest of a charted interval
is dropped as it comes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from linepulse.calendar import rfc3339
from linepulse.events import parse_ts, reading_as_float
from linepulse.spc import SpcChart
from linepulse.spc_chart import (
    Limits,
    Subgroup,
    broken_rules,
    capability_of,
    fixed,
    spread_broken,
    spreads,
    subgroups,
)

RULE_MEMORY = 7  # the longest rule (8 on one side) looks at the 7 points before a new one


@dataclass(frozen=True)
class Point:
    """One subgroup plotted: its first and last sample's time, its mean and spread, and
    the rules it completes, and its values (for capability)."""

    start: int
    end: int
    x: float
    spread: float | None
    broken: tuple[str, ...]
    values: tuple[float, ...] = ()


class SpcStream:
    """One chart's live state: pending samples, the watermark, the last points."""

    def __init__(self, chart: SpcChart, lateness_ms: int) -> None:
        if chart.limits is None:
            raise ValueError(f"{chart.name}: a chart followed live needs fixed limits")
        self.chart = chart
        self.limits: Limits = fixed(chart.chart, chart.limits, chart.size)
        self.lateness_ms = lateness_ms
        self.high: int | None = None
        self.pending: list[tuple[int, float]] = []
        self.recent: list[float] = []  # the last points' means, for the rules
        self.late = 0  # samples left out: behind the watermark when they came
        # With intervals: the last interval charted or passed short; its samples and any
        # before it are not charted.
        self.done = -1

    def add(self, samples: Iterable[tuple[int, float]]) -> list[Point]:
        """Take samples in arrival order; the points they complete, in time order."""
        for ts, value in samples:
            if self.high is not None and ts < self.high - self.lateness_ms:
                self.late += 1
                continue
            self.pending.append((ts, value))
            self.high = ts if self.high is None else max(self.high, ts)
        return self._form()

    def _form(self) -> list[Point]:
        if self.high is None:
            return []
        water = self.high - self.lateness_ms
        ready = sorted(s for s in self.pending if s[0] < water)
        waiting = [s for s in self.pending if s[0] >= water]
        size = self.chart.size
        every = self.chart.every_ms
        if every is None:
            whole = len(ready) // size * size
            groups = subgroups(ready[:whole], size)
            self.pending = [*ready[whole:], *waiting]
        else:
            groups, forming = self._intervals(ready, water, every)
            self.pending = [*forming, *(s for s in waiting if s[0] // every > self.done)]
        points = []
        kind = self.chart.chart
        for group in groups:
            # The moving range needs the point before: spreads() over it and this one.
            if kind == "imr":
                spread = abs(group.mean - self.recent[-1]) if self.recent else None
            else:
                spread = spreads(kind, [group])[0]
            xs = [*self.recent, group.mean]
            last = len(xs) - 1
            rules = broken_rules(xs, self.limits, self.chart.rules)
            broken: list[str] = [rule for i, rule in rules if i == last]
            if spread_broken(self.chart.rules, self.limits, spread):
                broken.append("spread_beyond_limits")
            self.recent = xs[-RULE_MEMORY:]
            points.append(
                Point(group.start, group.end, group.mean, spread, tuple(broken), group.values)
            )
        return points

    def _intervals(
        self, ready: list[tuple[int, float]], water: int, every: int
    ) -> tuple[list[Subgroup], list[tuple[int, float]]]:
        """The subgroups of the intervals whose first samples are all below the watermark
        (`ready`, in time order), and the ready samples of the one still forming (only the
        interval the watermark is in can be: every one before it has ended)."""
        size = self.chart.size
        groups: list[Subgroup] = []
        forming: list[tuple[int, float]] = []
        for interval, group in itertools.groupby(ready, key=lambda s: s[0] // every):
            chunk = list(group)
            if interval <= self.done:
                continue
            if len(chunk) >= size:
                groups += subgroups(chunk[:size], size)
                self.done = interval
            elif (interval + 1) * every <= water:
                self.done = interval  # ended with too few: no point
            else:
                forming = chunk
        return groups, forming

    def snapshot(self) -> dict[str, Any]:
        """What continues the chart exactly after a restart (a worker's checkpoint):
        the watermark, the samples waiting, the last means for the rules, the interval
        done. Points already formed are not in it: they were published."""
        return {
            "high": self.high,
            "pending": list(self.pending),  # copies: the chart goes on while it is saved
            "recent": list(self.recent),
            "done": self.done,
            "late": self.late,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a `snapshot` of the same chart."""
        self.high = saved["high"]
        self.pending = [(int(ts), float(value)) for ts, value in saved["pending"]]
        self.recent = [float(x) for x in saved["recent"]]
        self.done = int(saved["done"])
        self.late = int(saved["late"])


def chart_summary(chart: SpcChart, points: Sequence[Point]) -> dict[str, Any]:
    """A chart over a period (a shift's subgroups): how many, how many broke each rule,
    and capability with sigma within those subgroups (without `spec`: none)."""
    broken: dict[str, int] = {}
    for point in points:
        for rule in point.broken:
            broken[rule] = broken.get(rule, 0) + 1
    body: dict[str, Any] = {
        "chart": chart.name,
        "subgroups": len(points),
        "broken": broken,
        "capability": None,
    }
    spec = chart.spec
    if spec is not None and points:
        groups = [Subgroup(p.start, p.end, p.values) for p in points]
        body["capability"] = capability_of(chart.chart, groups, spec)
    return body


def point_of(record: Mapping[str, Any]) -> Point:
    """A subgroup back from its `spc_record`."""
    spread = record.get("spread")
    return Point(
        parse_ts(record["start"]),
        parse_ts(record["end"]),
        float(record["x"]),
        None if spread is None else float(spread),
        tuple(record["broken"]),
        tuple(float(v) for v in record["values"]),
    )


def spc_record(stream: SpcStream, point: Point, line: str) -> dict[str, Any]:
    """One subgroup as the `spc` topic carries it (docs/spc.md, "SPC records"): the
    chart, where it stands, the subgroup's statistics and values, the rules it broke and
    the limits it was judged against. Keyed by `spc_key`."""
    chart, limits = stream.chart, stream.limits
    return {
        "chart": chart.name,
        "machine": chart.machine,
        "signal": chart.signal,
        "line": line,
        "kind": chart.chart,
        "subgroup_size": chart.size,
        # To the millisecond: the end is the record's key, and subgroups of a fast signal
        # end within one second.
        "start": rfc3339(point.start),
        "end": rfc3339(point.end),
        "x": point.x,
        "spread": point.spread,
        "broken": list(point.broken),
        "values": list(point.values),
        "limits": {"center": limits.center, "ucl": limits.ucl, "lcl": limits.lcl},
    }


def spc_key(record: dict[str, Any]) -> bytes:
    """A subgroup's key: its chart and end (a chart has one subgroup ending at a time)."""
    return f"{record['chart']}@{record['end']}".encode()


def follow(streams: Mapping[str, SpcStream], events: pl.DataFrame) -> dict[str, list[Point]]:
    """Telemetry (`EVENT_SCHEMA`, in arrival order) into the charts of `streams` (by
    name): the subgroups each completes, for the charts that completed any."""
    if not streams:
        return {}
    rows = charted_samples(events, [stream.chart for stream in streams.values()])
    by_chart: dict[str, list[tuple[int, float]]] = {}
    for ts, machine, signal, value in rows.iter_rows():
        by_chart.setdefault(f"{machine}/{signal}", []).append((ts, value))
    formed = {name: streams[name].add(samples) for name, samples in by_chart.items()}
    return {name: points for name, points in formed.items() if points}


def charted_samples(events: pl.DataFrame, charts: Sequence[SpcChart]) -> pl.DataFrame:
    """The samples of `charts` in `events` (`EVENT_SCHEMA`), in their order: ts, machine,
    signal, v. A value of `bad` quality is no sample (as for the KPIs), nor is text."""
    wanted = pl.DataFrame(
        {"machine": [c.machine for c in charts], "signal": [c.signal for c in charts]},
        schema={"machine": pl.String, "signal": pl.String},
    )
    return (
        events.join(wanted, on=["machine", "signal"], how="semi", maintain_order="left")
        .filter((pl.col("quality") != "bad").fill_null(True))
        .select("ts", "machine", "signal", reading_as_float().alias("v"))
        .drop_nulls("v")
    )
