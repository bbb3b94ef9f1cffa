"""Beyond OEE, computed by hand: ISO 22400 KPIs, the six big losses, products, reason
corrections, start-up rejects, rework, and the line's constraint, bottleneck and target.

Each expected figure is worked out in the test from the events it feeds.
"""

from __future__ import annotations

from typing import Any

import pytest

from linepulse.production import LOSS_KEYS
from tests.unit.kpi.core.support import ev, plant, run

SHIFT = [{"name": "early", "start": "06:00", "end": "14:00"}]
H06 = "2026-11-02T06:00:00Z"


def hour_record(finals: dict[Any, dict[str, Any]], machine: str | None = "m1") -> dict[str, Any]:
    return finals[(machine, "1h", H06)]


def losses_sum(record: dict[str, Any]) -> float:
    return float(sum(record["losses"].values()) + record["fully_productive_s"])


def test_small_stops_count_as_run_time_and_a_performance_loss() -> None:
    config = plant(SHIFT, [{"id": "m1", "ideal_cycle_time_s": 1.0, "small_stop_s": 60}])
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:00:00", "reject_count", 0),
        ev("06:10:00", "state", "down", reason="jam"),  # 30 s: small
        ev("06:10:30", "state", "running"),
        ev("06:20:00", "state", "down", reason="motor"),  # 300 s: a failure
        ev("06:25:00", "state", "running"),
        ev("06:30:00", "state", "idle"),  # 20 s: small
        ev("06:30:20", "state", "running"),
        ev("06:59:59", "total_count", 3000),
        ev("06:59:59", "reject_count", 30),
        ev("07:00:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    r = hour_record(finals)
    assert r["small_stops"] == 2
    assert r["small_stop_s"] == 50
    assert r["stops"] == 1
    assert r["failures"] == 1
    assert r["down_s"] == 300
    assert r["idle_s"] == 0
    assert r["downtime_s"] == 300
    assert r["run_s"] == 3300  # running 3250 s + small stops 50 s
    assert r["availability"] == pytest.approx(3300 / 3600)
    assert r["performance"] == pytest.approx(3000 / 3300)
    assert r["downtime_by_reason"] == {"motor": 300}  # the small stop is not downtime
    assert r["losses"] == pytest.approx(
        {
            "equipment_failure_s": 300,
            "setup_s": 0,
            "small_stops_s": 50,
            "slow_cycles_s": 3250 - 3000,
            "startup_rejects_s": 0,
            "production_rejects_s": 30,
            "no_data_s": 0.0,
        }
    )
    assert r["fully_productive_s"] == 2970
    assert losses_sum(r) == pytest.approx(3600)
    # ISO 22400-2
    assert r["technical_efficiency"] == pytest.approx(3300 / (3300 + 300))
    assert r["mttf_s"] == pytest.approx(3300)
    assert r["mtbf_s"] == pytest.approx(3300)
    assert r["mttr_s"] == pytest.approx(300)
    assert r["effectiveness"] == r["performance"]
    assert r["scrap_ratio"] == pytest.approx(30 / 3000)
    assert r["throughput_per_h"] == pytest.approx(3000)
    assert r["oee"] == pytest.approx(2970 / 3600)
    assert r["teep"] == pytest.approx(r["oee"])  # the hour is all planned
    assert r["rework_count"] is None
    assert r["rework_ratio"] is None
    assert r["first_pass_yield"] == pytest.approx(2970 / 3000)


def test_a_lines_teep_divides_its_machines_planned_time_by_their_calendar_time() -> None:
    """A line record sums its machines' times, so its TEEP is Σ planned over Σ calendar
    time: with the hour all planned it equals the line's OEE, never above 100 %."""
    config = plant(SHIFT, ["m1", "m2", "m3"])
    events = [ev("06:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")]
    events += [ev("06:00:00", "total_count", 0, machine=m) for m in ("m1", "m2", "m3")]
    events += [ev("06:59:59", "total_count", 1800, machine=m) for m in ("m1", "m2", "m3")]
    events += [ev("07:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")]
    finals, _, _ = run(config, [events], windows=("1h",))
    line = hour_record(finals, machine=None)
    assert line["planned_s"] == 3 * 3600  # machine time, summed
    assert line["calendar_s"] == 3600  # the window's length
    assert line["oee"] == pytest.approx(0.5)
    assert line["teep"] == pytest.approx(line["oee"])


def test_an_open_stop_is_small_until_it_passes_the_threshold_whatever_the_batching() -> None:
    config = plant(SHIFT, [{"id": "m1", "ideal_cycle_time_s": 1.0, "small_stop_s": 120}])
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:30:00", "state", "down"),
        ev("06:31:00", "state", "down"),  # still the same stop: 10 min in all
        ev("06:40:00", "state", "running"),
        ev("07:00:00", "state", "running"),
    ]
    one, _, _ = run(config, [events], windows=("1h", "15m"))
    per_event, _, _ = run(config, [[e] for e in events], windows=("1h", "15m"))
    assert hour_record(one)["small_stops"] == 0
    assert hour_record(one)["down_s"] == 600
    assert hour_record(one)["stops"] == 1
    for key, record in one.items():
        assert {k: v for k, v in per_event[key].items() if k != "revision"} == {
            k: v for k, v in record.items() if k != "revision"
        }


