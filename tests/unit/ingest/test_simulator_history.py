"""A simulated plant's history and its live ticks are one plant: the model stepped at full
speed up to now and then ticked on continues its counters and states; the history starts
at the previous shift; and the alert rules do not judge a window long past."""

from __future__ import annotations

from services.alerts.rules import PAST_AFTER_MS, is_past
from services.app.demo import demo_plant
from services.ingest.simulator.history import previous_shift_start
from services.ingest.simulator.layout import plan
from services.ingest.simulator.model import PlantModel

T0 = 1_796_533_200_000  # 2026-12-06T05:00:00Z, 06:00 in Berlin: the early shift starts
HOUR = 3_600_000
PLANT = demo_plant([1, 2], 3)


def model() -> PlantModel:
    specs = list(plan(PLANT).specs.values())
    return PlantModel(PLANT, specs, seed=7, start_ms=T0, tick_ms=1000)


def test_live_ticks_continue_the_history_without_a_reset() -> None:
    plant = model()
    for _ in plant.steps_until(T0 + 2 * HOUR, tick_ms=5000):
        pass
    assert plant.now_ms == T0 + 2 * HOUR
    before = {m.spec.machine: (m.total, m.state) for m in plant.machines}
    plant.republish()
    live = plant.step()
    # The first live tick carries every signal again (sources start from the plant's
    # state), at the live time, with the counters where the history left them.
    assert {e.ts for e in live} == {T0 + 2 * HOUR}
    published = {(e.machine, e.signal): e.value for e in live}
    for machine in plant.machines:
        for signal in machine.spec.signals:
            assert (machine.spec.machine, signal) in published
        if "total_count" in machine.spec.signals:
            total, _ = before[machine.spec.machine]
            count = published[(machine.spec.machine, "total_count")]
            assert isinstance(count, int)
            assert count >= total
    assert sum(m.parts_made for m in plant.machines) > 0


def test_a_history_ends_exactly_where_asked_even_off_its_step_grid() -> None:
    plant = model()
    steps = list(plant.steps_until(T0 + 12_000, tick_ms=5000))
    assert plant.now_ms == T0 + 12_000
    assert [s[0].ts for s in steps if s] == [T0, T0 + 5000, T0 + 10_000]


def test_history_starts_at_the_previous_shift() -> None:
    # 10:00 Berlin in the early shift (06:00-14:00): the night shift began 22:00 before.
    assert previous_shift_start(PLANT, T0 + 4 * HOUR) == T0 - 8 * HOUR
    # 06:00 sharp: the early shift has begun, the night before it is the previous one.
    assert previous_shift_start(PLANT, T0) == T0 - 8 * HOUR


def test_a_record_of_a_window_long_past_is_not_judged() -> None:
    record = {"window_start": "2026-12-06T05:00:00Z", "window_end": "2026-12-06T06:00:00Z"}
    end = T0 + HOUR
    assert not is_past(record, end + PAST_AFTER_MS)
    assert is_past(record, end + PAST_AFTER_MS + 1)
    assert not is_past({"window_start": "2026-12-06T05:00:00Z"}, end + 10 * HOUR)
