"""`forecast: target_miss` over recorded sequences of line shift records: a shift that
runs slow pages the lead well before it ends; one that will make its target pages nobody.

The records carry what the KPI core puts on a line's `shift` record: `output_count` (the
output machine's good parts so far), `target_count`, and `projected_count` (the output
at the shift's end at the current rate: output + output / planned time so far x planned
time still ahead; the output itself once final).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from linepulse.config import PlantConfig, parse_config
from services.alerts.engine import AlertEngine
from services.alerts.model import AlertState, Notification
from services.alerts.rules import targets
from services.alerts.store import AlertStore

MIN = 60_000
HOUR = 60 * MIN
DAY = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)  # a Monday; the plant is UTC
DAY_START, DAY_END = DAY + 6 * HOUR, DAY + 14 * HOUR  # the day shift, a break 10:00-10:15
BREAK = (DAY + 10 * HOUR, DAY + 10 * HOUR + 15 * MIN)
PLANNED_MIN = 8 * 60 - 15
TARGET = 20_000  # parts per shift: 43 a planned minute
LATENESS = 10_000

FORECAST: dict[str, Any] = {
    "name": "behind-plan",
    "forecast": "target_miss",
    "margin": 0.05,
    "for": "15m",
    "escalate_after": "1d",
    "severity": "critical",
}


def make_plant(*rules: dict[str, Any], target: dict[str, Any] | None = None) -> PlantConfig:
    shift = {"lead": "ann", "backup": "bob"}
    return parse_config(
        {
            "site": "plant1",
            "shifts": [
                {"name": "day", "start": "06:00", "end": "14:00", **shift,
                 "breaks": [{"start": "10:00", "end": "10:15"}]},
                {"name": "late", "start": "14:00", "end": "22:00", **shift},
            ],
            "lines": [
                {"id": "L1", "machines": [{"id": "M1"}, {"id": "M2", "ideal_cycle_time_s": 1.2}],
                 "target": target or {"parts": TARGET}},
                {"id": "L2", "machines": [{"id": "M3"}]},  # no target: not watched
            ],
            "alerts": {
                "channels": [{"id": "pager", "type": "webhook", "url": "http://127.0.0.1:9/p"}],
                "people": {
                    "ann": {"name": "Ann", "channels": ["pager"]},
                    "bob": {"name": "Bob", "channels": ["pager"]},
                },
                "group_wait": 0,
                "repeat_interval": "1d",
                "rules": list(rules),
            },
        }
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> AlertStore:
    return AlertStore(tmp_path / "alerts.sqlite3")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def planned_min(at: int, start: int = DAY_START) -> float:
    """Planned minutes of the day shift from its start to `at` (the break left out)."""
    elapsed = (min(at, start + 8 * HOUR) - start) / MIN
    overlap = max(0, min(at, BREAK[1]) - BREAK[0]) / MIN if start == DAY_START else 0
    return elapsed - overlap


def shift_record(
    at: int,
    output: int,
    *,
    target: int | None = TARGET,
    final: bool = False,
    start: int = DAY_START,
    shift: str = "day",
    line: str = "L1",
    revision: int = 0,
) -> dict[str, Any]:
    """The line's `shift` record as of `at` (only the fields rules read)."""
    done = planned_min(at, start)
    if final:
        projected: float | None = float(output)
    elif done > 0:
        projected = output + output / done * (PLANNED_MIN - done)
    else:
        projected = None
    return {
        "site": "plant1",
        "line": line,
        "machine": None,
        "window": "shift",
        "window_start": iso(start),
        "window_end": iso(start + 8 * HOUR),
        "shift": shift,
        "output_count": output,
        "target_count": target,
        "projected_count": projected,
        "final": final,
        "revision": revision,
    }


Step = tuple[int, list[dict[str, Any]]]  # (now, records observed then)


