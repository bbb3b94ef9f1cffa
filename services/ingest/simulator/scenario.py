"""Scenarios: how a simulated plant departs from the model's default behaviour.

A `Scenario` is passed to `PlantModel` (and `run_simulator`, `simulate_events`); the
default one changes nothing, so a run without a scenario draws exactly what it always did.

- `coupling`: the machines of a line run in sequence (config order) with a buffer between
  neighbours. While a machine is `down` or in a `changeover`, the machines downstream of
  it go `idle` (reason `starved`) once the buffers between have run empty, and those
  upstream `idle` (`blocked`) once they have filled: `buffer_s` per buffer in between.
  They run again as soon as it does, unless they have a stop of their own.
- `speed`: a machine (or every machine of a line) runs at a fraction of its ideal rate,
  constant or changing linearly from a shift's start to its end (a line that degrades).
- `stops`: a machine's own stops (or those of every machine of a line): the mean running
  time between them (`math.inf`: it never stops on its own) and their mean length; its
  own stops are then all failures (`down` with a reason).
- `fill`: a filler's fill weight (`fill_g`): every part's weight is normal around the
  target, drifting linearly from the start of the run; a checkweigher rejects every part
  outside the specification (the target +- 4 sigma), besides the machine's other rejects,
  and every `every_s` while the machine runs the quality check weighs `burst` parts in a
  row and publishes their weights (an SPC subgroup, 1 ms apart). A drift shows on a
  control chart of `fill_g` long before it moves the reject counter. `charted_checks`
  gives every chart of the plant's `spc:` with fixed limits such a check, in control
  (the demo's charts have something to draw).

A machine's own entry beats its line's. On the command line a scenario is a spec of
comma-separated items (`parse_scenario`):

    couple=LINE[:BUFFER_S]                     coupling on for LINE (buffer 30 s)
    speed=ID:FACTOR[:END_FACTOR]               ID: a machine or a line
    stops=ID:MEAN_RUN_S|never[:MEAN_DOWN_S]
    bottleneck=MACHINE                         its line coupled; it fails every ~10 min
                                               for ~5 min, the others never on their own
    slow=LINE[:FACTOR]                         LINE at FACTOR (0.65) of its ideal rate
    fill=MACHINE[:DRIFT_G_PER_H[:EVERY_S]]     its fill weight (500 g, sd 0.8 g), drifting;
                                               5 parts weighed every EVERY_S (600 s)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from linepulse.config import PlantConfig

DEFAULT_BUFFER_S: Final = 30.0
# The `bottleneck` preset: its machine's own stops; the `slow` preset's speed.
BOTTLENECK_STOPS_S: Final = (600.0, 300.0)
SLOW_FACTOR: Final = 0.65


@dataclass(frozen=True)
class Speed:
    """A fraction of the ideal rate: `start` at a shift's start, `end` at its end (linear
    in between; outside shifts, `start`). Without `end`, constant."""

    start: float
    end: float | None = None

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if value is not None and not 0 < value <= 2:
                raise ValueError(f"a speed factor must be in (0, 2], got {value}")

    def at(self, shift_fraction: float | None) -> float:
        """The factor at a point of a shift (0 at its start, 1 at its end; None: outside)."""
        if self.end is None or shift_fraction is None:
            return self.start
        return self.start + (self.end - self.start) * shift_fraction


@dataclass(frozen=True)
class Stops:
    """A machine's own stops: all failures, `mean_run_s` of running apart on average
    (`math.inf`: none), `mean_down_s` long (None: the behaviour's mean per reason)."""

    mean_run_s: float
    mean_down_s: float | None = None

    def __post_init__(self) -> None:
        if not self.mean_run_s > 0:
            raise ValueError(f"mean_run_s must be > 0, got {self.mean_run_s}")
        if self.mean_down_s is not None and not 0 < self.mean_down_s < math.inf:
            raise ValueError(f"mean_down_s must be > 0 and finite, got {self.mean_down_s}")


@dataclass(frozen=True)
class Fill:
    """A filler's fill weight (module docstring); the specification is target +- 4 sigma."""

    drift_g_per_h: float = 0.0
    every_s: float = 600.0  # a quality check this often while running
    burst: int = 5  # parts weighed at a check
    target: float = 500.0
    sigma: float = 0.8
    signal: str = "fill_g"
    spec_sigmas: float = 4.0

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and self.every_s > 0 and math.isfinite(self.drift_g_per_h)):
            raise ValueError("a fill needs sigma > 0, every_s > 0 and a finite drift")
        if self.burst < 1:
            raise ValueError("a fill check weighs at least one part")

    def mean_at(self, hours: float) -> float:
        return self.target + self.drift_g_per_h * hours

    def in_spec(self, weight: float) -> bool:
        return abs(weight - self.target) <= self.spec_sigmas * self.sigma


