"""The simulator's machine model: seeded, realistic, and truthful about what it publishes."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from linepulse.config import STATES, PlantConfig, parse_config
from services.ingest.simulator.generate import events_frame, simulate_events, simulated_specs
from services.ingest.simulator.layout import plan
from services.ingest.simulator.model import (
    DOWN_REASONS,
    IDLE_REASONS,
    Behaviour,
    Event,
    PlantModel,
    state_values,
)
from services.ingest.simulator.scenario import Scenario, Speed, Stops, parse_scenario
from services.ingest.simulator.truth import TruthLog

ROOT = Path(__file__).parents[3]
PACKML = {6: "running", 5: "idle", 11: "down", 17: "changeover", 2: "planned_stop", 9: "down"}
# Monday 2026-11-02 05:00 UTC = 06:00 in Berlin, when the early shift starts.
START = int(datetime(2026, 11, 2, 5, 0, tzinfo=UTC).timestamp() * 1000)
FAST = Behaviour().faster(30)  # a stop every ~30 s, so an hour holds plenty of everything


def plant(*, shifts: bool = False) -> PlantConfig:
    data: dict[str, Any] = {
        "site": "test",
        "timezone": "Europe/Berlin",
        "lines": [
            {
                "id": "l1",
                "machines": [
                    {"id": "press", "products": {"a": 1.0, "b": 2.0, "c": 0.5}},
                    {"id": "packml", "products": {"x": 1.5, "y": 3.0}, "state_map": PACKML},
                    {"id": "small", "ideal_cycle_time_s": 0.2, "counter_max": 999},
                    {"id": "goodrej", "ideal_cycle_time_s": 0.5},
                ],
            }
        ],
        "sources": {
            "opcua": [
                {
                    "id": "plc",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "machines": [
                        {
                            "machine": "goodrej",
                            "nodes": {
                                s: f"ns=2;s=goodrej.{s}"
                                for s in ("state", "good_count", "reject_count", "vibration")
                            },
                        }
                    ],
                }
            ],
            "mqtt": [
                {
                    "id": "broker",
                    "topics": [{"pattern": "p/{line}/{machine}/{signal}"}],
                    "machines": ["press", "packml", "small"],
                }
            ],
        },
    }
    if shifts:
        data["shifts"] = [
            {
                "name": "early",
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"start": "06:20", "end": "06:30"}],
            }
        ]
    return parse_config(data)


def run(
    seed: int, ticks: int, *, shifts: bool = False, tick_ms: int = 1000
) -> tuple[PlantModel, list[Event]]:
    config = plant(shifts=shifts)
    model = PlantModel(
        config,
        list(plan(config).specs.values()),
        seed=seed,
        start_ms=START,
        tick_ms=tick_ms,
        behaviour=FAST,
    )
    events: list[Event] = []
    for _ in range(ticks):
        events.extend(model.step())
    return model, events


def by_machine(events: list[Event], signal: str) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.signal == signal:
            out[e.machine].append(e)
    return out


def increases(series: list[Event]) -> list[int]:
    """Times at which a counter went up (parts were made)."""
    return [
        after.ts
        for before, after in itertools.pairwise(series)
        if isinstance(after.value, int) and isinstance(before.value, int)
        if after.value > before.value
    ]


def test_same_seed_same_events_and_other_seed_other_events() -> None:
    _, first = run(7, 1800)
    _, again = run(7, 1800)
    _, other = run(8, 1800)
    assert first == again
    assert first != other
    assert len(first) > 1000


def test_first_tick_publishes_every_signal_of_every_machine() -> None:
    model, _ = run(1, 0)
    first = model.step()
    published = {(e.machine, e.signal) for e in first}
    expected = {(s.machine, sig) for m in model.machines for s in [m.spec] for sig in s.signals}
    assert published == expected
    assert all(e.ts == START for e in first)


def test_counters_only_step_down_at_a_logged_reset_or_a_rollover() -> None:
    model, events = run(3, 3600)
    resets = {m.spec.machine: set(m.resets) for m in model.machines}
    assert sum(len(r) for r in resets.values()) > 0, "an hour of fast behaviour has resets"
    rollovers = 0
    for signal in ("total_count", "reject_count", "good_count"):
        for machine, series in by_machine(events, signal).items():
            for before, after in itertools.pairwise(series):
                assert isinstance(before.value, int)
                assert isinstance(after.value, int)
                if after.value >= before.value:
                    continue
                if after.ts in resets[machine]:
                    continue
                # `small` wraps at its counter_max of 999.
                assert machine == "small"
                assert before.value > 900
                rollovers += 1
    assert rollovers > 0


def test_counted_parts_equal_parts_made() -> None:
    """Summing positive steps (a step down counts from zero, DESIGN.md) finds every part."""
    model, events = run(4, 3600)
    made = {m.spec.machine: m.parts_made for m in model.machines}
    for machine, series in by_machine(events, "total_count").items():
        counted = 0
        for before, after in itertools.pairwise(series):
            assert isinstance(before.value, int)
            assert isinstance(after.value, int)
            step = after.value - before.value
            counted += step if step >= 0 else after.value
        if machine == "small":  # rollovers at 999 need the config's counter_max
            continue
        assert counted == made[machine], machine
        assert counted > 0


def test_stops_have_reasons_and_running_has_none() -> None:
    _, events = run(5, 3600)
    seen: set[str] = set()
    for e in events:
        if e.signal != "state":
            continue
        state = PACKML.get(e.value, e.value) if isinstance(e.value, int) else e.value
        seen.add(str(state))
        if state == "down":
            assert e.reason in DOWN_REASONS
        elif state == "idle":
            assert e.reason in IDLE_REASONS
        else:
            assert e.reason is None
    assert {"running", "down", "idle", "changeover"} <= seen


def test_changeovers_switch_product_and_nothing_is_made_during_them() -> None:
    _, events = run(6, 3600)
    products = {(e.machine, e.ts): e.value for e in events if e.signal == "product"}
    changeovers = [
        e
        for e in events
        if e.signal == "state" and e.value in ("changeover", 17) and e.machine != "small"
    ]
    assert len(changeovers) >= 3
    for e in changeovers:
        assert (e.machine, e.ts) in products, "a changeover starts with the new product"
    for machine, series in by_machine(events, "product").items():
        values = [e.value for e in series]
        assert all(a != b for a, b in itertools.pairwise(values)), machine
    # Between a changeover's start and the next state no part is made (a reset may show).
    states = by_machine(events, "state")
    for machine, series in states.items():
        made = increases(by_machine(events, "total_count").get(machine, []))
        for start, end in itertools.pairwise(series):
            if start.value in ("changeover", 17):
                assert [ts for ts in made if start.ts < ts <= end.ts] == [], machine


def test_rejects_are_more_frequent_just_after_a_changeover() -> None:
    _, events = run(9, 7200)
    ramp_ms = round(FAST.changeover_ramp_s * 1000)
    ends = [
        (a.machine, b.ts)
        for series in by_machine(events, "state").values()
        for a, b in itertools.pairwise(series)
        if a.value == "changeover"
    ]
    assert ends
    after = total_after = rejects_all = total_all = 0
    totals = by_machine(events, "total_count")
    rejects = by_machine(events, "reject_count")
    for machine in ("press",):
        t = {e.ts: e.value for e in totals[machine]}
        r = {e.ts: e.value for e in rejects[machine]}
        prev_t = prev_r = None
        for ts in sorted(t.keys() | r.keys()):
            cur_t, cur_r = t.get(ts, prev_t), r.get(ts, prev_r)
            if prev_t is not None and isinstance(cur_t, int) and isinstance(prev_t, int):
                dt = cur_t - prev_t
                dr = (cur_r - prev_r) if isinstance(cur_r, int) and isinstance(prev_r, int) else 0
                if dt > 0 and dr >= 0:
                    total_all += dt
                    rejects_all += dr
                    if any(m == machine and end < ts <= end + ramp_ms for m, end in ends):
                        total_after += dt
                        after += dr
            prev_t, prev_r = cur_t, cur_r
    assert total_after > 0
    assert after / total_after > 2 * (rejects_all - after) / (total_all - total_after)


def test_packml_numbers_only_on_machines_that_map_them() -> None:
    config = plant()
    _, events = run(2, 3600)
    for e in by_machine(events, "state")["packml"]:
        assert isinstance(e.value, int)
        assert config.state_map_for(config.machines()["packml"][1])[str(e.value)] in STATES
    for machine in ("press", "small", "goodrej"):
        for e in by_machine(events, "state")[machine]:
            assert isinstance(e.value, str)
            assert e.value in STATES


def test_state_values_take_the_first_number_per_state_and_fill_gaps() -> None:
    assert state_values({"6": "running", "5": "idle", "4": "idle", "11": "down"}) == {
        "running": 6,
        "idle": 5,
        "down": 11,
        "changeover": 5,
        "planned_stop": 5,
    }
    assert state_values({"RUN": "running", "STOP": "down"}) == {"running": "RUN", "down": "STOP"}
    assert state_values({}) == {}


def test_breaks_and_time_outside_shifts_are_planned_stops() -> None:
    # 06:00-14:00 Berlin with a break 06:20-06:30; the run starts at 05:50 local.
    config = plant(shifts=True)
    start = START - 10 * 60_000
    model = PlantModel(
        config,
        list(plan(config).specs.values()),
        seed=1,
        start_ms=start,
        tick_ms=5000,
        behaviour=FAST,
    )
    events: list[Event] = []
    for _ in range(60 * 12):  # one hour
        events.extend(model.step())
    shift_start, break_start, break_end = (START + m * 60_000 for m in (0, 20, 30))
    for machine, series in by_machine(events, "state").items():
        stops = {e.ts for e in series if e.value in ("planned_stop", 2)}
        assert stops == {start, break_start}, machine
        starts = {e.ts for e in series if e.value in ("running", 6)}
        assert {shift_start, break_end} <= starts, machine
    for machine, series in by_machine(events, "total_count").items():
        made = increases(series)
        assert made, machine
        assert [ts for ts in made if ts <= shift_start or break_start < ts <= break_end] == []


def test_extra_signals_are_noisy_analogs_every_tick() -> None:
    _, events = run(1, 50)
    vibration = [e for e in events if e.machine == "goodrej" and e.signal == "vibration"]
    assert len(vibration) == 50
    assert all(isinstance(e.value, float) for e in vibration)
    assert len({e.value for e in vibration}) > 40


def test_truth_lines_are_valid_telemetry_events(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "schemas" / "telemetry-event.schema.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    _, events = run(11, 1200)
    path = tmp_path / "truth.jsonl"
    with TruthLog(path) as log:
        log.write(events)
    lines = path.read_text().splitlines()
    assert len(lines) == len(events)
    for line in lines:
        errors = list(validator.iter_errors(json.loads(line)))
        assert errors == [], line
    assert [Event(**json.loads(line)) for line in lines] == events


@pytest.mark.parametrize("tick_ms", [0, -5])
def test_a_tick_must_be_positive(tick_ms: int) -> None:
    with pytest.raises(ValueError, match="tick"):
        run(1, 1, tick_ms=tick_ms)


# -- scenarios: coupled lines, speeds, own stops ----------------------------------------------

# What the model makes of seed 7 without a scenario (since rollover counters stopped
# resetting): scenarios must leave the default behaviour drawing exactly the same.
DEFAULT_DIGEST = "e8ec4ad3e08af373594a18eb7e5096a1cc724785ddeaaac2f1ae6192626a42f5"


def digest(events: list[Event]) -> str:
    lines = b"\n".join(json.dumps(e.as_json(), separators=(",", ":")).encode() for e in events)
    return hashlib.sha256(lines).hexdigest()


@pytest.mark.parametrize("scenario", [None, Scenario(), Scenario(coupling={}, speed={})])
def test_without_a_scenario_the_model_draws_what_it_always_did(scenario: Scenario | None) -> None:
    config = plant(shifts=True)
    model = PlantModel(
        config,
        list(plan(config).specs.values()),
        seed=7,
        start_ms=START - 10 * 60_000,
        tick_ms=1000,
        behaviour=FAST,
        scenario=scenario,
    )
    events = [e for _ in range(3600) for e in model.step()]
    assert len(events) == 27116
    assert digest(events) == DEFAULT_DIGEST


LINE_IDS = ("a", "b", "c", "d")  # in line order


def line_plant(*, products: bool = False) -> PlantConfig:
    """One line of four 1 s machines (with two products to change over between, if
    `products`), in no source, with an 06:00-14:00 shift (UTC)."""
    made: dict[str, Any] = {"products": {"x": 1.0, "y": 1.0}} if products else {}
    return parse_config(
        {
            "site": "test",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
            "lines": [
                {
                    "id": "l1",
                    "machines": [{"id": m, "ideal_cycle_time_s": 1.0, **made} for m in LINE_IDS],
                }
            ],
        }
    )


# 06:00 UTC: the shift's start.
SHIFT = START + 3_600_000


def line_run(
    scenario: Scenario, *, hours: float = 1.0, seed: int = 1, products: bool = False
) -> list[Event]:
    return simulate_events(
        line_plant(products=products),
        seed=seed,
        start_ms=SHIFT,
        end_ms=SHIFT + round(hours * 3_600_000),
        scenario=scenario,
        signals=("state", "total_count"),
    )


def intervals(events: list[Event], end: int) -> dict[str, list[tuple[int, int, str, str | None]]]:
    """Per machine: (from, to, state, reason) of each published state."""
    out: dict[str, list[tuple[int, int, str, str | None]]] = {}
    for machine, series in by_machine(events, "state").items():
        ends = [e.ts for e in series[1:]] + [end]
        out[machine] = [
            (e.ts, t, str(e.value), e.reason) for e, t in zip(series, ends, strict=True)
        ]
    return out


def made_between(events: list[Event], machine: str, lo: int, hi: int) -> int:
    """Parts counted at ticks in (lo, hi]."""
    series = by_machine(events, "total_count")[machine]
    out = 0
    for before, after in itertools.pairwise(series):
        if lo < after.ts <= hi:
            assert isinstance(after.value, int)
            assert isinstance(before.value, int)
            out += after.value - before.value
    return out


ONE_FAILS = Scenario(
    "b fails",
    coupling={"l1": 20.0},
    stops={"l1": Stops(math.inf), "b": Stops(mean_run_s=300.0, mean_down_s=120.0)},
)


def test_a_stop_starves_the_machines_after_it_and_blocks_those_before() -> None:
    end = SHIFT + 2 * 3_600_000
    events = line_run(ONE_FAILS, hours=2)
    spans = intervals(events, end)
    stops = [(lo, hi) for lo, hi, state, _ in spans["b"] if state == "down"]
    assert len(stops) >= 10
    assert all(state in ("running", "down") for _, _, state, _ in spans["b"])
    expected: dict[str, set[tuple[int, int, str, str | None]]] = {m: set() for m in "acd"}
    for lo, hi in stops:
        # a waits 1 buffer (20 s) upstream, c 1 buffer and d 2 buffers downstream.
        for machine, delay, reason in (("a", 20_000, "blocked"), ("c", 20_000, "starved")):
            if hi - lo > delay:
                expected[machine].add((lo + delay, hi, "idle", reason))
        if hi - lo > 40_000:
            expected["d"].add((lo + 40_000, hi, "idle", "starved"))
    for machine in "acd":
        waits = {span for span in spans[machine] if span[2] != "running"}
        assert waits == expected[machine], machine
        assert expected[machine], machine
        for lo, hi, _, _ in waits:
            assert made_between(events, machine, lo + 1000, hi) == 0, "nothing made waiting"


def test_every_wait_has_a_stopped_machine_far_enough_up_or_down_the_line() -> None:
    scenario = Scenario("all default, coupled", coupling={"l1": 10.0})
    events = line_run(scenario, hours=4, seed=5, products=True)
    spans = intervals(events, SHIFT + 4 * 3_600_000)
    reasons = {(state, reason) for series in spans.values() for _, _, state, reason in series}
    # Own stops (with reasons), own idles, changeovers and waits all occur.
    assert {("idle", "starved"), ("idle", "blocked"), ("changeover", None)} <= reasons
    assert any(state == "down" for state, _ in reasons)
    for machine, series in spans.items():
        i = LINE_IDS.index(machine)
        for lo, _, state, reason in series:
            if state != "idle":
                continue
            # A wait has a machine stopped down or in changeover upstream (starved) or
            # downstream (blocked) for at least the buffers between; an own idle may not.
            others = [
                (j, o_lo)
                for j, other in enumerate(LINE_IDS)
                if j != i
                for o_lo, o_hi, o_state, _ in spans[other]
                if o_state in ("down", "changeover") and o_lo <= lo < o_hi
            ]
            side = [
                o_lo
                for j, o_lo in others
                if (j < i if reason == "starved" else j > i) and lo - o_lo >= abs(i - j) * 10_000
            ]
            own = not others  # an own idle, drawn by the machine itself
            assert side or own, (machine, lo, reason)
    # A machine whose own stop ends while the line is still stopped waits on straight away.
    assert [
        machine
        for machine, series in spans.items()
        for before, after in itertools.pairwise(series)
        if before[2] in ("down", "changeover")
        and after[2:] in (("idle", "starved"), ("idle", "blocked"))
    ]


def test_uncoupled_a_failing_machine_stops_only_itself() -> None:
    alone = Scenario("b fails alone", stops=ONE_FAILS.stops)
    spans = intervals(line_run(alone), SHIFT + 3_600_000)
    assert [s for s in spans["b"] if s[2] == "down"]
    for machine in "acd":
        assert [state for _, _, state, _ in spans[machine]] == ["running"], machine


@pytest.mark.parametrize("factor", [0.5, 0.7, 1.0])
def test_a_speed_factor_is_the_rate_against_the_ideal(factor: float) -> None:
    scenario = Scenario("steady", speed={"l1": Speed(factor)}, stops={"l1": Stops(math.inf)})
    events = line_run(scenario)
    for machine in LINE_IDS:
        made = made_between(events, machine, SHIFT, SHIFT + 3_600_000)
        assert made == pytest.approx(3600 * factor, rel=0.01), machine


def test_a_machine_speed_beats_its_lines_and_speed_shows_on_the_speed_signal() -> None:
    scenario = Scenario(
        "c slower", speed={"l1": Speed(0.9), "c": Speed(0.6)}, stops={"l1": Stops(math.inf)}
    )
    events = simulate_events(
        line_plant(),
        seed=1,
        start_ms=SHIFT,
        end_ms=SHIFT + 600_000,
        scenario=scenario,
        signals=("state", "total_count", "speed"),
    )
    speeds = {m: [e.value for e in series] for m, series in by_machine(events, "speed").items()}
    assert all(v == pytest.approx(54.0, rel=0.05) for v in speeds["a"])  # parts per minute
    assert all(v == pytest.approx(36.0, rel=0.05) for v in speeds["c"])
    assert made_between(events, "c", SHIFT, SHIFT + 600_000) == pytest.approx(360, rel=0.02)


def test_a_degrading_speed_falls_over_each_shift() -> None:
    scenario = Scenario("wearing", speed={"l1": Speed(1.0, 0.5)}, stops={"l1": Stops(math.inf)})
    events = line_run(scenario, hours=8)
    hours = [
        made_between(events, "a", SHIFT + h * 3_600_000, SHIFT + (h + 1) * 3_600_000)
        for h in range(8)
    ]
    # The mean factor of hour h is 1 - 0.5 (h + 0.5) / 8.
    for h, made in enumerate(hours):
        assert made == pytest.approx(3600 * (1 - 0.5 * (h + 0.5) / 8), rel=0.02), h
    assert hours == sorted(hours, reverse=True)


def test_own_stops_are_failures_at_the_set_rate_and_length() -> None:
    scenario = Scenario("b fails", stops={"b": Stops(mean_run_s=300.0, mean_down_s=120.0)})
    spans = intervals(line_run(scenario, hours=8, seed=2), SHIFT + 8 * 3_600_000)
    downs = [hi - lo for lo, hi, state, _ in spans["b"] if state == "down"]
    runs = [hi - lo for lo, hi, state, _ in spans["b"][:-1] if state == "running"]
    assert {state for _, _, state, _ in spans["b"]} == {"running", "down"}
    assert all(reason in DOWN_REASONS for _, _, state, reason in spans["b"] if state == "down")
    assert sum(downs) / len(downs) == pytest.approx(120_000, rel=0.25)
    assert sum(runs) / len(runs) == pytest.approx(300_000, rel=0.25)
    # The others keep their default behaviour.
    assert {state for _, _, state, _ in spans["a"]} > {"running", "down"}


def test_simulate_events_is_the_models_ticks_in_time_order() -> None:
    def key(e: Event) -> tuple[int, str, str]:
        return e.ts, e.machine, e.signal

    events = simulate_events(
        plant(), seed=7, start_ms=START, end_ms=START + 3_600_000, behaviour=FAST
    )
    _, served = run(7, 3600)  # the sourced machines publish what they serve
    assert sorted(events, key=key) == sorted(served, key=key)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    frame = events_frame(events)
    assert frame.height == len(events)
    assert frame.filter(frame["signal"] == "state").get_column("value_str").null_count() > 0


def test_machines_in_no_source_are_simulated_with_the_given_signals() -> None:
    specs = simulated_specs(line_plant(), ("state", "total_count"))
    assert [s.machine for s in specs] == list(LINE_IDS)
    assert all(s.signals == ("state", "total_count") for s in specs)
    defaults = simulated_specs(line_plant())
    assert defaults[0].signals == ("state", "total_count", "reject_count", "speed", "temperature")


def test_parse_scenario_presets_and_items() -> None:
    config = line_plant()
    bottleneck = parse_scenario("bottleneck=b", config)
    assert bottleneck.coupling == {"l1": 30.0}
    assert bottleneck.stops == {"l1": Stops(math.inf), "b": Stops(600.0, 300.0)}
    assert bottleneck.stops_of("b", "l1") == Stops(600.0, 300.0)
    assert bottleneck.stops_of("c", "l1") == Stops(math.inf)
    slow = parse_scenario("slow=l1", config)
    assert slow.speed == {"l1": Speed(0.65)}
    full = parse_scenario(
        "couple=l1:45, speed=l1:0.9, speed=c:1.0:0.6, stops=l1:never, stops=d:900:60", config
    )
    assert full.coupling == {"l1": 45.0}
    assert full.speed_of("c", "l1") == Speed(1.0, 0.6)
    assert full.speed_of("a", "l1") == Speed(0.9)
    assert full.stops_of("d", "l1") == Stops(900.0, 60.0)
    assert (
        full.name == "couple=l1:45, speed=l1:0.9, speed=c:1.0:0.6, stops=l1:never, stops=d:900:60"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty spec"),
        ("bottleneck=zz", "'bottleneck=zz': 'zz' is not a machine"),
        ("couple=b", "coupling: 'b' is not a line"),
        ("speed=l1:fast", "'speed=l1:fast': 'fast' is not a number"),
        ("speed=l1:0", "speed factor must be in"),
        ("stops=b:0", "mean_run_s must be > 0"),
        ("stops=q:never", "stops: 'q' is not a line or machine"),
        ("wobble=l1", "'wobble=l1': expected couple="),
        ("couple", "'couple': expected KEY=VALUE"),
    ],
)
def test_parse_scenario_errors_name_the_item(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_scenario(spec, line_plant())


def test_a_scenario_naming_no_such_machine_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="'nope' is not a line or machine"):
        line_run(Scenario("bad", stops={"nope": Stops(60.0)}))
