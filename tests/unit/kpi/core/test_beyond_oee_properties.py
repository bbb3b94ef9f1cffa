"""Property tests beyond OEE: the six losses always sum to planned time, and the new
classes (small stops, start-up rejects, planned reasons, corrections, products, rework)
give the same records whatever the batching or the arrival order."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linepulse.config import PlantConfig, WindowKind
from linepulse.production import LOSS_KEYS
from tests.unit.kpi.core.support import plant, run
from tests.unit.kpi.core.test_core_properties import BASE, SETTINGS, machine_records, split

# Each example runs the core twice over ~3.5 h of two machines: fewer than the base tests.
FEWER = settings(SETTINGS, max_examples=15)

WINDOWS: tuple[WindowKind, ...] = ("15m", "1h", "shift")
LATENESS_MS = 30_000
STATES = ["running", "running", "running", "down", "idle", "changeover", "planned_stop", "unknown"]
REASONS = [None, "jam", "motor", "cleaning"]


def config(lateness_s: float = LATENESS_MS / 1000, horizon_s: float = 10 * 3600) -> PlantConfig:
    machines: list[dict[str, Any]] = [
        {
            "id": "m1",
            "ideal_cycle_time_s": 1.0,
            "products": {"A": 1.0, "B": 2.5},
            # Declared: a counter learned from data restates the windows before it.
            "counters": ["total_count", "reject_count", "rework_count"],
        },
        {
            "id": "m2",
            "ideal_cycle_time_s": 0.5,
            "counters": ["total_count", "reject_count"],
            "small_stop_s": 45,
        },
    ]
    return plant(
        shifts=[
            {
                "name": "early",
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"start": "08:00", "end": "08:15"}],
            }
        ],
        machines=machines,
        reasons=[
            {"name": "mechanical", "codes": ["jam", "motor"]},
            {"name": "planned", "planned": True, "codes": ["cleaning"]},
        ],
        kpi={
            "lateness_s": lateness_s,
            "restate_horizon_s": horizon_s,
            "small_stop_s": 90,
            "startup_s": 120,
        },
    )


@st.composite
def event_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Two machines over ~3.5 h: states (with reasons), counters, products, corrections."""
    n = draw(st.integers(1, 70))
    events: list[dict[str, Any]] = []
    state_times: list[tuple[str, int]] = []
    for _ in range(n):
        machine = draw(st.sampled_from(["m1", "m2"]))
        # Seconds apart around the small-stop thresholds make short and long stops.
        ts = BASE + draw(st.integers(0, 12_600)) * 1000
        kind = draw(
            st.sampled_from(
                [
                    "state",
                    "state",
                    "state",
                    "total_count",
                    "reject_count",
                    "rework_count",
                    "product",
                ]
            )
        )
        event: dict[str, Any] = {"ts": ts, "machine": machine, "signal": kind}
        if kind == "state":
            event["value"] = draw(st.sampled_from(STATES))
            reason = draw(st.sampled_from(REASONS))
            if reason is not None:
                event["reason"] = reason
            state_times.append((machine, ts))
        elif kind == "product":
            event["value"] = draw(st.sampled_from(["A", "B", "C"]))
        else:
            event["value"] = draw(st.integers(0, 400))
        events.append(event)
    # Corrections of some state samples, numbered, in any order.
    for number, (machine, ts) in enumerate(state_times[: draw(st.integers(0, 4))], start=1):
        code = draw(st.sampled_from(["jam", "motor", "cleaning"]))
        events.append(
            {"ts": ts, "machine": machine, "signal": "reason", "value": number, "reason": code}
        )
    return events


def ordered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: int(e["ts"]))


@FEWER
@given(events=event_lists())
def test_six_losses_and_fully_productive_time_sum_to_planned_time(
    events: list[dict[str, Any]],
) -> None:
    finals, _, _ = run(config(), [ordered(events)], windows=WINDOWS)
    for key, r in finals.items():
        if r["losses"] is None:
            assert r["fully_productive_s"] is None, key
            continue
        assert set(r["losses"]) == set(LOSS_KEYS)
        total = sum(r["losses"].values()) + r["fully_productive_s"]
        assert total == pytest.approx(r["planned_s"], abs=1e-6), key
        assert r["losses"]["small_stops_s"] == r["small_stop_s"]
        assert r["losses"]["setup_s"] == r["setup_s"]
        # DESIGN's identities still hold with small stops and planned reasons.
        assert r["downtime_s"] == pytest.approx(r["down_s"] + r["idle_s"] + r["setup_s"])
        assert r["planned_s"] == pytest.approx(r["run_s"] + r["downtime_s"] + r["unknown_s"])
        assert sum(r["downtime_by_reason"].values()) == pytest.approx(r["downtime_s"], abs=1e-6)
        assert r["stops"] >= r["failures"]


@FEWER
@given(events=event_lists(), seed=st.integers(0, 2**32 - 1))
def test_any_split_into_batches_gives_the_same_records(
    events: list[dict[str, Any]], seed: int
) -> None:
    whole, _, _ = run(config(), [ordered(events)], windows=WINDOWS)
    parts, _, _ = run(config(), split(ordered(events), random.Random(seed)), windows=WINDOWS)
    assert parts == whole  # revisions included: in-order input never restates


@FEWER
@given(events=event_lists(), seed=st.integers(0, 2**32 - 1))
def test_any_arrival_order_restates_to_the_exact_result(
    events: list[dict[str, Any]], seed: int
) -> None:
    rng = random.Random(seed)
    arrival = events[:]
    rng.shuffle(arrival)
    strict = config(lateness_s=0, horizon_s=24 * 3600)
    whole, _, _ = run(strict, [ordered(events)], windows=WINDOWS)
    restated, _, _ = run(strict, split(arrival, rng), windows=WINDOWS)
    assert machine_records(restated) == machine_records(whole)
