"""Issue 14: the numbers hold on real plant input, computed by hand.

Arrival order inside a batch, counter glitches (uninitialised zeros, PLC restarts,
spikes, outages, rollovers), exact 64-bit counters, time without data, and machines that
send nothing at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.kpi.core.support import ev, plant, run

SHIFT = [{"name": "early", "start": "06:00", "end": "14:00"}]
H06 = "2026-11-02T06:00:00Z"


def hour(finals: dict[Any, dict[str, Any]], machine: str | None = "m1") -> dict[str, Any]:
    return finals[(machine, "1h", H06)]


# -- arrival order -------------------------------------------------------------------------


def test_an_event_behind_the_horizon_in_the_same_batch_is_too_late() -> None:
    config = plant(SHIFT, kpi={"lateness_s": 10, "restate_horizon_s": 3600})
    batch = [
        ev("06:00:00", "state", "running"),
        ev("08:30:00", "state", "running"),
        ev("06:10:00", "state", "down", reason="jam"),  # 2 h 20 min behind: past the horizon
    ]
    finals, outputs, state = run(config, [batch], windows=("1h",))
    assert state.stats.too_late == 1
    assert state.stats.late == 0
    reasons = outputs[0].rejected.get_column("reason").to_list()
    horizon = "2026-11-02T07:29:00Z"  # 08:30 less 10 s lateness less 1 h, on the minute
    assert reasons == [f"too late: event time is before the restatement horizon {horizon}"]
    assert hour(finals)["downtime_s"] == 0
    assert hour(finals)["revision"] == 0


@pytest.mark.parametrize("cut", [[3], [1, 1, 1], [2, 1]])
def test_a_window_closed_earlier_in_the_batch_is_restated_with_a_higher_revision(
    cut: list[int],
) -> None:
    config = plant(SHIFT, kpi={"lateness_s": 0, "restate_horizon_s": 7200})
    events = [
        ev("06:00:00", "state", "running"),
        ev("07:05:00", "state", "running"),  # the 06:00 hour is final from here on
        ev("06:30:00", "state", "down", reason="jam"),  # late: restates it
    ]
    batches, i = [], 0
    for size in cut:
        batches.append(events[i : i + size])
        i += size
    finals, _, state = run(config, batches, windows=("1h",))
    record = hour(finals)
    assert record["downtime_s"] == 1800
    assert record["downtime_by_reason"] == {"jam": 1800}
    assert record["revision"] == 1
    assert hour(finals, None)["revision"] == 1
    assert state.stats.late == 1


# -- counters ------------------------------------------------------------------------------


def counted(
    samples: list[tuple[str, int]], machine: dict[str, Any] | None = None, **kpi: Any
) -> tuple[int, list[str], int]:
    """Total parts in the 06:00 hour, the jump reasons and the jump count."""
    spec = {"id": "m1", "ideal_cycle_time_s": 1.0, **(machine or {})}
    config = plant(SHIFT, [spec], kpi=kpi)
    events = [ev("06:00:00", "state", "running")]
    events += [ev(ts, "total_count", value) for ts, value in samples]
    finals, outputs, state = run(config, [events], windows=("1h",))
    reasons = [r for o in outputs for r in o.jumps.get_column("reason").to_list()]
    return hour(finals)["total_count"], reasons, state.stats.implausible


def test_an_uninitialised_zero_then_the_real_reading_counts_nothing() -> None:
    total, reasons, jumps = counted(
        [("06:00:00", 0), ("06:00:01", 435_394), ("06:00:02", 435_395), ("06:00:07", 435_400)]
    )
    assert total == 6
    assert jumps == 1
    assert reasons == [
        "implausible counter jump: total_count from 0 to 435394 would count 435394 parts; "
        "not counted, taken as the new baseline"
    ]


def test_a_plc_restart_on_a_counter_with_a_maximum_counts_from_zero() -> None:
    total, _, jumps = counted(
        [("06:00:00", 1_000_000), ("06:00:10", 1_000_010), ("06:00:20", 3), ("06:00:30", 13)],
        machine={"counter_max": 2_147_483_647},
    )
    assert total == 10 + 3 + 10  # a rollover would be 2.1 billion parts: a reset instead
    assert jumps == 0


@pytest.mark.parametrize("maximum", [None, 4_294_967_295])
def test_a_one_sample_spike_and_back_costs_nothing(maximum: int | None) -> None:
    machine = {} if maximum is None else {"counter_max": maximum}
    total, _, jumps = counted(
        [
            ("06:00:00", 1000),
            ("06:00:10", 1010),
            ("06:00:11", 4_000_000_000),
            ("06:00:12", 1011),
            ("06:00:21", 1020),
        ],
        machine=machine,
    )
    # Up to the spike 10, the spike and the way back nothing (implausible), then 9.
    assert total == 19
    assert jumps == 2


def test_a_big_plausible_step_after_an_outage_counts_in_full() -> None:
    total, _, jumps = counted([("06:00:00", 1000), ("06:20:00", 2100)])
    assert total == 1100  # 20 min at a 1 s ideal cycle allows 3 x 1200 + 100
    assert jumps == 0


def test_a_true_rollover_near_the_maximum_counts_across_it() -> None:
    total, _, jumps = counted(
        [("06:00:00", 65_530), ("06:00:10", 5)], machine={"counter_max": 65_535}
    )
    assert total == 11
    assert jumps == 0


def test_limits_follow_the_config() -> None:
    steps = [("06:00:00", 0), ("06:00:10", 500)]
    assert counted(steps)[0] == 0  # 3 x 10 s / 1 s + 100 = 130 < 500
    assert counted(steps, max_burst=1000)[0] == 500
    assert counted(steps, machine={"max_rate_factor": 50})[0] == 500
    assert counted(steps, machine={"ideal_cycle_time_s": 0.01})[0] == 500
    # Without an ideal cycle time a counter is checked only with max_rate_per_s.
    bare = {"ideal_cycle_time_s": None}
    assert counted(steps, machine=bare)[0] == 500
    assert counted(steps, machine=bare, max_rate_per_s=5)[0] == 0
    assert counted(steps, machine={**bare, "max_rate_per_s": 50})[0] == 500


def test_a_64_bit_counter_counts_exactly() -> None:
    big = 2**53 + 1  # a float would read it as 2**53
    total, _, _ = counted([("06:00:00", big), ("06:00:10", big + 10)])
    assert total == 10


def test_a_jump_is_reported_once_whatever_the_batching() -> None:
    config = plant(SHIFT)
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:00:01", "total_count", 9_000_000),
        ev("06:00:05", "total_count", 9_000_004),
        ev("06:10:00", "state", "running"),
    ]
    for batches in ([events], [[e] for e in events]):
        finals, outputs, state = run(config, batches, windows=("1h",))
        assert state.stats.implausible == 1
        assert sum(o.jumps.height for o in outputs) == 1
        assert hour(finals)["total_count"] == 4


# -- time without data ---------------------------------------------------------------------


def test_time_without_data_is_its_own_loss_and_lowers_coverage() -> None:
    config = plant(SHIFT, ["m1", "m2"])
    events = [
        ev("06:30:00", "state", "running"),  # nothing is known of 06:00-06:30
        ev("06:30:00", "total_count", 0),
        ev("06:45:00", "total_count", 900),
        ev("07:10:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    m1 = hour(finals)
    assert m1["planned_s"] == 3600
    assert m1["unknown_s"] == 1800
    assert m1["coverage"] == 0.5
    assert m1["losses"]["no_data_s"] == 1800
    assert m1["losses"]["equipment_failure_s"] == 0
    assert m1["oee"] == pytest.approx(900 / 3600)
    assert sum(m1["losses"].values()) + m1["fully_productive_s"] == pytest.approx(3600)
    # m2 sent nothing at all: it still has its record, all of it unknown.
    m2 = hour(finals, "m2")
    assert (m2["planned_s"], m2["unknown_s"], m2["coverage"]) == (3600, 3600, 0.0)
    assert m2["losses"]["no_data_s"] == 3600
    assert m2["oee"] == 0.0
    line = hour(finals, None)
    assert line["planned_s"] == 7200
    assert line["coverage"] == pytest.approx(1800 / 7200)


def test_coverage_is_null_without_planned_time() -> None:
    config = plant(SHIFT)
    events = [ev("04:00:00", "state", "running"), ev("05:30:00", "state", "running")]
    finals, _, _ = run(config, [events], windows=("1h",))
    early = finals[("m1", "1h", "2026-11-02T04:00:00Z")]
    assert early["planned_s"] == 0
    assert early["coverage"] is None


def test_a_silent_machine_keeps_its_place_in_the_line() -> None:
    config = plant(SHIFT, ["m1", "m2"])
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "state", "running", machine="m2"),
        # m2 loses its connection: it sends nothing from here on.
        ev("07:00:00", "state", "running"),
        ev("08:00:00", "state", "running"),
        ev("09:05:00", "state", "running"),
    ]
    finals, _, _ = run(config, [events], windows=("1h",))
    eight = "2026-11-02T08:00:00Z"
    assert finals[("m2", "1h", eight)]["run_s"] == 3600  # its last state holds
    quiet = plant(SHIFT, ["m1", "m2"])
    finals, _, _ = run(quiet, [[e for e in events if e["machine"] == "m1"]], windows=("1h",))
    m2 = finals[("m2", "1h", eight)]
    assert (m2["planned_s"], m2["unknown_s"]) == (3600, 3600)
    line = finals[(None, "1h", eight)]
    assert line["planned_s"] == 7200
    assert line["availability"] == 0.5
