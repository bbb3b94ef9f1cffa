"""`min_elapsed`: a KPI record of a window that has only just begun changes no alert.

An hour's OEE one minute into the hour is one minute's OEE: a slow press that has not
finished its first part in it reads 0 %. Records carry `calendar_s`, the time the window
has run (up to the latest event while it is open); below the rule's `min_elapsed` (by
default a third of the window, at most 15 min) the record is held like one below
`min_coverage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from linepulse.alerting import Rule, elapsed_needed_s
from services.alerts.store import AlertStore
from tests.unit.alerts.test_coverage import pages
from tests.unit.alerts.test_engine import MIN, OEE_LOW, T0, Step, engine_for, feed, record

FIRING_NOW = {**OEE_LOW, "for": 0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    opened = AlertStore(tmp_path / "alerts.sqlite3")
    yield opened
    opened.close()


def minute_records(oee: float, minutes: int) -> list[Step]:
    """The first `minutes` of an hour (T0 is on the hour), one record a minute."""
    steps = []
    for i in range(1, minutes + 1):
        at = T0 + i * MIN
        fields: dict[str, Any] = {"coverage": 1.0, "calendar_s": i * 60.0}
        steps.append(Step(at, [{**record("M1", oee, at - 1), **fields}]))
    return steps


@pytest.mark.parametrize(
    ("rule", "needed_s"),
    [
        ({**OEE_LOW, "window": "1m"}, 20.0),
        ({**OEE_LOW, "window": "15m"}, 300.0),
        (OEE_LOW, 900.0),  # 1h
        ({**OEE_LOW, "window": "shift"}, 900.0),
        ({**OEE_LOW, "window": "day"}, 900.0),
        ({**OEE_LOW, "min_elapsed": "2m"}, 120.0),
        ({**OEE_LOW, "min_elapsed": 0}, 0.0),
    ],
)
def test_the_default_is_a_third_of_the_window_at_most_15_min(
    rule: dict[str, Any], needed_s: float
) -> None:
    assert elapsed_needed_s(Rule.model_validate(rule)) == needed_s


def test_a_zero_oee_in_the_first_minutes_of_an_hour_pages_only_once_15_min_have_run(
    store: AlertStore,
) -> None:
    engine = engine_for(store, FIRING_NOW)
    notes = feed(engine, minute_records(0.0, 14))
    assert pages(notes) == []
    assert engine.alerts() == []
    notes = feed(engine, minute_records(0.0, 15)[14:])
    assert pages(notes) == [("firing", T0 + 15 * MIN)]


def test_min_elapsed_0_judges_the_first_minute(store: AlertStore) -> None:
    engine = engine_for(store, {**FIRING_NOW, "min_elapsed": 0})
    notes = feed(engine, minute_records(0.0, 1))
    assert pages(notes) == [("firing", T0 + MIN)]


def test_min_elapsed_is_only_for_kpi_and_forecast_rules() -> None:
    with pytest.raises(ValidationError, match="min_elapsed is for kpi and forecast rules"):
        Rule.model_validate({"name": "down", "signal": "state", "op": "==", "value": "down",
                             "min_elapsed": "1m"})  # fmt: skip