def test_changeover_is_setup_and_nee_leaves_it_out() -> None:
    config = plant(SHIFT)
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:30:00", "state", "changeover"),
        ev("06:40:00", "state", "running"),
        ev("06:59:59", "total_count", 2400),
        ev("07:00:00", "state", "running"),
    ]
    r = hour_record(run(config, [events], windows=("1h",))[0])
    assert r["setup_s"] == 600
    assert r["downtime_s"] == 600
    assert r["setup_rate"] == pytest.approx(600 / (3000 + 600))
    assert r["oee"] == pytest.approx(2400 / 3600)
    assert r["nee"] == pytest.approx(2400 / 3000)  # planned time less setup
    assert r["losses"]["setup_s"] == 600
    assert r["losses"]["slow_cycles_s"] == pytest.approx(3000 - 2400)
    assert losses_sum(r) == pytest.approx(3600)


def test_startup_rejects_after_a_changeover_and_after_the_shift_start() -> None:
    config = plant(
        SHIFT,
        [{"id": "m1", "ideal_cycle_time_s": 2.0, "counters": ["total_count", "reject_count"]}],
        kpi={"startup_s": 300},
    )
    events = [
        ev("05:59:00", "total_count", 0),
        ev("05:59:00", "reject_count", 0),
        ev("06:00:00", "state", "running"),
        ev("06:02:00", "reject_count", 4),  # 2 min after the shift start: start-up
        ev("06:10:00", "state", "changeover"),
        ev("06:20:00", "state", "running"),
        ev("06:22:00", "reject_count", 10),  # 2 min after the changeover: 6 start-up
        ev("06:40:00", "reject_count", 13),  # in production: 3
        ev("06:59:00", "total_count", 1000),
        ev("07:00:00", "state", "running"),
    ]
    r = hour_record(run(config, [events], windows=("1h",))[0])
    assert r["reject_count"] == 13
    assert r["losses"]["startup_rejects_s"] == pytest.approx(10 * 2.0)
    assert r["losses"]["production_rejects_s"] == pytest.approx(3 * 2.0)
    assert r["fully_productive_s"] == pytest.approx((1000 - 13) * 2.0)
    assert losses_sum(r) == pytest.approx(3600)


def test_rework_counter_gives_rework_ratio_and_first_pass_yield() -> None:
    config = plant(SHIFT)
    events = [
        ev("06:00:00", "state", "running"),
        *(ev("06:00:00", s, 0) for s in ("total_count", "reject_count", "rework_count")),
        ev("06:50:00", "total_count", 1000),
        ev("06:50:00", "reject_count", 50),
        ev("06:50:00", "rework_count", 20),
        ev("07:00:00", "state", "running"),
    ]
    r = hour_record(run(config, [events], windows=("1h",))[0])
    assert r["rework_count"] == 20
    assert r["rework_ratio"] == pytest.approx(0.02)
    assert r["first_pass_yield"] == pytest.approx((950 - 20) / 1000)
    assert r["quality"] == pytest.approx(0.95)


def test_a_planned_reason_makes_a_stop_planned_time() -> None:
    reasons = [
        {"name": "mechanical", "codes": ["jam", "motor"]},
        {"name": "planned", "planned": True, "codes": ["cleaning"]},
    ]
    config = plant(SHIFT, reasons=reasons)
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:10:00", "state", "down", reason="cleaning"),
        ev("06:20:00", "state", "running"),
        ev("06:30:00", "state", "down", reason="jam"),
        ev("06:35:00", "state", "running"),
        ev("07:00:00", "state", "running"),
    ]
    r = hour_record(run(config, [events], windows=("1h",))[0])
    assert r["planned_s"] == 3000
    assert r["downtime_s"] == 300
    assert r["stops"] == 1
    assert r["downtime_by_reason"] == {"jam": 300}


