"""The simulator's drifting fill weight (scenario `fill`, issue 21): a filler's weights
creep up 0.1 g an hour; hourly quality checks of five parts, charted live
(linepulse/spc_stream.py) with every rule, break a rule hours before the checkweigher's
rejects rise above their normal level; the same filler without the drift (the same seed,
so the same noise) breaks nothing all day."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from linepulse.config import PlantConfig, parse_config
from linepulse.spc import SpcChart
from linepulse.spc_stream import Point, SpcStream
from services.ingest.simulator.model import Behaviour, PlantModel, machine_spec
from services.ingest.simulator.scenario import Fill, Scenario, parse_scenario

T0 = int(datetime(2026, 11, 2, 0, 0, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
SEED = 3
CHART = SpcChart.model_validate(
    {
        "machine": "filler-1",
        "signal": "fill_g",
        "subgroup_size": 5,
        "limits": {"center": 500.0, "sigma": 0.8},
    }
)


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "s",
            "shifts": [{"name": "all-day", "start": "00:00", "end": "00:00"}],
            "lines": [{"id": "fill", "machines": [{"id": "filler-1", "ideal_cycle_time_s": 1.0}]}],
        }
    )


@dataclass
class Run:
    points: list[Point] = field(default_factory=list)
    hours: list[tuple[int, int]] = field(default_factory=list)  # (parts, rejects) an hour
    fill_rejects: int = 0


def simulate(drift_g_per_h: float, hours: int) -> Run:
    config = plant()
    line, machine = config.machines()["filler-1"]
    spec = machine_spec(config, machine, line.id, ("state", "total_count", "reject_count"))
    fill = Fill(drift_g_per_h, every_s=3600)
    model = PlantModel(
        config,
        [spec],
        seed=SEED,
        start_ms=T0,
        tick_ms=1000,
        scenario=Scenario(fill={"filler-1": fill}),
    )
    filler = model.machines[0]
    stream = SpcStream(CHART, 0)
    run = Run()
    made = rejected = 0
    for hour in range(hours):
        for events in model.steps_until(T0 + (hour + 1) * HOUR):
            samples = [(e.ts, float(e.value)) for e in events if e.signal == "fill_g"]
            run.points += stream.add(samples)
        run.hours.append((filler.parts_made - made, filler.rejects_made - rejected))
        made, rejected = filler.parts_made, filler.rejects_made
    run.fill_rejects = filler.fill_rejects
    return run


def rejects_move(run: Run) -> int:
    """The first hour whose rejects are more than 3 sigma (Poisson) above what the
    machine's reject rate makes of that hour's parts: when a person would see them rise."""
    rate = Behaviour().reject_rate
    for hour, (parts, rejects) in enumerate(run.hours):
        expected = rate * parts
        if rejects > expected + 3 * math.sqrt(expected):
            return hour
    return len(run.hours)


def test_a_slow_drift_breaks_a_rule_before_the_rejects_rise() -> None:
    drifting = simulate(0.1, 16)
    alarms = [p for p in drifting.points if p.broken]
    assert alarms, "the drift broke no rule in 16 hours"
    first = alarms[0]
    alarm_hour = (first.end - T0) / HOUR
    moved = rejects_move(drifting)
    assert alarm_hour < moved - 2, (alarm_hour, moved, drifting.hours)
    assert drifting.fill_rejects > 0  # the drift does reach the reject counter, later
    # A rule for a small sustained shift fires first, not a point beyond the limits.
    assert set(first.broken) & {"2_of_3_beyond_2sigma", "4_of_5_beyond_1sigma",
                                "8_on_one_side", "6_trending"}  # fmt: skip
    # The same noise without the drift breaks nothing by then: the alarm is the drift's.
    stable = simulate(0.0, math.ceil(alarm_hour))
    assert [p for p in stable.points if p.broken and p.end <= first.end] == []


def test_a_stable_fill_weight_breaks_nothing_over_a_day() -> None:
    """24 hourly subgroups with every rule watched: at this chart's false alarm rate (one
    in about 65 subgroups for all rules together, docs/spc.md) most stable days are quiet,
    and this one is."""
    stable = simulate(0.0, 24)
    # A check falls due while the filler is stopped waits for it to run; the last one
    # closes with the next sample.
    assert len(stable.points) >= 22
    assert [p.broken for p in stable.points if p.broken] == []
    assert rejects_move(stable) == 24  # the rejects stay at their normal level all day


def test_the_fill_scenario_from_the_command_line() -> None:
    scenario = parse_scenario("fill=filler-1:0.2:300", plant())
    assert scenario.fill["filler-1"] == Fill(0.2, 300.0)
    with pytest.raises(ValueError, match="'press-9' is not a machine"):
        parse_scenario("fill=press-9", plant())
