"""The alert engine over recorded sequences: (now_ms, observations) steps, evaluated in
order, with the notifications counted and compared by key. No clock, no sleeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from linepulse.config import PlantConfig, parse_config
from services.alerts.engine import AlertEngine
from services.alerts.model import AlertState, Matcher, Notification
from services.alerts.store import AlertStore

MIN = 60_000
# Monday 2024-03-04; the plant runs in UTC: day shift 06-14 (break 10:00-10:15), late 14-22.
DAY = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
T0 = DAY + 7 * 60 * MIN  # 07:00, inside the day shift
LEAD = [("ann", "pager"), ("ann", "mail")]
BROADCAST = [(None, "am")]


def make_plant(*rules: dict[str, Any], **alerts: Any) -> PlantConfig:
    shift = {"lead": "ann", "backup": "bob", "breaks": [{"start": "10:00", "end": "10:15"}]}
    return parse_config(
        {
            "site": "plant1",
            "shifts": [
                {"name": "day", "start": "06:00", "end": "14:00", **shift},
                {"name": "late", "start": "14:00", "end": "22:00", "backup": "bob"},
            ],
            "lines": [
                {"id": "L1", "machines": [{"id": "M1"}, {"id": "M2"}]},
                {"id": "L2", "machines": [{"id": "M3"}]},
            ],
            "alerts": {
                "channels": [
                    {"id": "pager", "type": "webhook", "url": "http://127.0.0.1:9/p"},
                    {"id": "mail", "type": "console"},
                    {"id": "am", "type": "alertmanager", "url": "http://127.0.0.1:9/am"},
                ],
                "people": {
                    "ann": {"name": "Ann", "channels": ["pager", "mail"]},
                    "bob": {"name": "Bob", "channels": ["pager"]},
                    "max": {"name": "Max", "channels": ["mail"]},
                },
                "manager": "max",
                "broadcast": ["am"],
                "group_wait": 0,
                "rules": list(rules),
                **alerts,
            },
        }
    )


OEE_LOW = {
    "name": "oee-low",
    "kpi": "oee",
    "window": "1h",
    "op": "<",
    "threshold": 0.6,
    "for": "10m",
    "escalate_after": "1d",
    "scope": {"machines": ["M1"]},
}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(
    machine: str | None, oee: float | None, at: int, line: str = "L1", revision: int = 0
) -> dict[str, Any]:
    """A 1h KPI record of the window containing `at` (only the fields rules read)."""
    start = at - at % (60 * MIN)
    return {
        "site": "plant1",
        "line": line,
        "machine": machine,
        "window": "1h",
        "window_start": iso(start),
        "window_end": iso(start + 60 * MIN),
        "oee": oee,
        "availability": oee,
        "final": False,
        "revision": revision,
    }


Sample = tuple[int, str, str, float | None, str | None]


@dataclass
class Step:
    now: int
    records: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)  # machines whose alert is acked first


def feed(engine: AlertEngine, steps: Sequence[Step]) -> list[Notification]:
    out: list[Notification] = []
    for step in steps:
        for machine in step.acks:
            alert = next(
                a for a in engine.alerts() if a.machine == machine and a.state != "resolved"
            )
            engine.ack(alert.fingerprint, "ann", "on it", step.now)
        for rec in step.records:
            engine.observe_record(rec, step.now)
        engine.observe_samples(step.samples, step.now)
        out += engine.evaluate(step.now)
    return out


def oee_steps(values: Sequence[float | None], machine: str = "M1", start: int = T0) -> list[Step]:
    """One record and one evaluate per minute, from `start`."""
    return [
        Step(start + i * MIN, [record(machine, v, start + i * MIN)]) for i, v in enumerate(values)
    ]


def sent(notes: Sequence[Notification]) -> list[tuple[str, str | None, str, int]]:
    return [(n.kind, n.recipient, n.channel, n.created_at) for n in notes]


def targets(notes: Sequence[Notification], kind: str) -> set[tuple[str | None, str]]:
    return {(n.recipient, n.channel) for n in notes if n.kind == kind}


@pytest.fixture
def store(tmp_path: Path) -> AlertStore:
    return AlertStore(tmp_path / "alerts.sqlite3")


def engine_for(store: AlertStore, *rules: dict[str, Any], **alerts: Any) -> AlertEngine:
    return AlertEngine(make_plant(*rules, **alerts), store)


# -- lifecycle ------------------------------------------------------------------------------


def test_pending_then_firing_after_for(store: AlertStore) -> None:
    engine = engine_for(store, OEE_LOW)
    early = feed(engine, oee_steps([0.5] * 10))  # 07:00 .. 07:09
    assert early == []
    [alert] = engine.alerts()
    assert alert.state is AlertState.PENDING
    assert alert.pending_since == T0
    notes = feed(engine, oee_steps([0.5], start=T0 + 10 * MIN))
    assert sent(notes) == [("firing", p, c, T0 + 10 * MIN) for p, c in LEAD + BROADCAST]
    assert engine.alerts(state="firing")[0].fired_at == T0 + 10 * MIN
    assert notes[0].alerts[0]["summary"] == "oee-low on M1: 0.5"
    assert len({n.key for n in notes}) == len(notes)


def test_pending_dropped_without_notification(store: AlertStore) -> None:
    engine = engine_for(store, OEE_LOW)
    notes = feed(engine, oee_steps([0.5] * 5 + [0.7] + [0.5] * 9))
    assert notes == []  # the 0.7 at minute 5 restarted the `for` clock
    assert engine.alerts()[0].pending_since == T0 + 6 * MIN


@pytest.mark.parametrize(("clear", "firings"), [(0.65, 1), (None, 5)])
def test_hysteresis_keeps_a_hovering_value_from_flapping(
    store: AlertStore, clear: float | None, firings: int
) -> None:
    rule = {**OEE_LOW, "for": 0, "clear": clear}
    hover = [0.55, 0.61, 0.59, 0.62, 0.58, 0.64, 0.57, 0.63, 0.59]
    notes = feed(engine_for(store, rule), oee_steps([*hover, 0.70]))
    kinds = [n.kind for n in notes if n.recipient == "ann" and n.channel == "pager"]
    assert kinds == ["firing", "resolved"] * firings
    if clear is not None:
        assert notes[-1].created_at == T0 + 9 * MIN  # only 0.70 is above clear


def test_keep_firing_for_delays_the_resolve(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "keep_firing_for": "3m"}
    notes = feed(engine_for(store, rule), oee_steps([0.5, 0.7, 0.7, 0.5, 0.7, 0.7, 0.7, 0.7]))
    resolved = [n.created_at for n in notes if n.kind == "resolved" and n.channel == "pager"]
    # Good from minute 1, bad again at 3 (clock reset), good from 4: resolved at 4 + 3.
    assert resolved == [T0 + 7 * MIN]


def test_null_ratio_changes_nothing(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0}
    engine = engine_for(store, rule)
    notes = feed(engine, oee_steps([0.5, None, None, None]))
    assert [n.kind for n in notes] == ["firing"] * 3
    assert engine.alerts()[0].state is AlertState.FIRING


def test_latest_record_of_the_current_window_wins(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0}
    engine = engine_for(store, rule)
    at = T0 + 5 * MIN
    engine.observe_record(record("M1", 0.5, at, revision=2), at)
    engine.observe_record(record("M1", 0.9, at, revision=1), at)  # older revision
    engine.observe_record(record("M1", 0.9, at - 60 * MIN, revision=5), at)  # older window
    engine.observe_record({**record("M1", 0.9, at), "window": "15m"}, at)  # not asked for
    assert [n.kind for n in engine.evaluate(at)] == ["firing"] * 3
    engine.observe_record(record("M1", 0.9, at + 60 * MIN), at + 60 * MIN)  # next window
    assert [n.kind for n in engine.evaluate(at + 60 * MIN)] == ["resolved"] * 3


def test_resolve_goes_to_everyone_paged(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "escalate_after": "5m"}
    notes = feed(engine_for(store, rule), oee_steps([0.5] * 7 + [0.8]))
    assert targets(notes, "escalated") == {("bob", "pager")}
    assert targets(notes, "resolved") == {*LEAD, *BROADCAST, ("bob", "pager")}


# -- suppression ------------------------------------------------------------------------


def test_no_page_while_the_machine_is_in_a_planned_stop(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": "2m"}
    engine = engine_for(store, rule)
    steps = oee_steps([0.3] * 20)
    steps[0].samples = [(T0, "M1", "state", None, "planned_stop")]
    assert feed(engine, steps) == []
    assert engine.alerts() == []
    # Back to work: the low OEE now pages after `for`.
    back = oee_steps([0.3] * 3, start=T0 + 20 * MIN)
    back[0].samples = [(T0 + 20 * MIN, "M1", "state", None, "running")]
    assert [n.created_at for n in feed(engine, back)] == [T0 + 22 * MIN] * 3


def test_no_page_outside_the_shift_or_in_a_break(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": "2m"}
    engine = engine_for(store, rule)
    night = DAY + 23 * 60 * MIN  # 23:00: no shift
    assert feed(engine, oee_steps([0.3] * 10, start=night)) == []
    brk = DAY + 10 * 60 * MIN  # 10:00-10:15 break
    assert feed(engine, oee_steps([0.3] * 15, start=brk)) == []
    assert engine.alerts() == []


def test_firing_alert_is_not_repaged_in_a_planned_stop(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "repeat_interval": "5m"}
    engine = engine_for(store, rule)
    steps = oee_steps([0.3] * 20)
    steps[1].samples = [(T0 + MIN, "M1", "state", None, "planned_stop")]
    notes = feed(engine, steps)
    assert {n.kind for n in notes} == {"firing"}
    assert engine.alerts()[0].state is AlertState.FIRING


# -- silences ---------------------------------------------------------------------------


def test_silence_holds_pages_and_notifies_when_it_ends(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": "2m"}
    engine = engine_for(store, rule)
    silence = engine.add_silence(
        [Matcher("machine", "M.", regex=True), Matcher("alertname", "oee-low")],
        T0,
        T0 + 10 * MIN,
        "ann",
        "maintenance",
        T0,
    )
    assert engine.silences(T0) == [silence]
    notes = feed(engine, oee_steps([0.3] * 12))
    assert engine.alerts()[0].state is AlertState.FIRING  # state moves as usual
    assert [(n.kind, n.created_at) for n in notes] == [("firing", T0 + 10 * MIN)] * 3
    assert engine.silences(T0 + 10 * MIN) == []


def test_silenced_alert_that_resolves_pages_nobody(store: AlertStore) -> None:
    engine = engine_for(store, {**OEE_LOW, "for": 0})
    engine.add_silence([Matcher("line", "L1")], T0, T0 + 60 * MIN, "ann", "pm", T0)
    assert feed(engine, oee_steps([0.3, 0.3, 0.9, 0.9])) == []
    assert engine.alerts()[0].state is AlertState.RESOLVED


def test_silence_validation_and_delete(store: AlertStore) -> None:
    engine = engine_for(store, OEE_LOW)
    with pytest.raises(ValueError, match="matcher"):
        engine.add_silence([], T0, T0 + MIN, "ann", "x", T0)
    with pytest.raises(ValueError, match="end after"):
        engine.add_silence([Matcher("line", "L1")], T0, T0, "ann", "x", T0)
    silence = engine.add_silence([Matcher("line", "L1")], T0, T0 + MIN, "ann", "x", T0)
    assert len(silence.id) == 32
    assert engine.delete_silence(silence.id) is True
    assert engine.delete_silence(silence.id) is False
    assert engine.silences(T0) == []


# -- routing ----------------------------------------------------------------------------


def test_escalation_to_backup_then_manager(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "escalate_after": "5m"}
    engine = engine_for(store, rule)
    notes = feed(engine, oee_steps([0.5] * 16))
    assert [(n.kind, n.recipient, n.escalation, n.created_at) for n in notes[3:]] == [
        ("escalated", "bob", 1, T0 + 5 * MIN),
        ("escalated", "max", 2, T0 + 10 * MIN),
    ]
    assert engine.alerts()[0].escalation == 2


def test_ack_stops_escalation_and_repeats_and_tells_the_paged(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "escalate_after": "5m", "repeat_interval": "2m"}
    engine = engine_for(store, rule)
    steps = oee_steps([0.5] * 30)
    steps[3].acks = ["M1"]
    notes = feed(engine, steps)
    assert [(n.kind, n.created_at) for n in notes if n.channel == "pager"] == [
        ("firing", T0),
        ("repeat", T0 + 2 * MIN),
        ("acknowledged", T0 + 3 * MIN),
    ]
    assert targets(notes, "acknowledged") == {*LEAD, *BROADCAST}
    [alert] = engine.alerts()
    assert (alert.state, alert.acked_by, alert.ack_comment) == ("acknowledged", "ann", "on it")


def test_ack_errors(store: AlertStore) -> None:
    engine = engine_for(store, {**OEE_LOW, "for": "5m"})
    with pytest.raises(KeyError):
        engine.ack("nope", "ann", None, T0)
    feed(engine, oee_steps([0.5]))
    fp = engine.alerts()[0].fingerprint
    with pytest.raises(ValueError, match="pending"):
        engine.ack(fp, "ann", None, T0)
    feed(engine, oee_steps([0.5] * 5 + [0.9], start=T0 + MIN))
    assert engine.alerts()[0].state is AlertState.RESOLVED
    with pytest.raises(ValueError, match="resolved"):
        engine.ack(fp, "ann", None, T0 + 7 * MIN)


def test_no_lead_on_duty_pages_the_backup_then_manager(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "escalate_after": "5m"}
    engine = engine_for(store, rule)
    late = DAY + 15 * 60 * MIN  # the late shift names only a backup
    notes = feed(engine, oee_steps([0.5] * 6, start=late))
    assert [(n.kind, n.recipient) for n in notes] == [
        ("firing", "bob"),
        ("firing", None),
        ("escalated", "max"),
    ]


def test_machines_of_one_line_within_group_wait_make_one_page(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "scope": {"lines": ["L1"]}}
    engine = engine_for(store, rule, group_wait="30s")
    engine.observe_record(record("M1", 0.5, T0), T0)
    assert engine.evaluate(T0) == []  # waiting for the group to fill
    engine.observe_record(record("M2", 0.4, T0 + 20_000), T0 + 20_000)
    assert engine.evaluate(T0 + 20_000) == []
    notes = engine.evaluate(T0 + 30_000)
    assert sent(notes) == [("firing", p, c, T0 + 30_000) for p, c in LEAD + BROADCAST]
    assert [sorted(a["labels"]["machine"] for a in n.alerts) for n in notes] == [["M1", "M2"]] * 3
    # Each machine resolves on its own, to the same people.
    engine.observe_record(record("M2", 0.9, T0 + MIN), T0 + MIN)
    resolved = engine.evaluate(T0 + MIN)
    assert [[a["labels"]["machine"] for a in n.alerts] for n in resolved] == [["M2"]] * 3


def test_alert_firing_after_group_wait_starts_its_own_group(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "scope": {"lines": ["L1"]}}
    engine = engine_for(store, rule, group_wait="30s")
    engine.observe_record(record("M1", 0.5, T0), T0)
    engine.evaluate(T0)
    engine.observe_record(record("M2", 0.4, T0 + MIN), T0 + MIN)
    first = engine.evaluate(T0 + MIN)  # M1's group pages; M2 opens a new group
    assert [[a["labels"]["machine"] for a in n.alerts] for n in first] == [["M1"]] * 3
    second = engine.evaluate(T0 + MIN + 30_000)
    assert [[a["labels"]["machine"] for a in n.alerts] for n in second] == [["M2"]] * 3
    assert {n.group for n in first}.isdisjoint({n.group for n in second})


def test_repeat_interval(store: AlertStore) -> None:
    rule = {**OEE_LOW, "for": 0, "repeat_interval": "30m"}
    notes = feed(engine_for(store, rule), oee_steps([0.5] * 61))
    pager = [(n.kind, n.created_at) for n in notes if n.recipient == "ann" and n.channel == "pager"]
    assert pager == [("firing", T0), ("repeat", T0 + 30 * MIN), ("repeat", T0 + 60 * MIN)]
    assert len({n.key for n in notes}) == len(notes)


# -- restart ------------------------------------------------------------------------------


def scenario() -> list[Step]:
    """Two machines of L1 breach together, one is acked, the other escalates, a silence
    covers part of it, then both recover."""
    values = [0.5] * 14 + [0.9] * 3
    steps = [
        Step(
            T0 + i * MIN,
            [record("M1", v, T0 + i * MIN), record("M2", v - 0.05, T0 + i * MIN)],
        )
        for i, v in enumerate(values)
    ]
    steps[5].acks = ["M1"]
    steps[0].samples = [(T0, "M1", "temperature", 80.0, None)]
    steps[2].samples = [(T0 + 2 * MIN, "M1", "temperature", 90.0, None)]
    steps[9].samples = [(T0 + 9 * MIN, "M1", "temperature", 70.0, None)]
    return steps


RESTART_RULES: list[dict[str, Any]] = [
    {**OEE_LOW, "for": "2m", "escalate_after": "4m", "scope": {"lines": ["L1"]}},
    {"name": "hot", "signal": "temperature", "op": ">", "threshold": 85, "for": "1m"},
]


def run(store: AlertStore, steps: Sequence[Step]) -> list[Notification]:
    engine = engine_for(store, *RESTART_RULES, group_wait="30s", repeat_interval="3m")
    return feed(engine, steps)


@pytest.mark.parametrize("split", [1, 3, 4, 6, 9, 12, 15])
def test_restart_in_the_middle_changes_nothing(tmp_path: Path, split: int) -> None:
    steps = scenario()
    whole = run(AlertStore(tmp_path / "a.sqlite3"), steps)
    assert {"firing", "escalated", "acknowledged", "repeat", "resolved"} <= {n.kind for n in whole}
    path = tmp_path / "b.sqlite3"
    first = run(AlertStore(path), steps[:split])
    second = run(AlertStore(path), steps[split:])  # a new engine on the same file
    assert [n.key for n in first + second] == [n.key for n in whole]
    assert first + second == whole
    # The store keeps what was emitted, for the outbox to re-offer after a crash.
    assert sorted(n.key for n in AlertStore(path).notifications()) == sorted(n.key for n in whole)


# -- signal rules and no_data -------------------------------------------------------------


def test_signal_rule_temperature_above_85(store: AlertStore) -> None:
    rule = {"name": "hot", "signal": "temperature", "op": ">", "threshold": 85, "for": "1m"}
    engine = engine_for(store, rule)
    steps = [
        Step(T0 + i * MIN, samples=[(T0 + i * MIN, "M3", "temperature", t, None)])
        for i, t in enumerate([80.0, 86.0, 88.0, 84.0])
    ]
    notes = feed(engine, steps)
    assert [(n.kind, n.created_at) for n in notes if n.channel == "pager"] == [
        ("firing", T0 + 2 * MIN),
        ("resolved", T0 + 3 * MIN),
    ]
    assert notes[0].alerts[0]["labels"]["line"] == "L2"
    assert notes[0].alerts[0]["value"] == 88.0


def test_state_down_for_five_minutes(store: AlertStore) -> None:
    rule = {"name": "down", "signal": "state", "op": "==", "value": "down", "for": "5m"}
    engine = engine_for(store, rule)
    steps = [Step(T0 + i * MIN) for i in range(8)]
    steps[0].samples = [(T0, "M2", "state", None, "running")]
    steps[1].samples = [(T0 + MIN, "M2", "state", None, "down")]
    notes = feed(engine, steps)
    assert {n.created_at for n in notes} == {T0 + 6 * MIN}
    assert {a["labels"]["machine"] for n in notes for a in n.alerts} == {"M2"}


def test_state_map_applies_to_state_samples(store: AlertStore) -> None:
    plant = make_plant({"name": "down", "signal": "state", "op": "==", "value": "down"})
    plant = plant.model_copy(update={"state_map": {"6": "down"}})
    engine = AlertEngine(plant, store)
    engine.observe_samples([(T0, "M1", "state", 6.0, "6")], T0)
    assert [n.kind for n in engine.evaluate(T0)] == ["firing"] * 3


def test_no_data_after_two_minutes(store: AlertStore) -> None:
    rule = {"name": "silent", "no_data": "2m", "scope": {"machines": ["M1", "M3"]}}
    engine = engine_for(store, rule)
    steps = [Step(T0 + i * 30_000) for i in range(8)]  # every 30 s for 3.5 min
    for step in steps[:3]:
        step.samples = [(step.now, "M1", "speed", 1.0, None)]  # M1 heard until T0+60s
    notes = feed(engine, steps)
    fired = sorted((n.created_at, a["labels"]["machine"]) for n in notes for a in n.alerts)
    # M3 never heard: silent since the engine's first evaluate (T0).
    assert sorted(set(fired)) == [(T0 + 150_000, "M3"), (T0 + 210_000, "M1")]
    engine.observe_samples([(T0 + 220_000, "M1", "speed", 1.0, None)], T0 + 220_000)
    resolved = engine.evaluate(T0 + 220_000)
    assert {n.kind for n in resolved} == {"resolved"}


# -- templates ----------------------------------------------------------------------------


def test_template_with_unknown_placeholder_does_not_raise(store: AlertStore) -> None:
    rule = {
        **OEE_LOW,
        "for": 0,
        "summary": "{rule} {machine}@{line}/{site} {value:.0%} < {threshold} ({window}) {oops}",
        "runbook": "see {0} and {value:%Y}",
    }
    engine = engine_for(store, rule)
    notes = feed(engine, oee_steps([0.5]))
    alert = notes[0].alerts[0]
    assert alert["summary"] == "oee-low M1@L1/plant1 50% < 0.6 (1h) {oops}"
    assert alert["runbook"] == "see {0} and {value:%Y}"


def test_alerts_filters(store: AlertStore) -> None:
    rules = [
        {**OEE_LOW, "for": 0},
        {
            **OEE_LOW,
            "name": "avail",
            "kpi": "availability",
            "severity": "critical",
            "for": 0,
            "scope": {"lines": ["L2"], "line_records": True},
        },
    ]
    engine = engine_for(store, *rules)
    engine.observe_record(record("M1", 0.5, T0), T0)
    engine.observe_record(record(None, 0.5, T0, line="L2"), T0)
    engine.evaluate(T0)
    assert len(engine.alerts()) == 2
    [critical] = engine.alerts(severity="critical")
    assert critical.labels == {
        "alertname": "avail",
        "severity": "critical",
        "site": "plant1",
        "line": "L2",
    }
    assert engine.alerts(line="L1", state="firing")[0].machine == "M1"
    assert engine.alerts(state="resolved") == []