def simulate(rate: Callable[[int], float], *, end: int = DAY_END, **kw: Any) -> list[Step]:
    """A simulated day shift: the line makes `rate(minute)` good parts per planned minute;
    one line record and one evaluate a minute, then the final record `LATENESS` after the
    shift's end (when the watermark passes it)."""
    steps: list[Step] = []
    output = 0.0
    for minute in range(1, (end - DAY_START) // MIN + 1):
        at = DAY_START + minute * MIN
        if not BREAK[0] < at <= BREAK[1]:
            output += rate(minute)
        steps.append((at, [shift_record(at, int(output), **kw)]))
    if end == DAY_END:
        steps.append((DAY_END + LATENESS, [shift_record(DAY_END, int(output), final=True, **kw)]))
    return steps


def feed(engine: AlertEngine, steps: Sequence[Step]) -> list[Notification]:
    out: list[Notification] = []
    for now, records in steps:
        for record in records:
            engine.observe_record(record, now)
        out += engine.evaluate(now)
    return out


def pages(notes: Sequence[Notification]) -> list[tuple[str, int]]:
    """What the lead on duty heard, and when."""
    return [(n.kind, n.created_at) for n in notes if n.recipient == "ann"]


def at(hh: int, mm: int = 0) -> int:
    return DAY + hh * HOUR + mm * MIN


# -- a shift that runs slow, a shift that will make it -----------------------------------


def test_a_slow_shift_pages_well_before_its_end_and_resolves_when_it_ends(
    store: AlertStore,
) -> None:
    engine = AlertEngine(make_plant(FORECAST), store)
    notes = feed(engine, simulate(lambda minute: 36.0))  # 36 of the 43 a minute needed
    # Short from the first minute (16,740 projected < 19,000): pending at 06:01, paged
    # after `for` (15 min), resolved at once when the shift is over.
    assert pages(notes) == [("firing", at(6, 16)), ("resolved", at(14))]
    alert = notes[0].alerts[0]
    assert alert["summary"] == "L1: shift day projected 16740 of target 20000 (3260 short)"
    assert alert["severity"] == "critical"
    assert alert["labels"] == {
        "alertname": "behind-plan",
        "severity": "critical",
        "site": "plant1",
        "line": "L1",
        "shift": "day",
        "shift_start": "2024-03-04T06:00:00Z",
    }
    [resolved] = engine.alerts()
    assert resolved.state is AlertState.RESOLVED


def test_a_slowdown_in_the_shift_pages_hours_before_the_end(store: AlertStore) -> None:
    # On plan (45/min) until 09:00, then the line drops to 30/min: the projection falls
    # below 19,000 during the late morning, long before 14:00.
    engine = AlertEngine(make_plant(FORECAST), store)
    notes = feed(engine, simulate(lambda minute: 45.0 if minute <= 180 else 30.0))
    [(kind, fired_at), _] = pages(notes)
    assert kind == "firing"
    assert at(9) < fired_at < at(12)
    assert notes[0].alerts[0]["value"] < TARGET * 0.95


@pytest.mark.parametrize(
    ("rate", "margin"),
    [(45.0, 0.05), (44.0, 0.0), (41.0, 0.05)],  # ahead; on target; 4.7 % short
    ids=["ahead", "on-target", "short-within-margin"],
)
def test_a_shift_that_will_make_it_pages_nobody(
    store: AlertStore, rate: float, margin: float
) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "margin": margin}), store)
    assert feed(engine, simulate(lambda minute: rate)) == []
    assert engine.alerts() == []


def test_the_margin_decides(store: AlertStore) -> None:
    # 41 a minute: 19,065 projected, 4.7 % short of 20,000: within 5 %, not within 2 %.
    engine = AlertEngine(make_plant({**FORECAST, "margin": 0.02, "for": 0}), store)
    notes = feed(engine, simulate(lambda minute: 41.0, end=at(7)))
    assert pages(notes) == [("firing", at(6, 1))]


# -- resolving ----------------------------------------------------------------------------


def test_resolves_when_the_projection_recovers_after_keep_firing_for(store: AlertStore) -> None:
    rule = {**FORECAST, "for": "5m", "keep_firing_for": "10m"}
    engine = AlertEngine(make_plant(rule), store)
    # Slow for the first hour, then fast enough to pull the projection back above 19,000.
    notes = feed(engine, simulate(lambda minute: 30.0 if minute <= 60 else 60.0, end=at(9)))
    [(firing, fired_at), (resolved, resolved_at)] = pages(notes)
    assert (firing, fired_at) == ("firing", at(6, 6))
    back = next(
        now
        for now, [rec] in simulate(lambda m: 30.0 if m <= 60 else 60.0, end=at(9))
        if now > at(7) and rec["projected_count"] >= TARGET * 0.95
    )
    assert resolved == "resolved"
    assert resolved_at == back + 10 * MIN  # the projection stayed back for 10 minutes


def test_a_pending_alert_that_recovers_pages_nobody(store: AlertStore) -> None:
    engine = AlertEngine(make_plant(FORECAST), store)
    steps = [(at(7, i), [shift_record(at(7, i), 2000 if i < 10 else 3300)]) for i in range(1, 20)]
    assert feed(engine, steps) == []
    assert engine.alerts() == []


def test_a_final_record_resolves_at_once(store: AlertStore) -> None:
    # keep_firing_for does not hold it: the shift is over; the miss is a fact now.
    engine = AlertEngine(make_plant({**FORECAST, "for": 0, "keep_firing_for": "1h"}), store)
    steps = simulate(lambda minute: 20.0, end=at(13))
    # The watermark ran ahead of our clock: the final record arrives at 13:00.
    steps.append((at(13, 0) + 1, [shift_record(DAY_END, 9000, final=True)]))
    notes = feed(engine, steps)
    assert pages(notes) == [("firing", at(6, 1)), ("resolved", at(13) + 1)]
    assert feed(engine, [(at(13, 1), [shift_record(DAY_END, 9000, final=True, revision=1)])]) == []


