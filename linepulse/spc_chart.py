"""Control charts and capability of one process signal: subgroups, control limits with
the standard constants, the Western Electric / Nelson rules, and Cp, Cpk, Pp, Ppk.

Pure: samples (epoch ms, value) in, a JSON-ready study out. Samples are taken in time
order (ties by value), so the study of a set of samples is the same whatever order they
arrived in. Subgroups are `subgroup_size` consecutive samples; a last, incomplete one is
still forming and is left out. With an interval (`subgroup_every_s`), a subgroup is the
first `subgroup_size` samples of each interval (intervals from the Unix epoch on, so an
hour's starts on the hour wherever the zone is a whole number of hours from UTC); the
rest of the interval is not charted, and an interval with fewer samples gives no point.

The charts (Montgomery, Introduction to Statistical Quality Control, ch. 6):

- `xbar_r`: subgroup means and ranges; sigma = R-bar / d2; X-bar limits x-double-bar +-
  A2 R-bar; R limits D3 R-bar, D4 R-bar. Subgroups of 2 to 10.
- `xbar_s`: means and standard deviations; sigma = s-bar / c4; X-bar limits +- A3 s-bar;
  S limits B3 s-bar, B4 s-bar.
- `imr`: single values and the moving range of two; sigma = MR-bar / 1.128; X limits
  x-bar +- 3 sigma; MR limit D4(2) MR-bar = 3.267 MR-bar.

Constants: A2, D3, D4 and d2 from the standard table (n = 2..10, as printed); c4 exactly
from the gamma function, A3 = 3 / (c4 sqrt n), B3,4 = 1 -+ 3 sqrt(1 - c4^2) / c4 (B3 not
below 0). Fixed limits (a known mean and sigma of single values) give the same charts
with sigma known: X-bar centre +- 3 sigma / sqrt n, R centre d2 sigma, S centre c4 sigma.

Rules on the chart of the centre (zones of sigma-x-bar = (UCL - CL) / 3), each reported
at the point that completes its pattern: one point beyond a limit; two of three in a row
beyond 2 sigma on one side (the completing point among them); four of five beyond 1 sigma
on one side (likewise); eight in a row on one side of the centre line; six in a row
steadily rising or falling. On the spread chart (R, S or MR), `spread_beyond_limits`: a
point beyond its limits.

Capability: Cp = (USL - LSL) / 6 sigma-within, Cpk = the nearer limit's distance from
the mean over 3 sigma-within (one-sided when one limit is given, and then no Cp); Pp and
Ppk the same with the overall standard deviation of the single values (n - 1).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from linepulse.calendar import Calendar, ms_to_local_date, utc_text
from linepulse.spc import ChartKind, FixedLimits, SpcChart, SpcRule, SpecLimits

# The range chart's constants as the standard table prints them (Montgomery, Appendix
# VI): A2, D3, D4 and d2 (the mean range of n normal values over sigma). Deriving A2, D3
# and D4 from a three-place d2 and d3 would be off in the third place.
RANGE_TABLE: Final = {
    2: (1.880, 0.0, 3.267, 1.128),
    3: (1.023, 0.0, 2.574, 1.693),
    4: (0.729, 0.0, 2.282, 2.059),
    5: (0.577, 0.0, 2.114, 2.326),
    6: (0.483, 0.0, 2.004, 2.534),
    7: (0.419, 0.076, 1.924, 2.704),
    8: (0.373, 0.136, 1.864, 2.847),
    9: (0.337, 0.184, 1.816, 2.970),
    10: (0.308, 0.223, 1.777, 3.078),
}
MIN_SUBGROUPS: Final = 2  # limits need some spread to estimate sigma


class SpcError(ValueError):
    """A study that cannot be made (too few subgroups for limits), with what to do."""


def c4(n: int) -> float:
    """E[s] / sigma for n normal values."""
    return math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))


@dataclass(frozen=True)
class Constants:
    """The control chart constants of subgroups of `n`."""

    n: int

    @property
    def a2(self) -> float:
        return RANGE_TABLE[self.n][0]

    @property
    def d3_factor(self) -> float:  # D3
        return RANGE_TABLE[self.n][1]

    @property
    def d4_factor(self) -> float:  # D4
        return RANGE_TABLE[self.n][2]

    @property
    def d2(self) -> float:
        return RANGE_TABLE[self.n][3]

    @property
    def c4(self) -> float:
        return c4(self.n)

    @property
    def a3(self) -> float:
        return 3 / (self.c4 * math.sqrt(self.n))

    @property
    def b3(self) -> float:
        return max(0.0, 1 - 3 * math.sqrt(1 - self.c4**2) / self.c4)

    @property
    def b4(self) -> float:
        return 1 + 3 * math.sqrt(1 - self.c4**2) / self.c4


@dataclass(frozen=True)
class Subgroup:
    start: int  # epoch ms of its first and last sample
    end: int
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def range(self) -> float:
        return max(self.values) - min(self.values)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.values)


@dataclass(frozen=True)
class Limits:
    """The centre chart's and the spread chart's lines, and sigma of single values."""

    center: float
    ucl: float
    lcl: float
    spread_center: float
    spread_ucl: float
    spread_lcl: float
    sigma: float
    source: str  # "fixed", "baseline" or "data"

    @property
    def sigma_center(self) -> float:
        """Sigma of a point of the centre chart: a third of the way to a limit."""
        return (self.ucl - self.center) / 3

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "center": self.center,
            "ucl": self.ucl,
            "lcl": self.lcl,
            "spread_center": self.spread_center,
            "spread_ucl": self.spread_ucl,
            "spread_lcl": self.spread_lcl,
            "sigma": self.sigma,
        }


def subgroups(
    samples: Iterable[tuple[int, float]], size: int, every_ms: int | None = None
) -> list[Subgroup]:
    """Consecutive subgroups of `size` in time order (ties by value); an incomplete last
    one is left out. With `every_ms`, the first `size` samples of each interval of that
    length instead (none for an interval with fewer)."""
    ordered = sorted(samples)
    if every_ms is None:
        chunks = [ordered[i : i + size] for i in range(0, len(ordered) - size + 1, size)]
    else:
        chunks = [
            chunk[:size]
            for _, group in itertools.groupby(ordered, key=lambda s: s[0] // every_ms)
            if len(chunk := list(group)) >= size
        ]
    return [Subgroup(chunk[0][0], chunk[-1][0], tuple(v for _, v in chunk)) for chunk in chunks]


def spreads(kind: ChartKind, groups: Sequence[Subgroup]) -> list[float | None]:
    """Each subgroup's point on the spread chart: R, S, or the moving range (none for the
    first single value)."""
    if kind == "xbar_r":
        return [g.range for g in groups]
    if kind == "xbar_s":
        return [g.stdev for g in groups]
    return [None, *(abs(b.mean - a.mean) for a, b in itertools.pairwise(groups))]


def estimated(kind: ChartKind, groups: Sequence[Subgroup], source: str) -> Limits:
    """Limits from the subgroups themselves (phase I)."""
    if len(groups) < MIN_SUBGROUPS:
        raise SpcError(
            f"{len(groups)} subgroup(s) to compute control limits from: at least "
            f"{MIN_SUBGROUPS} are needed (run longer, or give fixed limits)"
        )
    center = statistics.fmean(g.mean for g in groups)
    spread = [s for s in spreads(kind, groups) if s is not None]
    bar = statistics.fmean(spread)
    if kind != "imr":
        k = Constants(len(groups[0].values))
        # The centre chart's factor, the spread chart's lower and upper factors, and the
        # spread's mean over sigma: R-bar = d2 sigma, s-bar = c4 sigma.
        a, low, high, unbias = (
            (k.a2, k.d3_factor, k.d4_factor, k.d2) if kind == "xbar_r" else (k.a3, k.b3, k.b4, k.c4)
        )
        return Limits(
            center,
            center + a * bar,
            center - a * bar,
            bar,
            high * bar,
            low * bar,
            bar / unbias,
            source,
        )
    pair = Constants(2)
    sigma = bar / pair.d2
    return Limits(
        center,
        center + 3 * sigma,
        center - 3 * sigma,
        bar,
        pair.d4_factor * bar,
        0.0,
        sigma,
        source,
    )


def fixed(kind: ChartKind, known: FixedLimits, n: int) -> Limits:
    """Limits of a process of known mean and sigma (of single values)."""
    sigma, half = known.sigma, 3 * known.sigma / math.sqrt(n)
    center, ucl, lcl = known.center, known.center + half, known.center - half
    if kind == "xbar_s":
        k = Constants(n)
        s = k.c4 * sigma
        return Limits(center, ucl, lcl, s, k.b4 * s, k.b3 * s, sigma, "fixed")
    k = Constants(2 if kind == "imr" else n)
    r = k.d2 * sigma
    return Limits(center, ucl, lcl, r, k.d4_factor * r, k.d3_factor * r, sigma, "fixed")


def _side(x: float, center: float, reach: float) -> int:
    """+1 beyond centre + reach, -1 beyond centre - reach, 0 within."""
    return 1 if x > center + reach else -1 if x < center - reach else 0


def broken_rules(
    xs: Sequence[float], limits: Limits, rules: Iterable[SpcRule]
) -> list[tuple[int, SpcRule]]:
    """(index, rule) for each point of the centre chart that completes a rule's pattern."""
    chosen = set(rules)
    sigma = limits.sigma_center
    center = limits.center
    out: list[tuple[int, SpcRule]] = []

    def k_of_m(i: int, k: int, m: int, reach: float) -> bool:
        """`k` of the last `m` points (fewer at the start) beyond `reach` on the side of
        point `i`, which is one of them."""
        side = _side(xs[i], center, reach)
        if side == 0:
            return False
        window = xs[max(0, i - m + 1) : i + 1]
        return sum(1 for x in window if _side(x, center, reach) == side) >= k

    checks: dict[str, Callable[[int], bool]] = {
        "beyond_3sigma": lambda i: xs[i] > limits.ucl or xs[i] < limits.lcl,
        "2_of_3_beyond_2sigma": lambda i: k_of_m(i, 2, 3, 2 * sigma),
        "4_of_5_beyond_1sigma": lambda i: k_of_m(i, 4, 5, sigma),
        "8_on_one_side": lambda i: (
            i >= 7 and {_side(x, center, 0.0) for x in xs[i - 7 : i + 1]} in ({1}, {-1})
        ),
        "6_trending": lambda i: (
            i >= 5
            and (
                all(a < b for a, b in zip(xs[i - 5 : i], xs[i - 4 : i + 1], strict=True))
                or all(a > b for a, b in zip(xs[i - 5 : i], xs[i - 4 : i + 1], strict=True))
            )
        ),
    }
    for i in range(len(xs)):
        for rule, check in checks.items():
            if rule in chosen and check(i):
                out.append((i, rule))
    return out


