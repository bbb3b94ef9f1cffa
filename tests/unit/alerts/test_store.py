"""The store on its own, and the engine's state surviving a reopen of the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.alerts.engine import AlertEngine
from services.alerts.model import AlertState, Matcher
from services.alerts.store import AlertStore
from tests.unit.alerts.test_engine import MIN, OEE_LOW, T0, feed, make_plant, oee_steps


def test_commit_load_delete_prune(tmp_path: Path) -> None:
    store = AlertStore.in_dir(tmp_path / "state")
    store.commit({"alerts": {"a": (1, {"x": 1}), "b": (5, {"x": 2})}, "meta": {"m": (0, {})}})
    store.commit({"alerts": {"a": (2, {"x": 3})}}, {"meta": ["m"]}, {"alerts": 3})
    store.close()
    reopened = AlertStore.in_dir(tmp_path / "state")
    assert reopened.load("alerts") == {"b": {"x": 2}}  # "a" (at 2) pruned before 3
    assert reopened.load("meta") == {}


def test_failed_commit_leaves_nothing(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "s.sqlite3")
    store.commit({"groups": {"g": (0, {"v": 1})}})
    with pytest.raises(TypeError):
        store.commit({"groups": {"g": (0, {"v": 2}), "h": (0, {"v": object()})}})
    assert store.load("groups") == {"g": {"v": 1}}


def test_open_alert_ack_and_silence_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    plant = make_plant({**OEE_LOW, "for": 0})
    engine = AlertEngine(plant, AlertStore(path))
    notes = feed(engine, oee_steps([0.5]))
    [alert] = engine.alerts()
    engine.ack(alert.fingerprint, "ann", "looking", T0 + MIN)
    silence = engine.add_silence([Matcher("line", "L1")], T0, T0 + 60 * MIN, "ann", "pm", T0)

    again = AlertEngine(plant, AlertStore(path))
    [restored] = again.alerts()
    assert restored == alert
    assert restored.state is AlertState.ACKNOWLEDGED
    assert again.silences(T0) == [silence]
    # The ack is told once, after the restart, and the firing page is not repeated.
    later = again.evaluate(T0 + 2 * MIN)
    assert {n.kind for n in later} == {"acknowledged"}
    assert {n.key for n in later}.isdisjoint({n.key for n in notes})
    assert again.evaluate(T0 + 3 * MIN) == []


def test_resolved_alerts_are_kept_a_day(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    engine = AlertEngine(make_plant({**OEE_LOW, "for": 0}), AlertStore(path))
    feed(engine, oee_steps([0.5, 0.9]))
    assert [a.state for a in engine.alerts()] == [AlertState.RESOLVED]
    engine.evaluate(T0 + 24 * 60 * MIN)
    assert len(engine.alerts()) == 1
    engine.evaluate(T0 + 24 * 60 * MIN + 2 * MIN)
    assert engine.alerts() == []
    assert AlertStore(path).load("alerts") == {}
