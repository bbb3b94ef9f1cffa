"""`min_coverage`: a KPI record that rests on too little data changes no alert's state.

Recorded sequences as in test_engine (one record and one evaluate per minute, no clock):
each record carries the `coverage` the KPI core puts on it, (planned_s - unknown_s) /
planned_s, null without planned time. Below the rule's `min_coverage` (default 0.8) the
record neither starts, promotes, cancels nor resolves an alert; the next covered record
is judged as ever. `no_data` rules still page on the lost data itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from linepulse.alerting import DEFAULT_MIN_COVERAGE, Rule
from services.alerts.engine import AlertEngine
from services.alerts.model import Alert, AlertState, Notification
from services.alerts.store import AlertStore
from tests.unit.alerts import test_forecast as forecast
from tests.unit.alerts.test_engine import (
    LEAD,
    MIN,
    OEE_LOW,
    T0,
    Step,
    engine_for,
    feed,
    record,
)

# (oee, coverage) of the 1h window, once a minute; coverage None: no planned time known.
Reading = tuple[float | None, float | None]
FIRING_NOW = {**OEE_LOW, "for": 0}


def covered(
    oee: float | None, coverage: float | None, at: int, machine: str | None = "M1"
) -> dict[str, Any]:
    return {**record(machine, oee, at), "coverage": coverage}


def steps(readings: Sequence[Reading], start: int = T0, machine: str = "M1") -> list[Step]:
    return [
        Step(start + i * MIN, [covered(oee, cov, start + i * MIN, machine)])
        for i, (oee, cov) in enumerate(readings)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    opened = AlertStore(tmp_path / "alerts.sqlite3")
    yield opened
    opened.close()


def pages(notes: Sequence[Notification]) -> list[tuple[str, int]]:
    """What the lead's pager got, and when."""
    return [(n.kind, n.created_at) for n in notes if (n.recipient, n.channel) == LEAD[0]]


def only_alert(engine: AlertEngine) -> Alert:
    [alert] = engine.alerts()
    return alert


def test_the_default_is_0_8() -> None:
    assert DEFAULT_MIN_COVERAGE == 0.8
    assert Rule.model_validate(OEE_LOW).min_coverage == 0.8


@pytest.mark.parametrize(
    ("coverage", "fires"),
    [(1.0, True), (0.8, True), (0.7999, False), (0.0, False), (None, False)],
)
def test_a_low_oee_starts_an_alert_only_on_covered_records(
    store: AlertStore, coverage: float | None, fires: bool
) -> None:
    engine = engine_for(store, FIRING_NOW)
    notes = feed(engine, steps([(0.1, coverage)] * 30))
    assert bool(pages(notes)) is fires
    assert bool(engine.alerts()) is fires


def test_a_firing_alert_is_not_resolved_by_low_coverage_records(store: AlertStore) -> None:
    engine = engine_for(store, FIRING_NOW)
    # Fires on a covered 0.5; then the OEE looks fine but rests on little or no data.
    held: list[Reading] = [(0.95, 0.3), (0.9, None), (0.99, 0.0), (0.9, 0.79)]
    notes = feed(engine, steps([(0.5, 1.0), *held]))
    assert pages(notes) == [("firing", T0)]
    alert = only_alert(engine)
    assert (alert.state, alert.value, alert.resolved_at) == (AlertState.FIRING, 0.5, None)
    # A covered record after that is judged as ever: good, so resolved at once.
    notes = feed(engine, steps([(0.9, 0.85)], start=T0 + 5 * MIN))
    assert pages(notes) == [("resolved", T0 + 5 * MIN)]


def test_a_held_record_keeps_the_keep_firing_for_clock(store: AlertStore) -> None:
    rule = {**FIRING_NOW, "keep_firing_for": "2m"}
    engine = engine_for(store, rule)
    # Good from minute 1; the bad OEE at minute 2 rests on 10 % of the time, so it does not
    # restart the clock: resolved at 1 + 2.
    readings: list[Reading] = [(0.5, 1.0), (0.9, 1.0), (0.4, 0.1), (0.9, 1.0), (0.9, 1.0)]
    notes = feed(engine, steps([*readings, (0.9, 1.0)]))
    assert pages(notes) == [("firing", T0), ("resolved", T0 + 3 * MIN)]


def test_a_pending_alert_is_neither_cancelled_nor_promoted_by_low_coverage(
    store: AlertStore,
) -> None:
    engine = engine_for(store, OEE_LOW)  # for: 10m
    good_but_thin: list[Reading] = [(0.9, 0.5)] * 5  # would cancel it, if judged
    bad_but_thin: list[Reading] = [(0.1, 0.2)] * 10  # would promote it at 10 min
    notes = feed(engine, steps([(0.5, 1.0), *good_but_thin, *bad_but_thin]))
    assert notes == []
    alert = only_alert(engine)
    assert (alert.state, alert.pending_since, alert.value) == (AlertState.PENDING, T0, 0.5)
    # The next covered record behaves as before: still breached, and pending since T0 for
    # longer than `for`, so it fires now.
    notes = feed(engine, steps([(0.5, 0.9)], start=T0 + 16 * MIN))
    assert pages(notes) == [("firing", T0 + 16 * MIN)]


def test_a_covered_good_record_after_low_coverage_cancels_a_pending_alert(
    store: AlertStore,
) -> None:
    engine = engine_for(store, OEE_LOW)
    feed(engine, steps([(0.5, 1.0), (0.9, 0.5), (0.9, 0.5)]))
    assert only_alert(engine).state is AlertState.PENDING
    notes = feed(engine, steps([(0.9, 1.0)], start=T0 + 3 * MIN))
    assert notes == []
    assert engine.alerts() == []


