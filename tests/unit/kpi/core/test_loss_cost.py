"""Money on the KPI records (issue 20): each record carries its losses priced at the
config's rates (`loss_cost`), a machine's at its own, a line's as its machines' summed,
so a consumer of the `kpi` topic has the cost without the config (docs/costs.md)."""

from __future__ import annotations

from typing import Any

import pytest

from linepulse.config import PlantConfig, parse_config
from tests.unit.kpi.core.support import run
from tests.unit.kpi.test_shift_report import PER_S, classic, classic_data, events

SHIFT = "2026-11-02T06:00:00Z"


def finals(config: PlantConfig, evs: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    found, _, _ = run(config, [evs])
    return found


def test_the_classic_shift_record_carries_its_losses_in_money_by_hand() -> None:
    records = finals(classic(), events())
    machine = records[("filler-1", "shift", SHIFT)]
    cost = machine["loss_cost"]
    assert cost["currency"] == "EUR"
    # 47 min down for the jam: 10 a minute and 0.50 a part at 1 s ideal (docs/costs.md).
    assert cost["by_category"]["equipment_failure"] == pytest.approx(2820 * PER_S)
    assert cost["by_category"]["equipment_failure"] == pytest.approx(1880.0)
    losses = machine["losses"]
    assert cost["by_category"]["slow_cycles"] == pytest.approx(losses["slow_cycles_s"] * PER_S)
    # The rejects: their time's cost and 0.20 of scrap each.
    rejects = losses["production_rejects_s"] * PER_S + machine["reject_count"] * 0.2
    assert cost["by_category"]["production_rejects"] == pytest.approx(rejects)
    assert cost["total"] == pytest.approx(sum(cost["by_category"].values()))
    assert cost["unpriced_machines"] == []
    # A line of one machine costs what the machine does.
    line = records[(None, "shift", SHIFT)]
    assert line["loss_cost"]["by_category"] == pytest.approx(cost["by_category"])


def test_without_rates_no_record_carries_money() -> None:
    data = classic_data()
    del data["costs"]
    records = finals(parse_config(data), events())
    assert records
    assert all(record["loss_cost"] is None for record in records.values())


def test_a_line_sums_its_priced_machines_and_names_the_others() -> None:
    """filler-2 runs beside filler-1 on line-1 without an ideal cycle time: its losses
    cannot be valued, so the line's cost is filler-1's and names filler-2."""
    data = classic_data()
    data["lines"][0]["machines"].append({"id": "filler-2"})
    twin = [{**e, "machine": "filler-2"} for e in events() if e["machine"] == "filler-1"]
    records = finals(parse_config(data), events() + twin)
    one = records[("filler-1", "shift", SHIFT)]["loss_cost"]
    assert records[("filler-2", "shift", SHIFT)]["loss_cost"] is None
    line = records[(None, "shift", SHIFT)]["loss_cost"]
    assert line["unpriced_machines"] == ["filler-2"]
    assert line["by_category"] == pytest.approx(one["by_category"])


def test_every_line_record_is_its_machines_summed() -> None:
    """Two priced machines at different rates: each final line record's cost per
    category is the sum of its machines' records of the same window."""
    data = classic_data()
    data["lines"][0]["machines"].append(
        {"id": "filler-2", "ideal_cycle_time_s": 0.5, "costs": {"downtime_minute_cost": 30}}
    )
    twin = [{**e, "machine": "filler-2"} for e in events() if e["machine"] == "filler-1"]
    records = finals(parse_config(data), events() + twin)
    lines = [(k, r) for k, r in records.items() if r["machine"] is None]
    assert lines
    for (_, window, start), line in lines:
        machines = [records[(m, window, start)]["loss_cost"] for m in ("filler-1", "filler-2")]
        for category, amount in line["loss_cost"]["by_category"].items():
            assert amount == pytest.approx(sum(m["by_category"][category] for m in machines))
        assert line["loss_cost"]["total"] == pytest.approx(sum(m["total"] for m in machines))
    # At different rates the two machines' costs differ: the sum is not one rate twice.
    one, two = (records[(m, "shift", SHIFT)]["loss_cost"] for m in ("filler-1", "filler-2"))
    assert one["total"] != pytest.approx(two["total"])
