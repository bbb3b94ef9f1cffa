"""Hand-computed cases for the KPI core: each expected figure is worked out in the test."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.unit.kpi.core.support import at, ev, plant, run

EXAMPLES = Path(__file__).parents[4] / "examples"


def classic_events() -> list[dict[str, Any]]:
    text = (EXAMPLES / "classic-oee" / "events.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_classic_worked_example_is_exact() -> None:
    from linepulse.config import load_config

    config = load_config(EXAMPLES / "classic-oee" / "plant.yaml")
    events = classic_events()
    expected = json.loads((EXAMPLES / "classic-oee" / "expected.json").read_text())
    finals, _, _ = run(config, [events], windows=("shift",))
    record = finals[("filler-1", "shift", "2026-11-02T06:00:00Z")]
    for key, value in expected.items():
        if isinstance(value, float):
            assert record[key] == pytest.approx(value, abs=1e-9), key
        else:
            assert record[key] == value, key
    # 480 min - 60 min of breaks = 420 min planned; 47 min down; 19,271 parts, 423 rejects.
    assert record["availability"] == pytest.approx(373 / 420)
    assert record["oee"] == pytest.approx(18848 * 1.0 / 25200)
    assert round(record["oee"], 6) == 0.747937


def test_classic_example_shuffled_within_lateness_in_small_batches() -> None:
    from linepulse.config import load_config

    config = load_config(EXAMPLES / "classic-oee" / "plant.yaml")
    lateness_ms = config.kpi.lateness_s * 1000
    events = classic_events()
    rng = random.Random(7)
    from linepulse.events import parse_ts

    # Arrival = event time + a delay below the lateness: never behind the watermark.
    arrival = sorted(events, key=lambda e: parse_ts(e["ts"]) + rng.uniform(0, lateness_ms))
    assert arrival != events
    batches = [arrival[i : i + 97] for i in range(0, len(arrival), 97)]
    finals, outputs, state = run(config, batches, windows=("shift", "1h"))
    record = finals[("filler-1", "shift", "2026-11-02T06:00:00Z")]
    assert record["oee"] == pytest.approx(0.7479365079365079, abs=1e-12)
    assert record["total_count"] == 19271
    assert record["reject_count"] == 423
    assert record["revision"] == 0
    assert state.stats.late == 0
    assert all(r["revision"] == 0 for o in outputs for r in o.records)


def test_counter_reset_counts_from_zero() -> None:
    config = plant()
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 100),  # baseline only
        ev("06:10:00", "total_count", 160),  # +60
        ev("06:20:00", "total_count", 20),  # reset: +20
        ev("06:30:00", "total_count", 50),  # +30
    ]
    finals, _, _ = run(config, [events], windows=("15m", "1h"))
    hour = finals[("m1", "1h", at("06:00:00"))]
    assert hour["total_count"] == 110
    assert hour["good_count"] == 110  # no reject counter: every part is good
    assert hour["reject_count"] == 0
    assert finals[("m1", "15m", at("06:00:00"))]["total_count"] == 60
    assert finals[("m1", "15m", at("06:15:00"))]["total_count"] == 20
    assert finals[("m1", "15m", at("06:30:00"))]["total_count"] == 30
    # Data ends at 06:30: the rest of the planned hour is unknown.
    assert hour["planned_s"] == 3600
    assert hour["run_s"] == 1800
    assert hour["unknown_s"] == 1800
    assert hour["performance"] == pytest.approx(110 / 1800)


def test_counter_rollover_at_the_configured_maximum() -> None:
    config = plant(machines=[{"id": "m1", "ideal_cycle_time_s": 1.0, "counter_max": 1000}])
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 990),
        ev("06:01:00", "total_count", 995),  # +5
        ev("06:02:00", "total_count", 3),  # 995 -> 1000 -> 0 -> 3: +9
        ev("06:03:00", "total_count", 10),  # +7
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    assert finals[("m1", "1h", at("06:00:00"))]["total_count"] == 21


def test_duplicated_and_replayed_samples_never_count_twice() -> None:
    config = plant()
    once = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:01:00", "total_count", 10),
        ev("06:02:00", "total_count", 25),
        ev("06:02:00", "reject_count", 0),
        ev("06:03:00", "reject_count", 2),
    ]
    twice_in_a_batch = once + once
    single, _, _ = run(config, [once], windows=("1h",))
    doubled, _, _ = run(config, [twice_in_a_batch], windows=("1h",))
    # The same samples again in later batches, as a reconnecting source re-sends them.
    replayed, _, _ = run(config, [once, once[1:3], once], windows=("1h",))
    key = ("m1", "1h", at("06:00:00"))
    assert single[key]["total_count"] == 25
    assert single[key]["reject_count"] == 2
    assert doubled[key] == single[key]
    assert replayed[key]["total_count"] == 25
    assert replayed[key]["good_count"] == 23


def test_stop_across_window_and_shift_boundaries_is_split() -> None:
    config = plant(
        shifts=[
            {"name": "early", "start": "06:00", "end": "14:00"},
            {"name": "late", "start": "14:00", "end": "22:00"},
        ]
    )
    events = [
        ev("13:00:00", "state", "running"),
        ev("13:50:00", "state", "down", reason="jam"),
        ev("14:20:00", "state", "running"),
        ev("15:00:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("15m", "1h", "shift"))
    early = finals[("m1", "shift", at("06:00:00"))]
    late = finals[("m1", "shift", at("14:00:00"))]
    assert early["shift"] == "early"
    assert (early["planned_s"], early["run_s"], early["downtime_s"]) == (28800, 3000, 600)
    assert early["unknown_s"] == 28800 - 3000 - 600  # no data before 13:00
    assert early["stops"] == 1
    assert early["downtime_by_reason"] == {"jam": 600}
    assert early["mttr_s"] == 600
    assert (late["run_s"], late["downtime_s"], late["stops"]) == (2400, 1200, 0)
    assert late["downtime_by_reason"] == {"jam": 1200}
    assert late["mttr_s"] is None  # the stop began in the early shift
    assert late["unknown_s"] == 28800 - 2400 - 1200  # data ends at 15:00
    hour = finals[("m1", "1h", at("13:00:00"))]
    assert (hour["run_s"], hour["downtime_s"], hour["stops"]) == (3000, 600, 1)
    hour = finals[("m1", "1h", at("14:00:00"))]
    assert (hour["run_s"], hour["downtime_s"], hour["stops"]) == (2400, 1200, 0)
    quarter = finals[("m1", "15m", at("14:15:00"))]
    assert (quarter["run_s"], quarter["downtime_s"]) == (600, 300)


def test_night_shift_over_midnight_belongs_to_the_day_it_starts() -> None:
    config = plant(
        shifts=[
            {
                "name": "night",
                "start": "22:00",
                "end": "06:00",
                "breaks": [{"start": "02:00", "end": "02:30"}],
            }
        ]
    )
    events = [
        ev(at("22:00:00"), "state", "running"),
        ev(at("03:00:00", "2026-11-03"), "state", "down", reason="electrical"),
        ev(at("03:30:00", "2026-11-03"), "state", "running"),
        ev(at("06:00:00", "2026-11-03"), "state", "idle"),
    ]
    finals, _, _ = run(config, [events], windows=("shift", "day"))
    night = finals[("m1", "shift", at("22:00:00"))]
    assert night["window_end"] == at("06:00:00", "2026-11-03")
    assert night["shift"] == "night"
    assert night["planned_s"] == 8 * 3600 - 1800
    assert night["run_s"] == 7 * 3600  # 8 h less the break, less 30 min down
    assert night["downtime_s"] == 1800
    assert night["unknown_s"] == 0
    assert night["stops"] == 1
    # Production days: 5.5 h of the previous night (no data: unknown) + 22:00-24:00.
    day1 = finals[("m1", "day", at("00:00:00"))]
    assert (day1["planned_s"], day1["run_s"], day1["unknown_s"]) == (27000, 7200, 19800)
    day2 = finals[("m1", "day", at("00:00:00", "2026-11-03"))]
    assert (day2["run_s"], day2["downtime_s"]) == (18000, 1800)
    assert day2["unknown_s"] == 7200  # the next night's 22:00-24:00, after the data ends
    assert ("m1", "shift", at("22:00:00", "2026-11-01")) not in finals  # before the data


@pytest.mark.parametrize(
    ("night_of", "start_utc", "end_utc", "hours"),
    [
        # Europe/Berlin falls back at 03:00 CEST on 2026-10-25: the night is 9 h long.
        ("2026-10-24", "2026-10-24T20:00:00Z", "2026-10-25T05:00:00Z", 9),
        # ... and springs forward at 02:00 CET on 2026-03-29: the night is 7 h long.
        ("2026-03-28", "2026-03-28T21:00:00Z", "2026-03-29T04:00:00Z", 7),
    ],
)
def test_shift_over_a_dst_change_is_an_hour_longer_or_shorter(
    night_of: str, start_utc: str, end_utc: str, hours: int
) -> None:
    config = plant(
        shifts=[{"name": "night", "start": "22:00", "end": "06:00"}], timezone="Europe/Berlin"
    )
    events = [ev(start_utc, "state", "running"), ev(end_utc, "state", "idle")]
    finals, _, _ = run(config, [events], windows=("shift",))
    night = finals[("m1", "shift", start_utc)]
    assert night["window_end"] == end_utc
    assert night["planned_s"] == hours * 3600
    assert night["run_s"] == hours * 3600
    assert night["availability"] == 1.0


def test_production_day_over_fall_back_is_25_hours() -> None:
    config = plant(shifts=[], timezone="Europe/Berlin", day_start="06:00")
    events = [ev("2026-10-24T12:00:00Z", "state", "running")]
    finals, _, _ = run(config, [events], windows=("day",))
    # 06:00 CEST on the 24th to 06:00 CET on the 25th: the clocks go back at 03:00 between.
    day = finals[("m1", "day", "2026-10-24T04:00:00Z")]
    assert day["window_end"] == "2026-10-25T05:00:00Z"
    assert day["planned_s"] == 0  # no shifts: nothing planned, ratios null
    assert day["availability"] is None


def test_unknown_state_and_missing_data_are_unknown_time() -> None:
    config = plant()
    events = [
        ev("06:00:00", "state", "running"),
        ev("07:00:00", "state", "unknown"),  # the ingester lost the connection
        ev("07:30:00", "state", "running"),
        ev("08:00:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("07:00:00"))]
    assert (hour["run_s"], hour["downtime_s"], hour["unknown_s"]) == (1800, 0, 1800)
    assert hour["availability"] == 0.5
    assert hour["stops"] == 0  # running -> unknown is not a stop


def test_bad_quality_samples_are_not_used_and_uncertain_ones_are() -> None:
    config = plant()
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:01:00", "total_count", 10),
        ev("06:01:30", "state", "down", reason="jam", quality="bad"),
        ev("06:02:00", "total_count", 1000, quality="bad"),
        ev("06:03:00", "total_count", 20, quality="uncertain"),
        ev("06:10:00", "state", "running"),
    ]
    finals, _, state = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("06:00:00"))]
    assert hour["total_count"] == 20
    assert hour["stops"] == 0
    assert hour["run_s"] == 600
    assert state.stats.bad_quality == 2


def test_two_machines_and_their_line_record() -> None:
    config = plant(
        machines=[
            {"id": "m1", "ideal_cycle_time_s": 1.0},
            {"id": "m2", "ideal_cycle_time_s": 2.0},
        ]
    )
    events = [
        ev("06:00:00", "state", "running", "m1"),
        ev("06:00:00", "total_count", 0, "m1"),
        ev("06:00:00", "reject_count", 0, "m1"),
        ev("06:59:00", "total_count", 3000, "m1"),
        ev("06:59:00", "reject_count", 30, "m1"),
        ev("06:00:00", "state", "running", "m2"),
        ev("06:30:00", "state", "down", "m2", reason="jam"),
        ev("06:00:00", "total_count", 0, "m2"),
        ev("06:00:00", "reject_count", 0, "m2"),
        ev("06:59:00", "total_count", 900, "m2"),
        ev("06:59:00", "reject_count", 90, "m2"),
        ev("07:00:00", "state", "idle", "m1"),
        ev("07:00:00", "state", "idle", "m2"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    m1 = finals[("m1", "1h", at("06:00:00"))]
    m2 = finals[("m2", "1h", at("06:00:00"))]
    line = finals[(None, "1h", at("06:00:00"))]
    assert (m1["availability"], m1["performance"], m1["quality"]) == pytest.approx(
        (1.0, 3000 / 3600, 0.99)
    )
    assert m1["oee"] == pytest.approx(0.825)
    assert (m2["availability"], m2["performance"], m2["quality"]) == pytest.approx((0.5, 1.0, 0.9))
    assert m2["oee"] == pytest.approx(0.45)
    assert m2["stops"] == 1
    assert m2["mtbf_s"] == 1800
    assert line["machine"] is None
    assert line["line"] == "line-1"
    assert (line["planned_s"], line["run_s"], line["downtime_s"]) == (7200, 5400, 1800)
    assert (line["total_count"], line["good_count"], line["reject_count"]) == (3900, 3780, 120)
    assert line["availability"] == pytest.approx(0.75)
    assert line["performance"] == pytest.approx((3000 * 1 + 900 * 2) / 5400)
    assert line["quality"] == pytest.approx(3780 / 3900)
    assert line["oee"] == pytest.approx(0.75 * (4800 / 5400) * (3780 / 3900))
    assert line["downtime_by_reason"] == {"jam": 1800}


def test_zero_denominators_give_null_never_zero_or_error() -> None:
    config = plant()
    events = [
        ev("13:00:00", "state", "down", reason="jam"),
        ev("14:00:00", "state", "running"),  # the shift ends at 14:00
        ev("14:00:00", "total_count", 0),
        ev("14:30:00", "total_count", 50),
        ev("15:00:00", "state", "idle"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    down_hour = finals[("m1", "1h", at("13:00:00"))]
    assert down_hour["planned_s"] == 3600
    assert down_hour["availability"] == 0.0
    assert down_hour["performance"] is None  # no run time
    assert down_hour["quality"] is None  # no parts
    assert down_hour["oee"] == 0.0  # planned time without a good part
    assert down_hour["mtbf_s"] is None  # no stops: down all along
    after = finals[("m1", "1h", at("14:00:00"))]
    assert after["planned_s"] == 0
    assert after["availability"] is None
    assert after["performance"] is None
    assert after["oee"] is None
    assert after["total_count"] == 50
    assert after["quality"] == 1.0


def test_late_event_restates_a_closed_window_and_too_late_is_reported() -> None:
    config = plant(kpi={"lateness_s": 10, "restate_horizon_s": 600})
    first = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:59:00", "total_count", 100),
        ev("07:05:00", "state", "running"),
    ]
    late = [ev("06:58:00", "state", "down", reason="jam"), ev("06:58:30", "state", "running")]
    too_late = [ev("06:30:00", "state", "down", reason="jam")]
    finals, outputs, state = run(config, [first, late, too_late], windows=("1h",))
    key = ("m1", "1h", at("06:00:00"))
    emitted = [r for o in outputs for r in o.records if (r["window"], r["window_start"]) == key[1:]]
    firsts = [r for r in emitted if r["machine"] == "m1"]
    assert [(r["final"], r["revision"], r["run_s"]) for r in firsts] == [
        (True, 0, 3600),
        (True, 1, 3570),
    ]
    assert finals[key]["stops"] == 1
    assert finals[key]["downtime_by_reason"] == {"jam": 30}
    assert outputs[1].late == 2
    assert outputs[2].too_late == 1
    reasons = outputs[2].rejected.get_column("reason").to_list()
    assert len(reasons) == 1
    assert reasons[0].startswith("too late")
    assert state.stats.too_late == 1


def test_products_use_their_own_ideal_cycle_time() -> None:
    config = plant(
        machines=[{"id": "m1", "ideal_cycle_time_s": 1.0, "products": {"small": 1.0, "large": 2.0}}]
    )
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "product", "small"),
        ev("06:00:00", "total_count", 0),
        ev("06:29:00", "total_count", 1800),
        ev("06:30:00", "product", "large"),
        ev("06:59:00", "total_count", 2400),
        ev("07:00:00", "state", "idle"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("06:00:00"))]
    assert hour["performance"] == pytest.approx((1800 * 1.0 + 600 * 2.0) / 3600)


def test_good_and_reject_counters_make_the_total() -> None:
    config = plant()
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "good_count", 0),
        ev("06:00:00", "reject_count", 0),
        ev("06:30:00", "good_count", 95),
        ev("06:30:00", "reject_count", 5),
        ev("07:00:00", "state", "idle"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("06:00:00"))]
    assert (hour["total_count"], hour["good_count"], hour["reject_count"]) == (100, 95, 5)
    assert hour["quality"] == 0.95


def test_state_map_translates_packml_numbers_and_unmapped_values_are_rejected() -> None:
    config = plant(
        machines=[{"id": "m1", "ideal_cycle_time_s": 1.0, "state_map": {6: "running", 9: "down"}}]
    )
    events = [
        ev("06:00:00", "state", 6),
        ev("06:20:00", "state", "9", reason="starved"),
        ev("06:30:00", "state", 17),
        ev("06:40:00", "state", 6),
        ev("07:00:00", "state", 6),
    ]
    finals, outputs, _ = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("06:00:00"))]
    assert (hour["run_s"], hour["downtime_s"], hour["stops"]) == (2400, 1200, 1)
    assert hour["downtime_by_reason"] == {"starved": 1200}
    reasons = outputs[0].rejected.get_column("reason").to_list()
    assert reasons == ["state value '17' is not a LinePulse state; map it in state_map"]


def test_breaks_and_planned_stops_are_not_planned_time() -> None:
    config = plant(
        shifts=[
            {
                "name": "early",
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"start": "06:30", "end": "06:45"}],
            }
        ]
    )
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:40:00", "state", "down", reason="jam"),  # during the break: no downtime
        ev("06:50:00", "state", "planned_stop", reason="cleaning"),
        ev("06:55:00", "state", "running"),
        ev("07:00:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    hour = finals[("m1", "1h", at("06:00:00"))]
    # 60 min - 15 min break - 5 min planned stop = 40 min planned.
    assert hour["planned_s"] == 2400
    assert hour["run_s"] == 1800 + 300  # 06:00-06:30 and 06:55-07:00
    assert hour["downtime_s"] == 300  # 06:45-06:50 only
    assert hour["stops"] == 0  # the transition to down happened in the break
    assert hour["downtime_by_reason"] == {"jam": 300}


def test_unknown_machine_and_invalid_counter_are_rejected_with_reasons() -> None:
    config = plant()
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "state", "running", machine="ghost"),
        ev("06:01:00", "total_count", -5),
        ev("06:02:00", "total_count", "many"),
        ev("06:03:00", "temperature", 71.5),
    ]
    _, outputs, state = run(config, [events], windows=("1h",))
    reasons = sorted(outputs[0].rejected.get_column("reason").to_list())
    assert reasons == [
        "total_count must be a non-negative integer, got -5",
        "total_count must be a number, got 'many'",
        "unknown machine 'ghost'",
    ]
    assert state.stats.other_signals == 1
    assert state.stats.used == 1


def test_a_learned_counter_restates_windows_that_closed_before_it_appeared() -> None:
    config = plant(kpi={"lateness_s": 0, "restate_horizon_s": 3600})
    before = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "reject_count", 0),
        ev("06:10:00", "reject_count", 4),
        ev("06:20:00", "state", "running"),
    ]
    # The total counter shows up only later: the 06:00 quarter is final by then.
    after = [ev("06:20:30", "total_count", 0), ev("06:25:00", "total_count", 50)]
    finals, outputs, _ = run(config, [before, after], windows=("15m",))
    quarter = finals[("m1", "15m", at("06:00:00"))]
    first = [r for r in outputs[0].records if r["machine"] == "m1" and r["final"]]
    assert (first[0]["total_count"], first[0]["reject_count"]) == (4, 4)  # reject-only reading
    assert quarter["revision"] == 1
    assert (quarter["total_count"], quarter["good_count"], quarter["reject_count"]) == (0, -4, 4)


def test_declared_counters_decide_how_counts_combine_from_the_start() -> None:
    config = plant(
        machines=[
            {"id": "m1", "ideal_cycle_time_s": 1.0, "counters": ["total_count", "reject_count"]}
        ]
    )
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "reject_count", 0),
        ev("06:10:00", "reject_count", 4),
        ev("06:20:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("15m",))
    quarter = finals[("m1", "15m", at("06:00:00"))]
    assert (quarter["total_count"], quarter["reject_count"], quarter["revision"]) == (0, 4, 0)


def test_open_records_asked_for_later_are_those_of_the_latest_state() -> None:
    from linepulse.events import empty_events
    from services.kpi.core.engine import Core, initial_state, step
    from tests.unit.kpi.core.support import frame

    core = Core.from_config(plant())
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:10:00", "total_count", 600),
    ]
    at_once = step(core, initial_state(core), frame(events))[1].records
    state, quiet = step(core, initial_state(core), frame(events), open_records=False)
    assert quiet.records == [r for r in at_once if r["final"]]  # finals always come out
    _, later = step(core, state, empty_events(), open_records=True)
    assert later.records == [r for r in at_once if not r["final"]]
    assert any(r["window"] == "1h" and r["total_count"] == 600 for r in later.records)


def test_a_late_event_before_a_machines_first_sample_opens_its_earlier_windows() -> None:
    # Found by the late-data property: an `unknown` state carries no time of its own, so
    # only the machine's earlier first-seen time can bring its earlier windows in.
    config = plant(kpi={"lateness_s": 0, "restate_horizon_s": 3600})
    first = [ev("06:30:00", "state", "running"), ev("06:40:00", "state", "running")]
    late = [ev("06:00:00", "state", "unknown")]
    finals, _, _ = run(config, [first, late], windows=("15m",))
    quarter = finals[("m1", "15m", at("06:00:00"))]
    assert (quarter["planned_s"], quarter["unknown_s"], quarter["run_s"]) == (900, 900, 0)
    assert finals[("m1", "15m", at("06:15:00"))]["unknown_s"] == 900
    whole, _, _ = run(config, [late + first], windows=("15m",))
    assert {k: {f: v for f, v in r.items() if f != "revision"} for k, r in finals.items()} == {
        k: {f: v for f, v in r.items() if f != "revision"} for k, r in whole.items()
    }