@dataclass(frozen=True)
class Scenario:
    """Coupled lines (line -> buffer seconds), speeds and own stops by machine or line."""

    name: str = "default"
    coupling: Mapping[str, float] = field(default_factory=dict)
    speed: Mapping[str, Speed] = field(default_factory=dict)
    stops: Mapping[str, Stops] = field(default_factory=dict)
    fill: Mapping[str, Fill] = field(default_factory=dict)  # by machine

    def __post_init__(self) -> None:
        for line, buffer_s in self.coupling.items():
            if not 0 <= buffer_s < math.inf:
                raise ValueError(f"buffer of line {line!r} must be >= 0 s, got {buffer_s}")

    def speed_of(self, machine: str, line: str) -> Speed | None:
        return self.speed.get(machine, self.speed.get(line))

    def stops_of(self, machine: str, line: str) -> Stops | None:
        return self.stops.get(machine, self.stops.get(line))

    def check(self, plant: PlantConfig) -> None:
        """Every id names a line or machine of the plant (coupling: a line)."""
        lines = {line.id for line in plant.lines}
        ids = lines | set(plant.machines())
        for line in self.coupling:
            if line not in lines:
                raise ValueError(f"scenario: coupling: {line!r} is not a line of the plant")
        for key, entries in (("speed", self.speed), ("stops", self.stops)):
            for name in entries:
                if name not in ids:
                    raise ValueError(f"scenario: {key}: {name!r} is not a line or machine")
        on_opcua = {
            entry.machine: (source.id, entry.nodes)
            for source in plant.sources.opcua
            for entry in source.machines
        }
        for name, fill in self.fill.items():
            if name not in plant.machines():
                raise ValueError(f"scenario: fill: {name!r} is not a machine")
            # An OPC-UA server has a node per configured signal; MQTT publishes any signal.
            if name in on_opcua and fill.signal not in on_opcua[name][1]:
                raise ValueError(
                    f"scenario: fill: {name!r} is served by OPC-UA source {on_opcua[name][0]!r}, "
                    f"which has no {fill.signal!r} node for it: add one, or fill on an MQTT "
                    "machine"
                )


def charted_checks(plant: PlantConfig, every_s: float) -> Scenario:
    """A quality check of every charted signal with fixed limits (`spc:`) that the
    simulator can publish: a subgroup of the chart's size every `every_s` while its
    machine runs, normal around the chart's centre with its sigma, without drift. A
    chart of a machine on an OPC-UA source without a node for the signal is left out
    (its server could not publish it)."""
    on_opcua = {
        entry.machine: entry.nodes for source in plant.sources.opcua for entry in source.machines
    }
    fill = {
        chart.machine: Fill(
            every_s=every_s,
            burst=chart.size,
            target=chart.limits.center,
            sigma=chart.limits.sigma,
            signal=chart.signal,
        )
        for chart in plant.spc
        if chart.limits is not None
        and (chart.machine not in on_opcua or chart.signal in on_opcua[chart.machine])
    }
    return Scenario("charted checks", fill=fill)


def parse_scenario(spec: str, plant: PlantConfig) -> Scenario:
    """A scenario from its command-line spec (module docstring); ValueError names the item."""
    coupling: dict[str, float] = {}
    speed: dict[str, Speed] = {}
    stops: dict[str, Stops] = {}
    fill: dict[str, Fill] = {}
    machines = plant.machines()
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise ValueError("scenario: empty spec")
    for item in items:
        key, sep, value = item.partition("=")
        parts = value.split(":")
        try:
            if not sep or not value:
                raise ValueError("expected KEY=VALUE")
            if key == "couple" and len(parts) <= 2:
                coupling[parts[0]] = _number(parts[1]) if len(parts) == 2 else DEFAULT_BUFFER_S
            elif key == "speed" and len(parts) in (2, 3):
                end = _number(parts[2]) if len(parts) == 3 else None
                speed[parts[0]] = Speed(_number(parts[1]), end)
            elif key == "stops" and len(parts) in (2, 3):
                run = math.inf if parts[1] == "never" else _number(parts[1])
                stops[parts[0]] = Stops(run, _number(parts[2]) if len(parts) == 3 else None)
            elif key == "bottleneck" and len(parts) == 1:
                if value not in machines:
                    raise ValueError(f"{value!r} is not a machine of the plant")
                line = machines[value][0].id
                coupling.setdefault(line, DEFAULT_BUFFER_S)
                stops[line] = Stops(math.inf)
                stops[value] = Stops(*BOTTLENECK_STOPS_S)
            elif key == "slow" and len(parts) <= 2:
                speed[parts[0]] = Speed(_number(parts[1]) if len(parts) == 2 else SLOW_FACTOR)
            elif key == "fill" and len(parts) <= 3:
                drift = _number(parts[1]) if len(parts) >= 2 else 0.0
                every = _number(parts[2]) if len(parts) == 3 else Fill.every_s
                fill[parts[0]] = Fill(drift, every)
            else:
                raise ValueError(
                    "expected couple=LINE[:BUFFER_S], speed=ID:FACTOR[:END], "
                    "stops=ID:MEAN_RUN_S|never[:MEAN_DOWN_S], bottleneck=MACHINE, "
                    "slow=LINE[:FACTOR] or fill=MACHINE[:DRIFT_G_PER_H[:EVERY_S]]"
                )
        except ValueError as error:
            raise ValueError(f"scenario: {item!r}: {error}") from None
    scenario = Scenario(spec, coupling, speed, stops, fill)
    scenario.check(plant)
    return scenario


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value
