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
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from linepulse.events import reading_as_float
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
SHOWN_POINTS = 60  # the last points shown (the board's control chart)
KEEP_MS = 26 * 3_600_000  # points kept: a day and the shift reports' wait after it


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
        # The points of the last `KEEP_MS` of event time: the board shows the last of them,
        # the shift reports take a shift's.
        self.kept: deque[Point] = deque()
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
        self.kept.extend(points)
        while self.kept and self.kept[0].end < self.high - KEEP_MS:
            self.kept.popleft()
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

    @property
    def shown(self) -> list[Point]:
        """The last `SHOWN_POINTS` points."""
        return list(self.kept)[-SHOWN_POINTS:]

    def between(self, start: int, end: int) -> list[Point]:
        """The points kept that end in [start, end)."""
        return [p for p in self.kept if start <= p.end < end]

    def summary(self, start: int, end: int) -> dict[str, Any]:
        """The chart over [start, end) (a shift): subgroups, how many broke each rule, and
        capability with sigma within those subgroups (without `spec`: none)."""
        points = self.between(start, end)
        broken: dict[str, int] = {}
        for point in points:
            for rule in point.broken:
                broken[rule] = broken.get(rule, 0) + 1
        body: dict[str, Any] = {
            "chart": self.chart.name,
            "subgroups": len(points),
            "broken": broken,
            "capability": None,
        }
        spec = self.chart.spec
        if spec is not None and points:
            groups = [Subgroup(p.start, p.end, p.values) for p in points]
            body["capability"] = capability_of(self.chart.chart, groups, spec)
        return body


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