def correction(ts: str, code: str, number: int, machine: str = "m1") -> dict[str, Any]:
    """An operator's reason correction, as the API produces it."""
    event = ev(ts, "reason", number, machine=machine, reason=code)
    event["source"] = "operator:test"
    return event


def test_a_correction_restates_the_closed_window_with_a_new_revision() -> None:
    reasons = [
        {"name": "mechanical", "codes": ["jam", "motor"]},
        {"name": "planned", "planned": True, "codes": ["cleaning"]},
    ]
    config = plant(SHIFT, reasons=reasons, kpi={"lateness_s": 0, "restate_horizon_s": 7200})
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:10:00", "state", "down"),
        ev("06:20:00", "state", "running"),
        ev("07:05:00", "state", "running"),  # the 06:00 hour is final now
    ]
    finals, outputs, _ = run(
        config,
        [
            events,
            [correction("06:10:00", "jam", 1)],
            # Two later corrections arrive out of order: the higher number wins.
            [correction("06:10:00", "cleaning", 3), correction("06:10:00", "motor", 2)],
        ],
        windows=("1h",),
    )
    hours = [
        r
        for out in outputs
        for r in out.records
        if r["machine"] == "m1" and r["window_start"] == H06
    ]
    assert hours[0]["final"]
    assert hours[0]["downtime_by_reason"] == {"unassigned": 600}
    after_first = next(r for r in hours if r["downtime_by_reason"] == {"jam": 600})
    assert after_first["revision"] == 1
    last = hour_record(finals)
    assert last["revision"] == 3  # each correction restates the window: 1, then 2 and 3
    assert last["downtime_by_reason"] == {}  # cleaning is planned: no downtime left
    assert last["planned_s"] == 3000
    assert last["availability"] == 1.0


def test_products_split_the_window_each_with_its_own_ideal_cycle_time() -> None:
    config = plant(
        SHIFT,
        [{"id": "m1", "ideal_cycle_time_s": 1.0, "products": {"A": 1.0, "B": 2.0}}],
    )
    events = [
        ev("06:00:00", "product", "A"),
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:29:59", "total_count", 1500),
        ev("06:30:00", "product", "B"),
        ev("06:59:59", "total_count", 2100),
        ev("07:00:00", "state", "running"),
    ]
    r = hour_record(run(config, [events], windows=("1h",))[0])
    assert r["by_product"]["A"] == {
        "run_s": 1800,
        "total_count": 1500,
        "good_count": 1500,
        "reject_count": 0,
        "performance": pytest.approx(1500 / 1800),
        "quality": 1.0,
    }
    assert r["by_product"]["B"]["run_s"] == 1800
    assert r["by_product"]["B"]["performance"] == pytest.approx(600 * 2.0 / 1800)
    assert r["performance"] == pytest.approx((1500 + 1200) / 3600)
    assert r["product"] == "B"  # equal run time: the later name


def line_plant(**line: Any) -> Any:
    machines = [
        {"id": "m1", "ideal_cycle_time_s": 1.0},
        {"id": "m2", "ideal_cycle_time_s": 1.2},
        {"id": "m3", "ideal_cycle_time_s": 1.0},
    ]
    config = plant(SHIFT, machines)
    data = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data["lines"][0].update(line)
    from linepulse.config import parse_config

    return parse_config(data)


