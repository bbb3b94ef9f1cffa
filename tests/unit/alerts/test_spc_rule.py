"""The `spc` alert rule: a chart of the plant's `spc:` followed live from telemetry pages
the shift lead when its subgroups break the chart's rules, and resolves at the next
subgroup in control; a rule on a chart without fixed limits, or on no chart, is refused
when the config is loaded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.telemetry_writer import TelemetryWriter
from linepulse.bus.topics import ensure_topics
from linepulse.config import ConfigError, PlantConfig, parse_config
from linepulse.events import EVENT_SCHEMA
from services.alerts.engine import AlertEngine
from services.alerts.model import AlertState
from services.alerts.rules import PAST_AFTER_MS
from services.alerts.service import AlertService
from services.alerts.store import AlertStore
from tests.unit.alerts.test_engine import LEAD, T0, make_plant

CHART: dict[str, Any] = {
    "machine": "M1",
    "signal": "fill_g",
    "subgroup_size": 5,
    "limits": {"center": 500.0, "sigma": 1.0},
}
RULE: dict[str, Any] = {"name": "fill-drift", "spc": "M1/fill_g", "severity": "warning"}


def plant(chart: dict[str, Any] = CHART, rule: dict[str, Any] = RULE) -> PlantConfig:
    data = make_plant().model_dump(mode="json", by_alias=True, exclude_none=True)
    data["alerts"]["rules"] = [rule]
    data["spc"] = [chart]
    data["kpi"] = {**data["kpi"], "lateness_s": 0}
    return parse_config(data)


def fills(start: int, values: list[float]) -> pl.DataFrame:
    """Fill weights of M1 one a second from `start`, and a temperature beside them."""
    rows = []
    for i, value in enumerate(values):
        ts = start + i * 1000
        rows.append((ts, "M1", "fill_g", value, None, None, None, None))
        rows.append((ts, "M1", "temperature", 61.0, None, None, None, None))
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def test_a_drifting_fill_weight_pages_and_resolves_when_back_in_control(tmp_path: Path) -> None:
    engine = AlertEngine(plant(), AlertStore.in_dir(tmp_path))
    # Eight subgroups at the centre, then subgroups creeping up by 0.3 g each.
    steady = [500.0 + (0.2 if i % 2 else -0.2) for i in range(40)]
    engine.observe_spc(fills(T0, steady))
    assert engine.evaluate(T0 + 60_000) == []
    creeping = [500.0 + (i // 5) * 0.3 for i in range(35)]
    engine.observe_spc(fills(T0 + 40_000, creeping))
    notes = engine.evaluate(T0 + 120_000)
    (alert,) = engine.alerts(state=AlertState.FIRING)
    assert alert.summary.startswith("M1 fill_g out of control: ")
    assert "6_trending" in alert.summary or "4_of_5_beyond_1sigma" in alert.summary
    assert {(n.recipient, n.channel) for n in notes} >= set(LEAD)
    # Back at the centre. The last creeping subgroup closes only once a later sample
    # passes it (lateness 0), with the first one in control: together they still breach.
    engine.observe_spc(fills(T0 + 75_000, [500.0] * 6))
    engine.evaluate(T0 + 180_000)
    assert len(engine.alerts(state=AlertState.FIRING)) == 1
    # The next subgroup, alone in control, resolves it.
    engine.observe_spc(fills(T0 + 81_000, [500.0] * 5))
    engine.evaluate(T0 + 240_000)
    assert engine.alerts(state=AlertState.FIRING) == []
    assert [a.rule for a in engine.alerts(state=AlertState.RESOLVED)] == ["fill-drift"]


def test_a_violation_between_two_evaluations_is_not_missed(tmp_path: Path) -> None:
    """One subgroup beyond the limit, then one in control, both before the engine looks:
    it still fires."""
    engine = AlertEngine(plant(), AlertStore.in_dir(tmp_path))
    engine.observe_spc(fills(T0, [505.0] * 5 + [500.0]))
    engine.observe_spc(fills(T0 + 6_000, [500.0] * 5))
    engine.evaluate(T0 + 60_000)
    (alert,) = engine.alerts(state=AlertState.FIRING)
    assert "beyond_3sigma" in alert.summary


def test_subgroups_of_the_past_page_nobody(tmp_path: Path) -> None:
    """A backlog worked off (a simulated plant's history, a spool drained): a subgroup
    that broke a rule more than `PAST_AFTER_MS` before the engine looks pages nobody, as a
    past KPI record does not; a fresh one does."""
    engine = AlertEngine(plant(), AlertStore.in_dir(tmp_path))
    engine.observe_spc(fills(T0, [505.0] * 5 + [500.0] * 6))
    assert engine.evaluate(T0 + PAST_AFTER_MS + 60_000) == []
    assert engine.alerts(state=AlertState.FIRING) == []
    late = T0 + PAST_AFTER_MS
    engine.observe_spc(fills(late, [505.0] * 5 + [500.0]))
    engine.evaluate(late + 60_000)
    (alert,) = engine.alerts(state=AlertState.FIRING)
    assert "beyond_3sigma" in alert.summary


@pytest.mark.parametrize(
    ("chart", "rule", "said"),
    [
        (CHART, {**RULE, "spc": "M1/torque"}, r"no chart 'M1/torque' in spc: \(M1/fill_g\)"),
        (
            {key: v for key, v in CHART.items() if key != "limits"},
            RULE,
            "has no fixed limits",
        ),
        (CHART, {**RULE, "op": ">", "threshold": 1}, "fires on its chart's own rules"),
    ],
)
def test_an_spc_rule_is_checked_with_the_config(
    chart: dict[str, Any], rule: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigError, match=said):
        plant(chart, rule)


async def test_the_alerts_service_follows_the_chart_from_the_telemetry_topic(
    tmp_path: Path,
) -> None:
    """The wiring: fill weights written to the telemetry topic (the in-process bus, as the
    demo runs it) reach the live chart of a running `AlertService`, and it fires."""
    config = plant()
    clients = InProcessClients(InProcessBroker())
    await ensure_topics("in-process", config.kafka, clients)
    service = AlertService(config, "in-process", tmp_path, clients)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(task.run(stop), name=task.name) for task in service.tasks]
    try:
        async with TelemetryWriter(clients.producer(), config, record_samples=100) as writer:
            start = int(time.time() * 1000)
            # Subgroups rising 0.5 g each, sent until the chart has fired: the follower
            # starts at the topic's end, so what it missed before it started is no matter.
            for n in range(200):
                if service.engine.alerts(state=AlertState.FIRING):
                    break
                values = [500.0 + n * 0.5] * 5
                await writer.write(fills(start + n * 5_000, values))
                await asyncio.sleep(0.05)
        (alert,) = service.engine.alerts(state=AlertState.FIRING)
        assert alert.rule == "fill-drift"
        assert alert.summary.startswith("M1 fill_g out of control")
        # And in /metrics: the limits, the subgroups charted, the rules broken.
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in service.registry.collect()
            for sample in family.samples
        }
        chart = (("chart", "M1/fill_g"),)
        limit = ("linepulse_spc_limit", (*chart, ("limit", "ucl")))
        assert metrics[limit] == pytest.approx(500 + 3 / 5**0.5)
        charted = metrics[("linepulse_spc_subgroups_total", chart)]
        assert charted >= 2  # the rise is seen over subgroups
        broken = [
            v for (name, labels), v in metrics.items() if name == "linepulse_spc_broken_total"
        ]
        assert sum(broken) > 0
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        service.close()
