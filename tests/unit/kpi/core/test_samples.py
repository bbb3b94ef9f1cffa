"""Readings the core cannot interpret are rejected with their reason, never passed on as
samples: a sample without a count or a state would silently lose parts or time."""

from __future__ import annotations

import polars as pl
import pytest

from linepulse.events import EVENT_SCHEMA
from services.kpi.core.samples import PlantIndex, prepare
from tests.unit.kpi.core.support import at, ev, plant, run


def test_a_whole_float_counter_beyond_64_bits_is_rejected_and_not_counted() -> None:
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:30", "total_count", 0),
        ev("06:01:00", "total_count", 1e300),  # whole, but no 64-bit integer holds it
        ev("06:02:00", "total_count", 10),
    ]
    finals, outputs, state = run(plant(), [events], windows=("1h",))
    reasons = outputs[0].rejected.get_column("reason").to_list()
    assert reasons == ["total_count must be a non-negative integer, got 1e+300"]
    assert state.stats.used == 3
    assert finals[("m1", "1h", at("06:00:00"))]["total_count"] == 10


def test_a_whole_float_state_beyond_64_bits_is_rejected() -> None:
    _, outputs, state = run(plant(), [[ev("06:00:00", "state", 1e300)]], windows=("1h",))
    assert outputs[0].rejected.get_column("reason").to_list() == [
        "state value '1e+300' is not a LinePulse state; map it in state_map"
    ]
    assert state.stats.used == 0


@pytest.mark.parametrize(
    ("signal", "reason"),
    [
        ("total_count", "total_count must be a number, got (none)"),
        ("state", "state value (none) is not a LinePulse state; map it in state_map"),
    ],
)
def test_a_reading_without_any_value_is_rejected(signal: str, reason: str) -> None:
    # `normalize_frame` already refuses such events; a frame built another way must not
    # pass one into the core as a sample either.
    events = pl.DataFrame(
        [(1_793_599_200_000, "m1", signal, None, None, None, None, "good")],
        schema=EVENT_SCHEMA,
        orient="row",
    )
    prepared = prepare(events, PlantIndex.build(plant()))
    assert prepared.rejected.get_column("reason").to_list() == [reason]
    assert prepared.samples.is_empty()
