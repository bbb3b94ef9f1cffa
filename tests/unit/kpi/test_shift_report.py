"""The shift report (issue 20, item 1) of the classic OEE example, every figure by hand,
money included: the core's own records of examples/classic-oee and its stop log, served
by `GET /v1/reports/shift` as JSON and as a mail-safe HTML page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.calendar import Calendar
from linepulse.config import PlantConfig, parse_config
from linepulse.costs import Pricing
from services.kpi.api import create_app
from services.kpi.board.snapshot import build_snapshot
from services.kpi.shift_report import shift_report
from tests.unit.kpi.core.support import run
from tests.unit.kpi.served import api_over_core, store_over_core

EXAMPLE = Path(__file__).parents[3] / "examples" / "classic-oee"
# 10 a lost minute, 0.50 a good part not made, 0.20 a scrap part; the ideal cycle is 1 s,
# so a lost second costs 10/60 + 0.50.
PER_S = 10 / 60 + 0.5
URL = "/v1/reports/shift?line=line-1&date=2026-11-02&shift=early"


def classic_data() -> dict[str, Any]:
    """The classic example's plant as YAML data, with rates and a reason tree."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "plant.yaml").read_text("utf-8"))
    data["costs"] = {"downtime_minute_cost": 10, "good_part_value": 0.5, "scrap_part_cost": 0.2}
    data["reasons"] = [
        {"name": "mechanical", "codes": ["jam"]},
        {"name": "material", "codes": ["material_shortage"]},
        {"name": "planned", "planned": True, "codes": ["cleaning"]},
    ]
    return data


def classic(**changes: Any) -> PlantConfig:
    return parse_config({**classic_data(), **changes})


def events() -> list[dict[str, Any]]:
    lines = (EXAMPLE / "events.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def statuses(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The machine statuses the worker would publish: one per state sample."""
    return [
        {
            "machine": e["machine"],
            "state": e["value"],
            "reason": e.get("reason"),
            "since": e["ts"],
            "last_seen": e["ts"],
        }
        for e in evs
        if e["signal"] == "state"
    ]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with api_over_core(tmp_path, classic(), events(), statuses(events())) as client:
        yield client


def test_the_classic_shift_report_by_hand(client: TestClient) -> None:
    response = client.get(URL)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["from"], report["to"], report["final"]) == (
        "2026-11-02T06:00:00Z",
        "2026-11-02T14:00:00Z",
        True,
    )
    # 8 h less 1 h of breaks: 25,200 s planned; 47 min down; 19,271 parts, 423 rejects.
    assert report["output"] == {
        "machine": "filler-1",
        "count": 18_848,
        "target": None,
        "vs_target": None,
        "same_shift_before": [
            {"date": f"2026-10-{day:02d}", "output_count": None} for day in (26, 19, 12, 5)
        ],
        "mean_before": None,
        "vs_mean_before": None,
    }
    kpis = report["kpis"]
    assert kpis["availability"] == pytest.approx(22_380 / 25_200)
    assert kpis["performance"] == pytest.approx(19_271 / 22_380)
    assert kpis["quality"] == pytest.approx(18_848 / 19_271)
    assert kpis["oee"] == pytest.approx(18_848 / 25_200)
    assert kpis["coverage"] == 1.0
    losses = {step["loss"]: step for step in report["losses"]}
    assert losses["equipment_failure"]["seconds"] == 2_820  # 20 + 17 + 10 min
    assert losses["slow_cycles"]["seconds"] == pytest.approx(22_380 - 19_271)
    assert losses["production_rejects"]["seconds"] == pytest.approx(423)
    assert losses["equipment_failure"]["cost"] == pytest.approx(2_820 * PER_S)  # 1,880
    assert losses["slow_cycles"]["cost"] == pytest.approx(3_109 * PER_S)
    assert losses["production_rejects"]["cost"] == pytest.approx(423 * (PER_S + 0.2))
    assert losses["no_data"]["cost"] is None  # not priced
    assert report["fully_productive_s"] == pytest.approx(18_848)
    assert report["loss_cost"] == pytest.approx((2_820 + 3_109) * PER_S + 423 * (PER_S + 0.2))
    assert report["downtime"]["unplanned"] == [
        {"reason": "jam", "seconds": 1_800, "cost": pytest.approx(1_200)},
        {"reason": "material_shortage", "seconds": 1_020, "cost": pytest.approx(680)},
    ]
    assert report["downtime"]["planned"] == []
    longest = [(s["reason"], s["seconds"], s["start"]) for s in report["longest_stops"]]
    assert longest == [
        ("jam", 1_200, "2026-11-02T07:00:00Z"),
        ("material_shortage", 1_020, "2026-11-02T09:00:00Z"),
        ("jam", 600, "2026-11-02T11:00:00Z"),
    ]
    assert report["uncoded_stops"] == []
    assert report["quality"]["reject_count"] == 423
    assert report["quality"]["scrap_ratio"] == pytest.approx(423 / 19_271)
    assert report["stops"] == 3