# The same sequence, judged with min_coverage 0 and with records that have no coverage at
# all (what the engine saw before coverage existed): the old behaviour.
SEQUENCE: list[Reading] = [
    (0.5, 1.0),
    (0.9, 0.3),  # resolves under the old behaviour
    (0.2, 0.0),  # fires again
    (0.3, None),
    (0.9, 0.5),
    (0.5, 0.2),
]


def test_min_coverage_0_restores_the_old_behaviour(store: AlertStore, tmp_path: Path) -> None:
    judged = feed(engine_for(store, {**FIRING_NOW, "min_coverage": 0}), steps(SEQUENCE))
    old_store = AlertStore(tmp_path / "old.sqlite3")
    try:
        bare = [
            Step(s.now, [{k: v for k, v in r.items() if k != "coverage"} for r in s.records])
            for s in steps(SEQUENCE)
        ]
        old = feed(engine_for(old_store, FIRING_NOW), bare)
    finally:
        old_store.close()
    expected = [
        ("firing", T0),
        ("resolved", T0 + MIN),
        ("firing", T0 + 2 * MIN),
        ("resolved", T0 + 4 * MIN),
        ("firing", T0 + 5 * MIN),
    ]
    assert pages(judged) == pages(old) == expected


def test_a_lower_min_coverage_judges_thinner_records(store: AlertStore) -> None:
    engine = engine_for(store, {**FIRING_NOW, "min_coverage": 0.5})
    notes = feed(engine, steps([(0.1, 0.49), (0.1, 0.5)]))
    assert pages(notes) == [("firing", T0 + MIN)]


def test_line_records_are_held_on_the_line_coverage(store: AlertStore) -> None:
    rule = {**FIRING_NOW, "scope": {"lines": ["L1"], "line_records": True}}
    engine = engine_for(store, rule)
    assert feed(engine, [Step(T0, [covered(0.1, 0.6, T0, None)])]) == []
    notes = feed(engine, [Step(T0 + MIN, [covered(0.1, 0.95, T0 + MIN, None)])])
    assert pages(notes) == [("firing", T0 + MIN)]


@pytest.mark.parametrize("field", ["coverage", "unknown_s"])
def test_rules_on_the_data_itself_are_never_held(store: AlertStore, field: str) -> None:
    rule = {
        "name": "thin-data",
        "kpi": field,
        "window": "1h",
        "op": "<" if field == "coverage" else ">",
        "threshold": 0.5 if field == "coverage" else 1800,
        "scope": {"machines": ["M1"]},
    }
    engine = engine_for(store, rule)
    thin = {**covered(0.0, 0.25, T0), "unknown_s": 2700.0}
    notes = feed(engine, [Step(T0, [thin])])
    assert pages(notes) == [("firing", T0)]


def test_no_data_still_pages_lost_data_while_kpi_rules_hold(store: AlertStore) -> None:
    silent = {"name": "silent", "no_data": "2m", "scope": {"machines": ["M1"]}}
    engine = engine_for(store, FIRING_NOW, silent)
    # M1 is heard at T0, then nothing: its records show falling coverage and a low OEE,
    # which is no evidence of a failure.
    run = steps([(0.7, 1.0), (0.5, 0.5), (0.3, 0.33), (0.25, 0.25), (0.2, 0.2)])
    run[0].samples = [(T0, "M1", "state", None, "running")]
    notes = feed(engine, run)
    fired = [(a["labels"]["alertname"], n.created_at) for n in notes for a in n.alerts]
    assert set(fired) == {("silent", T0 + 3 * MIN)}


def test_a_forecast_holds_on_a_shift_mostly_without_data_and_still_ends_with_it(
    tmp_path: Path,
) -> None:
    """A service started mid-shift projects from the few minutes it saw: no page on that.
    With data, the same shortfall pages; the shift's end resolves it whatever the data."""
    rule = {**forecast.FORECAST, "for": 0}
    store = AlertStore(tmp_path / "forecast.sqlite3")
    try:
        engine = AlertEngine(forecast.make_plant(rule), store)

        def at(minute: int, output: int, coverage: float, **kw: Any) -> list[Notification]:
            now = forecast.DAY_START + minute * MIN
            shift = {**forecast.shift_record(now, output, **kw), "coverage": coverage}
            engine.observe_record(shift, now)
            return engine.evaluate(now)

        # 60 minutes in, 5 parts seen (a 20,000 target): seen over 3 % of the time.
        assert at(60, 5, 0.03) == []
        assert engine.alerts() == []
        assert [n.kind for n in at(61, 5, 0.9)] == ["firing"]
        # Thin data again, the projection looks fine: not resolved on that.
        assert at(62, 20_000, 0.1) == []
        [alert] = engine.alerts()
        assert alert.state is AlertState.FIRING
        # The shift is over (its final record, still thin): resolved, as any forecast.
        end = (forecast.DAY_END - forecast.DAY_START) // MIN
        assert [n.kind for n in at(end, 5, 0.1, final=True)] == ["resolved"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "r", "no_data": "2m", "min_coverage": 0.5}, "is for kpi and forecast rules"),
        (
            {"name": "r", "signal": "temperature", "op": ">", "threshold": 85, "min_coverage": 0},
            "is for kpi and forecast rules",
        ),
        ({**OEE_LOW, "min_coverage": 1.5}, "less than or equal to 1"),
        ({**OEE_LOW, "min_coverage": -0.1}, "greater than or equal to 0"),
        (
            {"name": "r", "kpi": "coverage", "op": "<", "threshold": 0.5, "min_coverage": 0.5},
            "never held by min_coverage",
        ),
    ],
)
def test_min_coverage_is_checked_at_load(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate(rule)