def capability(
    values: Sequence[float], sigma_within: float | None, spec: SpecLimits
) -> dict[str, Any]:
    """Cp, Cpk (sigma within subgroups), Pp, Ppk (overall sigma) of `values`."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    overall = statistics.stdev(values) if n >= 2 else None

    def indices(sigma: float | None) -> tuple[float | None, float | None]:
        if mean is None or sigma is None or sigma <= 0:
            return None, None
        both = spec.lsl is not None and spec.usl is not None
        spread = (spec.usl - spec.lsl) / (6 * sigma) if both else None  # type: ignore[operator]
        sides = [
            (spec.usl - mean) / (3 * sigma) if spec.usl is not None else None,
            (mean - spec.lsl) / (3 * sigma) if spec.lsl is not None else None,
        ]
        return spread, min(s for s in sides if s is not None)

    cp, cpk = indices(sigma_within)
    pp, ppk = indices(overall)
    return {
        "n": n,
        "mean": mean,
        "sigma_within": sigma_within,
        "sigma_overall": overall,
        "cp": cp,
        "cpk": cpk,
        "pp": pp,
        "ppk": ppk,
    }


def capability_of(kind: ChartKind, groups: Sequence[Subgroup], spec: SpecLimits) -> dict[str, Any]:
    """`capability` of the values of `groups`, with sigma within them as the chart
    estimates it (none with too few subgroups to say)."""
    try:
        within: float | None = estimated(kind, groups, "data").sigma
    except SpcError:
        within = None
    return capability([v for g in groups for v in g.values], within, spec)


def spread_broken(rules: Iterable[str], limits: Limits, spread: float | None) -> bool:
    """Whether `spread_beyond_limits` is watched and `spread` is beyond the spread chart's
    limits (the first moving range, None, is not)."""
    return (
        "spread_beyond_limits" in rules
        and spread is not None
        and not limits.spread_lcl <= spread <= limits.spread_ucl
    )


def study(
    chart: SpcChart,
    samples: Iterable[tuple[int, float]],
    calendar: Calendar | None = None,
    line: str | None = None,
) -> dict[str, Any]:
    """The chart of `samples` (epoch ms, value): limits, points with the rules they break,
    and capability overall and (with `calendar` and the machine's `line`) per production
    day and shift, each subgroup counted where it ends."""
    groups = subgroups(samples, chart.size, chart.every_ms)
    if chart.limits is not None:
        limits = fixed(chart.chart, chart.limits, chart.size)
    elif chart.baseline is not None:
        phase_one = [
            g for g in groups if chart.baseline.holds(g.start) and chart.baseline.holds(g.end)
        ]
        try:
            limits = estimated(chart.chart, phase_one, "baseline")
        except SpcError as error:
            raise SpcError(f"{chart.name}: the baseline holds {error}") from None
    else:
        try:
            limits = estimated(chart.chart, groups, "data")
        except SpcError as error:
            raise SpcError(f"{chart.name}: {error}") from None
    xs = [g.mean for g in groups]
    spread = spreads(chart.chart, groups)
    broken: dict[int, list[str]] = {}
    for i, rule in broken_rules(xs, limits, chart.rules):
        broken.setdefault(i, []).append(rule)
    for i, s in enumerate(spread):
        if spread_broken(chart.rules, limits, s):
            broken.setdefault(i, []).append("spread_beyond_limits")
    points = [
        {
            "start": utc_text(g.start),
            "end": utc_text(g.end),
            "x": g.mean,
            "spread": spread[i],
            "broken": broken.get(i, []),
        }
        for i, g in enumerate(groups)
    ]
    body: dict[str, Any] = {
        "machine": chart.machine,
        "signal": chart.signal,
        "chart": chart.chart,
        "subgroup_size": chart.size,
        "subgroup_every_s": chart.subgroup_every_s,
        "subgroups": len(groups),
        "limits": limits.as_dict(),
        "spec": None if chart.spec is None else chart.spec.model_dump(),
        "points": points,
        "violations": [
            {"end": points[i]["end"], "rule": rule} for i in sorted(broken) for rule in broken[i]
        ],
    }
    if chart.spec is not None:
        # Sigma within the charted subgroups, as for each day and shift below (the
        # limits' sigma may be a baseline's, or assumed).
        body["capability"] = capability_of(chart.chart, groups, chart.spec)
        if calendar is not None and line is not None:
            body["capability_by_day"], body["capability_by_shift"] = _by_period(
                chart, groups, calendar, line
            )
    return body


def _by_period(
    chart: SpcChart, groups: Sequence[Subgroup], calendar: Calendar, line: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Capability per production day and per shift (a subgroup where it ends)."""
    spec = chart.spec
    assert spec is not None  # noqa: S101 - the caller checked
    days: dict[str, list[Subgroup]] = {}
    shifts: dict[tuple[str, str], list[Subgroup]] = {}
    for group in groups:
        # The production day: the local date once the day's start is taken off.
        day = ms_to_local_date(group.end - calendar.day_start_ms, calendar.zone)
        days.setdefault(day.isoformat(), []).append(group)
        for span in calendar.spans(line, group.end, group.end + 1):
            shifts.setdefault((span.day.isoformat(), span.name), []).append(group)

    kind = chart.chart
    return (
        [{"date": day, **capability_of(kind, of, spec)} for day, of in sorted(days.items())],
        [
            {"date": day, "shift": name, **capability_of(kind, of, spec)}
            for (day, name), of in sorted(shifts.items())
        ],
    )
