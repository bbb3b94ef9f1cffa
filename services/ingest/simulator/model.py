"""Seeded machine behaviour: what each simulated machine does, tick by tick, in plant time.

Pure: no I/O and no clock. A `PlantModel` is built from the plant config, a seed and a start
time, and each `step()` advances plant time by one tick and returns the events that changed
in it, so a given (config, seed, start, tick) always yields the same events. Each machine
draws from its own `random.Random` seeded with the seed and its id, so adding a machine or a
signal to the config does not change what the others do.

The behaviour is what an OEE figure is made of: runs at about the ideal cycle time (a
machine's `performance` < 1 makes it slower), stops with a reason, idle periods (starved or
blocked), changeovers that switch the product and with it the ideal cycle time, rejects
(more of them just after a changeover), planned stops in the calendar's breaks and outside
its shifts, and now and then a PLC counter reset to 0.

A `Scenario` (scenario.py) adds what a line does beyond that: machines coupled in
sequence, so that one machine's stop starves those after it and blocks those before it;
a speed that is a set fraction of the ideal rate, or degrades over a shift; one machine's
own stops made frequent and long, others' rare or none. Each tick first moves every
machine's own state machine, then settles who waits on whom, then publishes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple

from linepulse.calendar import Calendar
from linepulse.config import COUNTER_SIGNALS, Machine, PlantConfig, State
from services.ingest.simulator.scenario import Fill, Scenario, Stops

Value = str | int | float

# Mean duration in seconds of a stop for each reason (exponentially distributed).
DOWN_REASONS: Final[Mapping[str, float]] = {
    "jam": 45.0,
    "material_shortage": 240.0,
    "tool_change": 300.0,
    "quality_check": 120.0,
}
IDLE_REASONS: Final = ("starved", "blocked")
STARVED, BLOCKED = IDLE_REASONS
# Own states of a machine that make the others of a coupled line wait.
LINE_STOPS: Final = frozenset({"down", "changeover"})
# `until` of a state that does not end by itself.
NEVER_MS: Final = 2**62

# Signals with a meaning in the model; any other configured signal is an analog tag of noise.
STATE, PRODUCT, IDEAL = "state", "product", "ideal_cycle_time_s"
SPEED, TEMPERATURE = "speed", "temperature"
KNOWN_SIGNALS: Final = frozenset({STATE, PRODUCT, IDEAL, SPEED, TEMPERATURE, *COUNTER_SIGNALS})
# What a machine on an MQTT source publishes (its config has no list of signals).
DEFAULT_SIGNALS: Final = (STATE, PRODUCT, "total_count", "reject_count", SPEED, TEMPERATURE)
# A machine's counters if the config does not name them.
DEFAULT_COUNTERS: Final = ("total_count", "reject_count")
# Substitutes for a state that a machine's state_map has no source value for.
_FALLBACK: Final[Mapping[str, tuple[str, ...]]] = {
    "changeover": ("idle", "down"),
    "planned_stop": ("idle", "down"),
    "idle": ("down",),
    "down": ("idle",),
}


class Event(NamedTuple):
    """One true event: a signal's new value at `ts` (epoch ms, UTC), as put on the wire."""

    ts: int
    machine: str
    signal: str
    value: Value
    reason: str | None = None

    def as_json(self) -> dict[str, Value]:
        """The telemetry-event form (schemas/telemetry-event.schema.json)."""
        out: dict[str, Value] = {
            "ts": self.ts,
            "machine": self.machine,
            "signal": self.signal,
            "value": self.value,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Behaviour:
    """How machines behave; durations are seconds of plant time, rates are per part."""

    mean_run_s: float = 900.0  # between stops
    down_share: float = 0.6  # of the ends of a run: a stop with a reason
    idle_share: float = 0.25  # starved or blocked; the rest are changeovers
    down_reasons: Mapping[str, float] = field(default_factory=lambda: dict(DOWN_REASONS))
    mean_idle_s: float = 60.0
    mean_changeover_s: float = 600.0
    performance: tuple[float, float] = (0.80, 0.98)  # a machine's speed vs. its ideal
    reject_rate: float = 0.015
    changeover_reject_factor: float = 5.0  # reject rate multiplier just after a changeover
    changeover_ramp_s: float = 300.0  # how long "just after" lasts
    reset_on_changeover: float = 0.3  # chance that a changeover resets the lot counters
    resets_per_hour: float = 0.02  # chance per hour of a spontaneous PLC counter reset
    running_temperature_c: float = 62.0
    ambient_temperature_c: float = 24.0
    temperature_tau_s: float = 300.0

    def faster(self, factor: float) -> Behaviour:
        """All durations divided by `factor`: many stops and changeovers in a short test."""
        return replace(
            self,
            mean_run_s=self.mean_run_s / factor,
            down_reasons={k: v / factor for k, v in self.down_reasons.items()},
            mean_idle_s=self.mean_idle_s / factor,
            mean_changeover_s=self.mean_changeover_s / factor,
            changeover_ramp_s=self.changeover_ramp_s / factor,
            resets_per_hour=self.resets_per_hour * factor,
            temperature_tau_s=self.temperature_tau_s / factor,
        )

    def with_stops(self, stops: Stops) -> Behaviour:
        """A machine's own stops as `stops` says: all failures, at its rate and length."""
        reasons = self.down_reasons
        if stops.mean_down_s is not None:
            reasons = dict.fromkeys(reasons, stops.mean_down_s)
        return replace(
            self, mean_run_s=stops.mean_run_s, down_share=1.0, idle_share=0.0, down_reasons=reasons
        )


@dataclass(frozen=True)
class MachineSpec:
    """What the model needs to know about one machine, taken from the plant config."""

    machine: str
    line: str
    products: Mapping[str, float]  # product -> ideal cycle time (s); one "" if none named
    signals: tuple[str, ...]  # what it publishes
    # LinePulse state -> the value the machine publishes (PackML number, PLC text); a state
    # missing here is published by its name.
    state_values: Mapping[str, Value] = field(default_factory=dict)
    counter_max: Mapping[str, int] = field(default_factory=dict)


def machine_spec(
    plant: PlantConfig, machine: Machine, line: str, signals: tuple[str, ...]
) -> MachineSpec:
    """The spec of a configured machine that publishes `signals`."""
    products = {name: p.ideal_cycle_time_s for name, p in machine.products.items()}
    if not products:
        products = {"": machine.ideal_cycle_time_s or 1.0}
        signals = tuple(s for s in signals if s != PRODUCT)
    return MachineSpec(
        machine=machine.id,
        line=line,
        products=products,
        signals=signals,
        state_values=state_values(plant.state_map_for(machine)),
        counter_max={str(k): v for k, v in machine.counter_max.items()},
    )


def state_values(state_map: Mapping[str, str]) -> dict[str, Value]:
    """Invert a state_map: for each LinePulse state, the first source value mapping to it.

    When every source value is a whole number (PackML states), values are ints, and a state
    that no number maps to takes a substitute's number, since such a machine has no text.
    """
    inverse: dict[str, str] = {}
    for source, state in state_map.items():
        inverse.setdefault(state, source)
    if not inverse:
        return {}
    numeric = all(v.lstrip("-").isdigit() for v in inverse.values())
    if not numeric:
        return dict(inverse)
    out: dict[str, Value] = {k: int(v) for k, v in inverse.items()}
    for state, substitutes in _FALLBACK.items():
        if state not in out:
            sub = next((out[s] for s in substitutes if s in out), None)
            out[state] = sub if sub is not None else next(iter(out.values()))
    return out


class MachineModel:
    """One machine's state machine. `step(ts, planned)` moves it to plant time `ts`.

    `state` and `reason` are its own; while `wait` holds `starved` or `blocked` (a coupled
    line, set by `PlantModel`) a machine that would run is idle instead: it makes nothing,
    publishes `idle` with that reason, and its running time to its next own stop pauses.
    `speed`, if given, is its rate as a fraction of the ideal at a plant time; otherwise
    its drawn `performance`.
    """

    def __init__(
        self,
        spec: MachineSpec,
        behaviour: Behaviour,
        seed: int,
        start_ms: int,
        speed: Callable[[int], float] | None = None,
        fill: Fill | None = None,
    ) -> None:
        self.spec = spec
        self.b = behaviour
        self.speed = speed
        # The fill weight (scenario `fill`): its own random stream, so a filler with it
        # draws everything else exactly as without it.
        self.fill = fill
        self._fill_rng = random.Random(f"{seed}/{spec.machine}/fill")  # noqa: S311
        self.start_ms = start_ms
        self._fill_due = start_ms
        self.fill_weights: list[float] = []  # the parts weighed at this tick's check
        self.fill_rejects = 0  # for tests: parts rejected for their weight
        # A string seed is hashed with SHA-512: stable across runs and PYTHONHASHSEED.
        # Not for cryptography: a simulation must be reproducible from its seed.
        self.rng = random.Random(f"{seed}/{spec.machine}")  # noqa: S311
        self._noise = random.Random(f"{seed}/{spec.machine}/analogs")  # noqa: S311
        rng = self.rng
        self.performance = rng.uniform(*behaviour.performance)
        self.products = sorted(spec.products)
        self.product = rng.choice(self.products)
        self.state: State = "running"
        self.reason: str | None = None
        self.since = start_ms  # when the own state began
        self.wait: str | None = None
        self.until = start_ms + self._duration(behaviour.mean_run_s)
        self.rate = self.performance  # fraction of the ideal rate now
        self._dt_s = 0.0
        self.ramp_until = start_ms
        self._fraction = rng.random()  # of the part being made
        # PLC counters start where the last shift left them.
        self.total = rng.randrange(0, 500_000)
        self.rejects = int(self.total * behaviour.reject_rate)
        self.temperature = behaviour.running_temperature_c
        self._speed_noise = 0.0
        self._reset_next = False
        self.extra_base = {s: self._noise.uniform(10.0, 100.0) for s in self._extra_signals()}
        self.last: dict[str, Value] = {}
        self.last_state: tuple[Value, str | None] | None = None
        self.prev_ts: int | None = None
        # For tests: every part made and every counter reset since the start.
        self.parts_made = 0
        self.rejects_made = 0
        self.resets: list[int] = []

    def _extra_signals(self) -> list[str]:
        return [s for s in self.spec.signals if s not in KNOWN_SIGNALS]

    def _duration(self, mean_s: float) -> int:
        """An exponentially distributed duration in ms, at least 1 ms (no end if infinite)."""
        if not math.isfinite(mean_s):
            return NEVER_MS
        return max(1, round(self.rng.expovariate(1.0 / mean_s) * 1000))

    @property
    def ideal_cycle_time_s(self) -> float:
        return self.spec.products[self.product]

    @property
    def published_state(self) -> tuple[State, str | None]:
        """The state the machine shows: its own, or idle while it waits on its line."""
        if self.wait is not None and self.state == "running":
            return "idle", self.wait
        return self.state, self.reason

    def step(self, ts: int, *, planned: bool) -> list[Event]:
        """Advance to `ts`: a counter reset if one is due, parts made since the last step
        under the state then, any state change at `ts`, then the signals whose value
        changed, in that order."""
        self.advance(ts, planned=planned)
        return self.publish(ts)

    def advance(self, ts: int, *, planned: bool) -> None:
        """Everything of `step` up to its own state at `ts`; `publish` does the rest."""
        dt_s = 0.0 if self.prev_ts is None else (ts - self.prev_ts) / 1000.0
        self.prev_ts = ts
        self._dt_s = dt_s
        # A reset comes first: it zeroes the counter just after its last published value,
        # so every part stays visible as a step (a step down counts from zero).
        spontaneous = self.rng.random() < self.b.resets_per_hour * dt_s / 3600.0
        if spontaneous or self._reset_next:
            self._reset_next = False
            # A counter with a configured maximum rolls over: the core reads any step down
            # on it as a rollover (docs/kpi.md), so such a PLC never resets it.
            if not self.spec.counter_max:
                self._reset(ts)
        if self.speed is not None:
            self.rate = self.speed(ts)
        waiting = self.published_state[0] != self.state
        if self.state == "running" and not waiting and dt_s > 0:
            self._produce(ts, dt_s)
        if waiting:
            self.until += round(dt_s * 1000)  # no wear while it waits
        if not planned:
            if self.state != "planned_stop":
                self._enter("planned_stop", None, ts, math.inf)
        elif self.state == "planned_stop":
            self._enter("running", None, ts, self.b.mean_run_s)
        elif ts >= self.until:
            self._transition(ts)

    def publish(self, ts: int) -> list[Event]:
        """The rest of `step`, once `wait` is settled: analogs, then the changed signals."""
        self._analogs(self._dt_s)
        self._weigh(ts)
        return self._emit(ts)

    def _weigh(self, ts: int) -> None:
        """A quality check, every `fill.every_s` while it runs: `fill.burst` parts weighed."""
        fill = self.fill
        self.fill_weights = []
        if fill is None or ts < self._fill_due or self.published_state[0] != "running":
            return
        mean = fill.mean_at((ts - self.start_ms) / 3_600_000)
        self.fill_weights = [
            round(self._fill_rng.gauss(mean, fill.sigma), 2) for _ in range(fill.burst)
        ]
        self._fill_due = ts + round(fill.every_s * 1000)

    def _produce(self, ts: int, dt_s: float) -> None:
        cycle = self.ideal_cycle_time_s / self.rate * (1.0 + self.rng.gauss(0.0, 0.02))
        self._fraction += dt_s / max(cycle, 1e-6)
        parts = int(self._fraction)
        self._fraction -= parts
        rate = self.b.reject_rate
        if ts <= self.ramp_until:
            rate = min(1.0, rate * self.b.changeover_reject_factor)
        rejects = sum(1 for _ in range(parts) if self.rng.random() < rate)
        if self.fill is not None:
            # The checkweigher: a part out of specification is rejected (if not already).
            mean = self.fill.mean_at((ts - self.start_ms) / 3_600_000)
            sigma = self.fill.sigma
            out = sum(
                1
                for _ in range(parts - rejects)
                if not self.fill.in_spec(self._fill_rng.gauss(mean, sigma))
            )
            rejects += out
            self.fill_rejects += out
        self.total += parts
        self.rejects += rejects
        self.parts_made += parts
        self.rejects_made += rejects

    def _reset(self, ts: int) -> None:
        self.total = self.rejects = 0
        self.resets.append(ts)

    def _transition(self, ts: int) -> None:
        b = self.b
        if self.state != "running":
            if self.state == "changeover":
                self.ramp_until = ts + round(b.changeover_ramp_s * 1000)
            self._enter("running", None, ts, b.mean_run_s)
            return
        draw = self.rng.random()
        can_change = len(self.products) > 1
        down_share = b.down_share if can_change else b.down_share / (b.down_share + b.idle_share)
        if draw < down_share:
            reason = self.rng.choice(sorted(b.down_reasons))
            self._enter("down", reason, ts, b.down_reasons[reason])
        elif draw < down_share + b.idle_share or not can_change:
            self._enter("idle", self.rng.choice(IDLE_REASONS), ts, b.mean_idle_s)
        else:
            # The new order's product is set up during the changeover.
            self.product = self.rng.choice([p for p in self.products if p != self.product])
            # Lot counters are reset once the changeover is under way.
            self._reset_next = self.rng.random() < b.reset_on_changeover
            self._enter("changeover", None, ts, b.mean_changeover_s)

    def _enter(self, state: State, reason: str | None, ts: int, mean_s: float) -> None:
        self.state, self.reason, self.since = state, reason, ts
        self.until = ts + self._duration(mean_s) if math.isfinite(mean_s) else NEVER_MS

    def _analogs(self, dt_s: float) -> None:
        b = self.b
        running = self.published_state[0] == "running"
        target = b.running_temperature_c if running else b.ambient_temperature_c
        pull = 1.0 - math.exp(-dt_s / b.temperature_tau_s) if dt_s > 0 else 0.0
        self.temperature += (target - self.temperature) * pull + self.rng.gauss(0.0, 0.05)
        self._speed_noise = self.rng.gauss(0.0, 0.01)

    def _counter(self, signal: str, raw: int) -> int:
        maximum = self.spec.counter_max.get(signal)
        return raw % (maximum + 1) if maximum is not None else raw

    def _value(self, signal: str) -> Value:
        if signal == "total_count":
            return self._counter(signal, self.total)
        if signal == "reject_count":
            return self._counter(signal, self.rejects)
        if signal == "good_count":
            return self._counter(signal, self.total - self.rejects)
        if signal == PRODUCT:
            return self.product
        if signal == IDEAL:
            return self.ideal_cycle_time_s
        if signal == SPEED:
            if self.published_state[0] != "running":
                return 0.0
            nominal = 60.0 * self.rate / self.ideal_cycle_time_s  # parts per minute
            return round(nominal * (1.0 + self._speed_noise), 2)
        if signal == TEMPERATURE:
            return round(self.temperature, 2)
        return round(self.extra_base[signal] + self._noise.gauss(0.0, 1.0), 3)

    def _emit(self, ts: int) -> list[Event]:
        out: list[Event] = []
        machine = self.spec.machine
        for signal in self.spec.signals:
            if signal == STATE:
                state, reason = self.published_state
                value: Value = self.spec.state_values.get(state, state)
                if self.last_state != (value, reason):
                    self.last_state = (value, reason)
                    out.append(Event(ts, machine, STATE, value, reason))
                continue
            if self.fill is not None and signal == self.fill.signal:
                # Every weight, 1 ms apart: one sample each, in the order weighed.
                out.extend(
                    Event(ts + i, machine, signal, w) for i, w in enumerate(self.fill_weights)
                )
                continue
            value = self._value(signal)
            if self.last.get(signal) != value or signal not in self.last:
                self.last[signal] = value
                out.append(Event(ts, machine, signal, value))
        return out


class PlannedTime:
    """Whether a line is in planned production time (in a shift, not in a break).

    A line without shifts is always planned: the simulator then never stops for the
    calendar. Intervals are looked up from the calendar a few hours at a time.
    """

    HORIZON_MS: Final = 6 * 3_600_000

    def __init__(self, plant: PlantConfig) -> None:
        self.calendar = Calendar(plant)
        self._has_shifts = {line.id: bool(plant.shifts_for(line)) for line in plant.lines}
        self._cache: dict[str, tuple[int, int, list[tuple[int, int]]]] = {}
        self._span: dict[str, tuple[int, int]] = {}

    def __call__(self, line: str, ts: int) -> bool:
        if not self._has_shifts.get(line, False):
            return True
        cached = self._cache.get(line)
        if cached is None or not cached[0] <= ts < cached[1]:
            end = ts + self.HORIZON_MS
            cached = (ts, end, self.calendar.planned_intervals(line, ts, end))
            self._cache[line] = cached
        return any(lo <= ts < hi for lo, hi in cached[2])

    def shift_fraction(self, line: str, ts: int) -> float | None:
        """How far into its shift the line is at `ts` (0 to 1); None outside shifts."""
        span = self._span.get(line)
        if span is None or not span[0] <= ts < span[1]:
            if not self._has_shifts.get(line, False):
                return None
            found = self.calendar.spans(line, ts, ts + 1)
            if not found:
                return None
            span = self._span[line] = (found[0].start, found[0].end)
        return (ts - span[0]) / (span[1] - span[0])


class PlantModel:
    """All simulated machines, stepped together one tick at a time, as `scenario` says."""

    def __init__(
        self,
        plant: PlantConfig,
        specs: list[MachineSpec],
        *,
        seed: int,
        start_ms: int,
        tick_ms: int,
        behaviour: Behaviour | None = None,
        scenario: Scenario | None = None,
    ) -> None:
        if tick_ms <= 0:
            raise ValueError(f"tick must be > 0 ms, got {tick_ms}")
        behaviour = behaviour or Behaviour()
        scenario = scenario or Scenario()
        scenario.check(plant)
        self.scenario = scenario
        self.start_ms, self.tick_ms, self.ticks = start_ms, tick_ms, 0
        self._now_ms = start_ms
        self.planned = PlannedTime(plant)
        self.machines = [self._machine(s, behaviour, seed, start_ms) for s in specs]
        by_id = {m.spec.machine: m for m in self.machines}
        # Coupled lines: buffer ms and the simulated machines in line order.
        self.coupled = [
            (
                round(scenario.coupling[line.id] * 1000),
                [by_id[m.id] for m in line.machines if m.id in by_id],
            )
            for line in plant.lines
            if line.id in scenario.coupling
        ]

    def _machine(
        self, spec: MachineSpec, behaviour: Behaviour, seed: int, start_ms: int
    ) -> MachineModel:
        stops = self.scenario.stops_of(spec.machine, spec.line)
        if stops is not None:
            behaviour = behaviour.with_stops(stops)
        speed = self.scenario.speed_of(spec.machine, spec.line)
        fill = self.scenario.fill.get(spec.machine)
        if fill is not None and fill.signal not in spec.signals:
            spec = replace(spec, signals=(*spec.signals, fill.signal))
        if speed is None:
            return MachineModel(spec, behaviour, seed, start_ms, fill=fill)
        line, fraction = spec.line, self.planned.shift_fraction

        def rate(ts: int) -> float:
            return speed.at(fraction(line, ts))

        return MachineModel(spec, behaviour, seed, start_ms, rate, fill)

    @property
    def now_ms(self) -> int:
        """Plant time of the next step."""
        return self._now_ms

    def steps_until(self, end_ms: int, tick_ms: int | None = None) -> Iterator[list[Event]]:
        """Each step's events until plant time reaches `end_ms`, as fast as they are taken:
        a plant's history before it goes live, or a span of it offline. The model stays
        where it stopped, so stepping on (live) continues the same plant.

        `tick_ms` (default: the model's tick) is the plant time per step, the last one cut
        to end at `end_ms`: a long history may take longer steps (states then change, and
        analog tags are published, on that coarser grid) to be generated in seconds."""
        while self._now_ms < end_ms:
            yield self.step(min(tick_ms or self.tick_ms, end_ms - self._now_ms))

    def republish(self) -> None:
        """Make the next tick publish every signal's value, as the first one does: what a
        source that starts serving (an OPC-UA server's nodes, a Sparkplug birth) must carry
        after a history that went elsewhere. Counters and states go on unchanged."""
        for machine in self.machines:
            machine.last.clear()
            machine.last_state = None

    def step(self, tick_ms: int | None = None) -> list[Event]:
        """Events at the next step's plant time, then plant time moves on by `tick_ms`
        (default: the model's tick). The first step publishes every signal's value."""
        ts = self._now_ms
        self._now_ms += tick_ms or self.tick_ms
        self.ticks += 1
        for machine in self.machines:
            machine.advance(ts, planned=self.planned(machine.spec.line, ts))
        for buffer_ms, line in self.coupled:
            settle_waits(line, ts, buffer_ms)
        out: list[Event] = []
        for machine in self.machines:
            out.extend(machine.publish(ts))
        return out


def settle_waits(line: list[MachineModel], ts: int, buffer_ms: int) -> None:
    """Who of a coupled line waits at `ts`, on a machine stopped `down` or in changeover.

    A machine `i` buffers away from a stopped one waits once the stop has lasted
    `i × buffer_ms`: starved if the stop is upstream (earlier in the line), else blocked;
    starved wins when both. Its own stop, if it has one, shows instead (`published_state`).
    """
    stopped = [(i, m.since) for i, m in enumerate(line) if m.state in LINE_STOPS]
    for j, machine in enumerate(line):
        starved = blocked = False
        for i, since in stopped:
            if i != j and ts - since >= abs(i - j) * buffer_ms:
                starved = starved or i < j
                blocked = blocked or i > j
        machine.wait = STARVED if starved else BLOCKED if blocked else None