def test_line_bottleneck_constraint_and_output() -> None:
    config = line_plant()
    events = [ev("06:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")]
    events += [ev("06:00:00", "total_count", 0, machine=m) for m in ("m1", "m2", "m3")]
    events += [
        ev("06:20:00", "state", "down", machine="m2", reason="jam"),
        ev("06:20:30", "state", "idle", machine="m1"),  # blocked by m2
        ev("06:21:00", "state", "idle", machine="m3"),  # starved by m2
        ev("06:40:00", "state", "running", machine="m2"),
        ev("06:40:00", "state", "running", machine="m1"),
        ev("06:41:00", "state", "running", machine="m3"),
        ev("06:05:00", "state", "changeover", machine="m3"),
        ev("06:06:00", "state", "running", machine="m3"),
        *(ev("06:59:00", "total_count", 2000, machine=m) for m in ("m1", "m2", "m3")),
        *(ev("07:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    line = hour_record(finals, None)
    assert line["bottleneck"] == "m2"
    assert line["bottleneck_s"] == 1200
    assert line["constraint"] == "m2"  # the slowest ideal cycle time
    assert line["oee_constraint"] == hour_record(finals, "m2")["oee"]
    assert line["output_count"] == 2000  # m3, the last machine
    assert hour_record(finals, "m1")["idle_s"] == 1170
    assert hour_record(finals, "m3")["bottleneck"] is None  # machine records carry none


def test_shift_target_and_projection_at_the_current_rate() -> None:
    config = line_plant(target={"efficiency": 0.85}, output="m3")
    events = [ev("06:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")]
    events += [ev("06:00:00", "total_count", 0, machine="m3")]
    events += [ev("07:59:59", "total_count", 4000, machine="m3")]
    events += [ev("08:00:00", "state", "running", machine=m) for m in ("m1", "m2", "m3")]
    _, outputs, _ = run(config, [events], windows=("shift",))
    open_line = [r for r in outputs[0].records if r["machine"] is None and r["window"] == "shift"][
        -1
    ]
    assert not open_line["final"]
    assert open_line["target_count"] == int(0.85 * 8 * 3600 / 1.0)
    # 4000 good parts in 2 h of planned time; 6 h ahead at that rate.
    assert open_line["output_count"] == 4000
    assert open_line["projected_count"] == pytest.approx(4000 + 4000 / 7200 * 6 * 3600)
    final = next(r for r in outputs[-1].records if r["machine"] is None and r["window"] == "shift")
    assert final["final"]
    assert final["projected_count"] == final["output_count"] == 4000


def test_fixed_parts_target_per_shift_name() -> None:
    config = line_plant(target={"parts": {"early": 9000}})
    events = [ev("06:00:00", "state", "running", machine="m3")]
    finals, _, _ = run(config, [events], windows=("shift",))
    assert finals[(None, "shift", H06)]["target_count"] == 9000


def test_loss_keys_are_the_six_big_losses_and_no_data() -> None:
    assert LOSS_KEYS == (
        "equipment_failure_s",
        "setup_s",
        "small_stops_s",
        "slow_cycles_s",
        "startup_rejects_s",
        "production_rejects_s",
        "no_data_s",
    )


def test_a_correction_holds_over_the_stops_repeated_samples_in_any_batching() -> None:
    # Machines often repeat their state: one stop, one id (its first sample), one code.
    config = plant(SHIFT, kpi={"lateness_s": 0, "restate_horizon_s": 7200})
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:10:00", "state", "down"),
        ev("06:11:00", "state", "down"),
        ev("06:12:00", "state", "down"),
        ev("06:15:00", "state", "running"),
        ev("06:20:00", "state", "down"),  # another stop: not corrected
        ev("06:21:00", "state", "running"),
        ev("07:05:00", "state", "running"),
    ]
    fix = correction("06:10:00", "jam", 1)
    for batches in ([[*events, fix]], [[e] for e in events] + [[fix]], [[fix], events]):
        finals, _, _ = run(config, batches, windows=("1h",))
        assert hour_record(finals)["downtime_by_reason"] == {"jam": 300, "unassigned": 60}


def test_states_of_one_instant_resolve_as_sent_whatever_planned_codes_make_of_them() -> None:
    """Two states at one instant: the later in (state, reason) order as sent wins ("idle"
    after "down"), also when a planned code makes the other one a planned stop, and
    whether the instant's samples are still in the batch or already the baselines kept
    from an earlier one (found by the split property test: the split run read the planned
    stop for the first minutes and idle for the last two)."""
    reasons = [{"name": "planned", "planned": True, "codes": ["cleaning"]}]
    # A short lateness and lookback: the instant's samples leave the batch window soon.
    kpi = {"lateness_s": 30, "small_stop_s": 90, "startup_s": 120}
    config = plant(SHIFT, reasons=reasons, kpi=kpi)
    events = [
        ev("06:00:01", "state", "idle"),
        ev("06:00:01", "state", "down", reason="cleaning"),
        ev("06:40:00", "state", "running"),
        ev("09:00:00", "state", "running"),
    ]
    whole, _, _ = run(config, [events], windows=("1h",))
    split, _, _ = run(config, [events[:3], events[3:]], windows=("1h",))
    assert split == whole
    r = hour_record(whole)
    assert r["idle_s"] == 40 * 60 - 1
    assert (r["planned_s"], r["unknown_s"]) == (3600, 1)  # no planned stop: all planned
