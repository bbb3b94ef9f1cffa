"""The simulator's machine model: seeded, realistic, and truthful about what it publishes."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from linepulse.config import STATES, PlantConfig, parse_config
from services.ingest.simulator.layout import plan
from services.ingest.simulator.model import (
    DOWN_REASONS,
    IDLE_REASONS,
    Behaviour,
    Event,
    PlantModel,
    state_values,
)
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
