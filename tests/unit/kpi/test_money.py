"""Money (issue 20, item 2): the core's own records priced at the config's rates, every
figure checked by hand; reasons, machines and lines reconcile; the month so far against
its budget, projected over the shift calendar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from linepulse.config import ConfigError, PlantConfig
from linepulse.costs import Pricing
from services.kpi.api import create_app
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from tests.unit.kpi.core.support import ev, plant, run
from tests.unit.kpi.served import api_over_core
from tests.unit.kpi.test_trends import DAYS, SHIFTS, events, planned_s

# 12 a lost minute, 0.50 a good part not made, 0.20 a scrap part; ideal cycle 1 s.
MINUTE, PART, SCRAP = 12.0, 0.5, 0.2
COSTS = {
    "currency": "EUR",
    "downtime_minute_cost": MINUTE,
    "good_part_value": PART,
    "scrap_part_cost": SCRAP,
    "budget": {"monthly_loss": 80_000, "oee_target": 0.8},
}


def day_cost(parts: int, rejects: int, down_min: int, planned: float) -> dict[str, float]:
    """One day of m1 by hand: a lost second costs MINUTE/60 plus PART (1 s = one part);
    a reject also SCRAP."""
    per_s = MINUTE / 60 + PART
    down = down_min * 60
    slow = planned - down - parts  # run time beyond the ideal time of the parts made
    return {
        "equipment_failure": down * per_s,
        "slow_cycles": slow * per_s,
        "production_rejects": rejects * (per_s + SCRAP),
    }


def config(**extra: Any) -> PlantConfig:
    return plant(SHIFTS, kpi={"windows": ["1h", "day"]}, costs=COSTS, **extra)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with api_over_core(tmp_path, config(), events()) as client:
        yield client


def get(client: TestClient, url: str, status: int = 200) -> Any:
    response = client.get(url)
    assert response.status_code == status, response.text
    return response.json()


def test_a_day_of_losses_priced_by_hand(client: TestClient) -> None:
    day, parts, rejects, down = DAYS[0]
    body = get(client, f"/v1/costs?line=line-1&from={day}T00:00:00Z&to={day}T23:59:59Z")
    expected = day_cost(parts, rejects, down, planned_s(day))
    # 600 s down: 120 of time + 300 of parts = 420; 6,400 s slow: 4,480; 100 rejects: 90.
    assert expected == pytest.approx(
        {"equipment_failure": 420.0, "slow_cycles": 4480.0, "production_rejects": 90.0}
    )
    assert body["currency"] == "EUR"
    assert body["window"] == "1h"  # summed per hour: each hour priced on its own
    for name, cost in body["by_category"].items():
        assert cost == pytest.approx(expected.get(name, 0.0), abs=1e-9), name
    assert body["total"] == pytest.approx(4990.0)
    assert body["downtime"] == pytest.approx(420.0)
    assert body["by_reason"] == [{"reason": "jam", "cost": pytest.approx(420.0), "seconds": 600.0}]
    assert body["by_machine"] == [
        {"machine": "m1", "line": "line-1", "cost": pytest.approx(4990.0)}
    ]
    assert body["by_line"] == [{"line": "line-1", "cost": pytest.approx(4990.0)}]
    assert body["unpriced_machines"] == []


def test_the_month_so_far_against_its_budget(client: TestClient) -> None:
    body = get(client, "/v1/costs/budget?line=line-1")
    assert body["budget"] is None  # the line has no budget of its own: the plant's is the plant's
    body = get(client, "/v1/costs/budget")
    spent = sum(sum(day_cost(p, r, d, planned_s(day)).values()) for day, p, r, d in DAYS)
    assert (body["month"], body["from"], body["through"]) == (
        "2026-11",
        "2026-11-01T00:00:00Z",
        "2026-11-11T15:00:00Z",  # the end of the last hour the records close
    )
    assert body["cost"] == pytest.approx(spent)
    assert body["share_of_budget"] == pytest.approx(spent / 80_000)
    # Planned so far: Mon-Thu 7.5 h, Fri 4 h, through 11 Nov 14:00; November 2026 has 17
    # Mondays to Thursdays and 4 Fridays.
    assert body["data_from"] == "2026-11-02T06:00:00Z"  # the first hour with a record
    so_far = 7 * 27_000 + 14_400
    month = 17 * 27_000 + 4 * 14_400
    assert (body["planned_s"], body["month_planned_s"]) == (so_far, month)
    assert body["projected"] == pytest.approx(spent / so_far * month)
    assert body["on_track"] is (spent / so_far * month <= 80_000)
    good = sum(p - r for _, p, r, _ in DAYS)
    assert body["oee"] == pytest.approx(good / so_far)
    assert body["oee_target"] == 0.8


def test_reasons_machines_and_lines_reconcile_whatever_the_rates(tmp_path: Path) -> None:
    """Two machines at different rates, m2 with a product of its own price: the reasons
    sum to the downtime categories, the machines to the lines, the lines to the total."""
    m2_costs = {"downtime_minute_cost": 30, "products": {"B": {"good_part_value": 2.0}}}
    machines = [
        {"id": "m1", "ideal_cycle_time_s": 1.0},
        {"id": "m2", "ideal_cycle_time_s": 2.0, "products": {"B": 4.0}, "costs": m2_costs},
    ]
    plant_config = config(machines=machines)
    m2 = [
        ev("2026-11-02T06:00:00Z", "state", "running", machine="m2"),
        ev("2026-11-02T06:00:00Z", "product", "B", machine="m2"),
        ev("2026-11-02T06:00:00Z", "total_count", 0, machine="m2"),
        ev("2026-11-02T07:00:00Z", "state", "down", machine="m2", reason="motor"),
        ev("2026-11-02T07:20:00Z", "state", "idle", machine="m2"),
        ev("2026-11-02T07:30:00Z", "state", "running", machine="m2"),
        ev("2026-11-02T13:00:00Z", "total_count", 5_000, machine="m2"),
    ]
    both = sorted(events() + m2, key=lambda e: e["ts"])
    with api_over_core(tmp_path, plant_config, both) as client:
        body = get(client, "/v1/costs?from=2026-11-02T00:00:00Z&to=2026-11-03T00:00:00Z")
    m2_b = Pricing(plant_config).rates("m2", "B")
    assert (m2_b.minute, m2_b.part_value, m2_b.ideal_cycle_s) == (30, 2.0, 4.0)
    reasons = {r["reason"]: r for r in body["by_reason"]}
    assert set(reasons) == {"jam", "motor", "unassigned"}
    # m2: 20 min down (motor) and 10 min idle without a reason at 30 a minute plus half
    # a part (2.0 every 4 s) a second.
    assert reasons["motor"]["cost"] == pytest.approx(1200 * (30 / 60 + 2.0 / 4))
    assert reasons["unassigned"]["cost"] == pytest.approx(600 * (30 / 60 + 2.0 / 4))
    assert sum(r["cost"] for r in body["by_reason"]) == pytest.approx(body["downtime"])
    machines_sum = sum(m["cost"] for m in body["by_machine"])
    assert machines_sum == pytest.approx(sum(line["cost"] for line in body["by_line"]))
    assert machines_sum == pytest.approx(body["total"])
    assert sum(body["by_category"].values()) == pytest.approx(body["total"])


def test_without_rates_the_money_endpoints_say_how_to_set_them(tmp_path: Path) -> None:
    plant_config = plant(SHIFTS)
    with (
        KpiStore(tmp_path / "kpi.duckdb", plant_config) as store,
        TestClient(create_app(plant_config, store, CollectorRegistry())) as client,
    ):
        for url in ("/v1/costs", "/v1/costs/budget"):
            detail = get(client, url, 422)["detail"]
            assert "costs.downtime_minute_cost" in detail


def test_a_negative_rate_is_refused_with_its_place() -> None:
    bad = {**COSTS, "downtime_minute_cost": -1}
    with pytest.raises(ConfigError, match=r"costs\.downtime_minute_cost"):
        plant(SHIFTS, costs=bad)


def test_metrics_export_each_machines_current_loss_cost() -> None:
    plant_config = config()
    finals, _, _ = run(plant_config, [events()])
    registry = CollectorRegistry()
    metrics = KpiMetrics.create(registry, plant_config)
    day, parts, rejects, down = DAYS[0]
    record = finals[("m1", "day", f"{day}T00:00:00Z")]
    metrics.observe_records([record, finals[(None, "day", f"{day}T00:00:00Z")]])
    labels = {"site": "test", "line": "line-1", "machine": "m1", "window": "day"}
    cost = registry.get_sample_value("linepulse_loss_cost", labels)
    assert cost == pytest.approx(sum(day_cost(parts, rejects, down, planned_s(day)).values()))
    line = registry.get_sample_value("linepulse_loss_cost", {**labels, "machine": ""})
    assert line is None  # a line's is the sum over its machines, in PromQL


def test_metrics_have_no_money_without_rates() -> None:
    registry = CollectorRegistry()
    metrics = KpiMetrics.create(registry, plant(SHIFTS, kpi={"windows": ["1h", "day"]}))
    finals, _, _ = run(config(), [events()])
    metrics.observe_records(list(finals.values()))
    assert "linepulse_loss_cost{" not in generate_latest(registry).decode()