def test_the_report_as_a_page_a_mail_client_shows(client: TestClient) -> None:
    response = client.get(URL + "&format=html")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "line-1 · early shift · 2026-11-02" in page
    assert "74.8 %" in page  # OEE
    assert "18,848" in page  # output
    assert "47 min" in page  # equipment failure
    assert "1,880 EUR" in page  # its cost
    assert "<script" not in page
    assert "<link" not in page  # no stylesheet or image to fetch: inline styles only
    assert "http" not in page


def test_a_shift_the_calendar_does_not_have_is_404_with_the_ones_it_has(
    client: TestClient,
) -> None:
    response = client.get("/v1/reports/shift?line=line-1&date=2026-11-02&shift=night")
    assert response.status_code == 404
    assert "its shifts that day: early" in response.json()["detail"]
    response = client.get("/v1/reports/shift?line=line-1&date=2026-11-09&shift=early")
    assert response.status_code == 404
    assert "no record of the early shift" in response.json()["detail"]
    response = client.get("/v1/reports/shift?line=line-1&date=2-11&shift=early")
    assert response.status_code == 422
    assert "YYYY-MM-DD" in response.json()["detail"]


def test_without_rates_the_report_has_no_money(tmp_path: Path) -> None:
    with api_over_core(tmp_path, classic(costs={}), events()) as client:
        report = client.get(URL).json()
        page = client.get(URL + "&format=html").text
    assert report["currency"] is None
    assert report["loss_cost"] is None
    assert all(step["cost"] is None for step in report["losses"])
    assert "EUR" not in page


def test_uncoded_stops_are_the_down_and_idle_ones_without_a_reason(tmp_path: Path) -> None:
    """A changeover is not asked for a code (its reason is the changeover): of a stop
    without a reason and a changeover without one, only the stop is uncoded."""
    changed = []
    for event in events():
        if event["signal"] == "state" and event["ts"] == "2026-11-02T11:00:00Z":
            event = {k: v for k, v in event.items() if k != "reason"}  # the jam: uncoded
        if event["signal"] == "state" and event["ts"] == "2026-11-02T09:00:00Z":
            event = {**event, "value": "changeover"}
            event.pop("reason")
        changed.append(event)
    with api_over_core(tmp_path, classic(), changed, statuses(changed)) as client:
        report = client.get(URL).json()
        page = client.get(URL + "&format=html").text
    uncoded = [(s["start"], s["state"], s["reason"]) for s in report["uncoded_stops"]]
    assert uncoded == [("2026-11-02T11:00:00Z", "down", "unassigned")]
    assert "Stops still without a reason: <b>1</b>" in page


def test_the_board_links_each_line_to_its_shift_report(tmp_path: Path) -> None:
    """The snapshot gives each line its shift's production day, which the board's
    `report` link puts with the line and the shift into the report's URL."""
    plant = classic()
    with store_over_core(tmp_path, plant, events(), statuses(events())) as store:
        (line,) = build_snapshot(plant, store)["lines"]
        assert (line["shift"], line["shift_date"]) == ("early", "2026-11-02")
        with TestClient(create_app(plant, store, CollectorRegistry())) as client:
            query = {"line": "line-1", "date": line["shift_date"], "shift": line["shift"]}
            page = client.get("/v1/reports/shift", params={**query, "format": "html"})
    assert page.status_code == 200
    assert "line-1 · early shift · 2026-11-02" in page.text


def test_the_served_records_carry_their_loss_cost(client: TestClient) -> None:
    """The core's `loss_cost` through the store to the API: the jam's 47 minutes at 10 a
    minute and 0.50 a part (the report's 1,880 EUR), on the record itself."""
    records = client.get("/v1/kpis/current?window=shift&line=line-1").json()
    (machine,) = [r for r in records if r["machine"] == "filler-1"]
    assert machine["loss_cost"]["by_category"]["equipment_failure"] == pytest.approx(1880.0)
    (line,) = [r for r in records if r["machine"] is None]
    assert line["loss_cost"]["total"] == pytest.approx(machine["loss_cost"]["total"])


@pytest.mark.parametrize(("final", "hours"), [(False, 1.0), (True, 6.0)])
def test_a_stop_still_open_counts_to_the_latest_event_while_the_shift_runs(
    final: bool, hours: float
) -> None:
    """A shift 3 h in (its record's calendar_s) and a stop open since 08:00: it has lasted
    1 h so far, not the 6 h to the shift's end that it lasts once the shift is over."""
    plant = classic()
    found, _, _ = run(plant, [events()])
    line = {**found[(None, "shift", "2026-11-02T06:00:00Z")], "final": final}
    if not final:
        line["calendar_s"] = 3 * 3600.0
    (span,) = Calendar(plant).spans_on("line-1", date(2026, 11, 2))
    stop = {
        "id": "filler-1@2026-11-02T08:00:00Z",
        "machine": "filler-1",
        "line": "line-1",
        "start": "2026-11-02T08:00:00Z",
        "end": None,
        "state": "down",
        "reason": "unassigned",
        "planned": False,
        "corrected_by": None,
    }
    report = shift_report(Pricing(plant), span, line, [], [], [stop])
    (longest,) = report["longest_stops"]
    assert longest["seconds"] == hours * 3600
    assert [s["id"] for s in report["uncoded_stops"]] == [stop["id"]]