def test_the_clock_past_the_shift_end_resolves_without_a_final_record(store: AlertStore) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "for": 0}), store)
    steps = simulate(lambda minute: 20.0, end=at(13, 59))
    notes = feed(engine, [*steps, (at(14), []), (at(14, 1), [])])
    assert pages(notes) == [("firing", at(6, 1)), ("resolved", at(14))]


def test_the_next_shifts_record_ends_the_last_ones_alert(store: AlertStore) -> None:
    # The final record of the day shift never came (e.g. it was superseded in flight),
    # and our clock is behind: the late shift's first record still ends the day's alert,
    # and the late shift gets its own alert (its own fingerprint) when it runs slow too.
    engine = AlertEngine(make_plant({**FORECAST, "for": 0}), store)
    feed(engine, simulate(lambda minute: 20.0, end=at(13)))
    late: dict[str, Any] = {"start": DAY_END, "shift": "late"}
    notes = feed(engine, [(at(13, 30), [shift_record(DAY_END + 30 * MIN, 400, **late)])])
    assert sorted(pages(notes)) == [("firing", at(13, 30)), ("resolved", at(13, 30))]
    day, late_alert = engine.alerts()
    assert day.state is AlertState.RESOLVED
    assert day.labels["shift"] == "day"
    assert late_alert.state is AlertState.FIRING
    assert late_alert.labels["shift_start"] == "2024-03-04T14:00:00Z"
    assert late_alert.fingerprint != day.fingerprint


def test_a_late_shift_projection_is_read_too(store: AlertStore) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "for": 0}), store)
    late: dict[str, Any] = {"start": DAY_END, "shift": "late"}
    notes = feed(engine, [(at(15), [shift_record(at(15), 2500, **late)])])  # 19,375: in margin
    assert notes == []
    notes = feed(engine, [(at(15, 1), [shift_record(at(15, 1), 2000, **late)])])  # 15,246
    assert pages(notes) == [("firing", at(15, 1))]


# -- nothing to read ----------------------------------------------------------------------


def test_no_record_no_target_no_projection_change_nothing(store: AlertStore) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "for": 0}), store)
    assert feed(engine, [(at(7), [])]) == []
    steps = [
        (at(7, 1), [shift_record(at(7, 1), 100, target=None)]),  # no target for this shift
        (at(7, 2), [{**shift_record(at(7, 2), 100), "projected_count": None}]),
        (at(7, 3), [shift_record(at(7, 3), 100, line="L2")]),  # a line without a target
        (at(7, 4), [{**shift_record(at(7, 4), 100), "machine": "M2"}]),  # a machine record
        (at(7, 5), [{**shift_record(at(7, 5), 100), "window": "1h"}]),
    ]
    assert feed(engine, steps) == []
    assert engine.alerts() == []


def test_an_unknown_projection_keeps_a_firing_alert(store: AlertStore) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "for": 0}), store)
    feed(engine, [(at(7), [shift_record(at(7), 100)])])
    notes = feed(engine, [(at(7, 1), [{**shift_record(at(7, 1), 100), "projected_count": None}])])
    assert notes == []
    assert engine.alerts()[0].state is AlertState.FIRING


def test_watches_every_line_with_a_target_or_the_lines_in_scope() -> None:
    plant = make_plant(FORECAST, {**FORECAST, "name": "l1", "scope": {"lines": ["L1"]}})
    assert [(t.line, t.machine) for t in targets(plant.alerts.rules[0], plant)] == [("L1", None)]
    assert [(t.line, t.machine) for t in targets(plant.alerts.rules[1], plant)] == [("L1", None)]


# -- suppression, restart ------------------------------------------------------------------


def test_a_break_does_not_hold_it_a_line_wide_planned_stop_does(
    store: AlertStore, tmp_path: Path
) -> None:
    engine = AlertEngine(make_plant({**FORECAST, "for": "5m"}), store)
    # Pending from 10:01 (inside the break) and paged at 10:06, still in the break.
    steps = [(at(10, i), [shift_record(at(10, i), 5000)]) for i in range(1, 8)]
    assert pages(feed(engine, steps)) == [("firing", at(10, 6))]

    quiet = AlertEngine(make_plant({**FORECAST, "for": 0}), AlertStore(tmp_path / "q"))
    stopped = [(at(7), m, "state", None, "planned_stop") for m in ("M1", "M2")]
    quiet.observe_samples(stopped, at(7))
    assert feed(quiet, [(at(7), [shift_record(at(7), 100)])]) == []
    assert quiet.alerts() == []


def test_a_restart_neither_repages_nor_forgets(tmp_path: Path) -> None:
    steps = simulate(lambda minute: 36.0)
    whole = feed(AlertEngine(make_plant(FORECAST), AlertStore(tmp_path / "a")), steps)
    path = tmp_path / "b"
    first = feed(AlertEngine(make_plant(FORECAST), AlertStore(path)), steps[:100])
    second = feed(AlertEngine(make_plant(FORECAST), AlertStore(path)), steps[100:])
    assert [n.key for n in first + second] == [n.key for n in whole]
