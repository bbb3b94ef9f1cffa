"""`GET /v1/reports/plant` (issue 20): every line side by side for a shift, a production
day or an ISO week, and the plant's figures as sums divided after, never a mean of the
lines' ratios; money reconciled: the lines' costs add up to the plant's, and so do its
categories'. Two lines run the classic example's day; line-2 has no breaks in its shift
(more planned time) and counts half the parts, so the plant's OEE is not the mean of its
lines'."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from linepulse.config import PlantConfig, parse_config
from linepulse.costs import Pricing
from services.kpi.plant_report import PlantPeriod, plant_report
from tests.unit.kpi.core.support import run
from tests.unit.kpi.served import api_over_core
from tests.unit.kpi.test_shift_report import classic_data, events, statuses

DAY = "2026-11-02"
# line-2 keeps no breaks: 8 h planned where line-1 has 7 h.
NO_BREAKS: list[dict[str, Any]] = [{"name": "early", "start": "06:00", "end": "14:00"}]


def two_lines(**changes: Any) -> PlantConfig:
    data = classic_data()
    data["lines"].append(
        {
            "id": "line-2",
            "shifts": NO_BREAKS,
            "machines": [
                {"id": "capper-2", "ideal_cycle_time_s": 1.0, "costs": {"downtime_minute_cost": 20}}
            ],
        }
    )
    data.update(changes)
    return parse_config(data)


def both_lines_events() -> list[dict[str, Any]]:
    """The classic day on filler-1, and on capper-2 with half its counts' increments and
    no breaks (it runs through them: more planned time)."""
    classic = events()
    first = {e["signal"]: e["value"] for e in reversed(classic) if e["signal"] != "state"}
    halved = []
    for e in classic:
        if e.get("reason") == "break":
            continue
        copy = {**e, "machine": "capper-2"}
        if e["signal"] != "state":
            copy["value"] = first[e["signal"]] + (e["value"] - first[e["signal"]]) // 2
        halved.append(copy)
    # In time order, as two machines send: a machine's day sent after the other's would
    # be hours behind the watermark, too late.
    return sorted([*classic, *halved], key=lambda e: str(e["ts"]))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with api_over_core(tmp_path, two_lines(), both_lines_events()) as client:
        yield client


def get(client: TestClient, query: str) -> dict[str, Any]:
    response = client.get(f"/v1/reports/plant?{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def records(client: TestClient, window: str) -> dict[str, dict[str, Any]]:
    """The line records of the day's `window`, by line."""
    query = {"from": f"{DAY}T00:00:00Z", "window": window, "scope": "line"}
    found = client.get("/v1/kpis/history", params=query).json()
    return {r["line"]: r for r in found}


@pytest.mark.parametrize(("query", "window"), [(f"period=shift&date={DAY}&shift=early", "shift"),
                                               (f"period=day&date={DAY}", "day")])  # fmt: skip
def test_the_plant_is_its_lines_summed_then_divided(
    client: TestClient, query: str, window: str
) -> None:
    report = get(client, query)
    by_line = records(client, window)
    assert [entry["line"] for entry in report["lines"]] == ["line-1", "line-2"]
    for entry in report["lines"]:
        record = by_line[entry["line"]]
        assert entry["records"] == 1
        assert entry["output_count"] == record["output_count"]
        for name in ("availability", "performance", "quality", "oee"):
            assert entry["kpis"][name] == pytest.approx(record[name]), name
    one, two = by_line["line-1"], by_line["line-2"]
    assert (one["planned_s"], two["planned_s"]) == (25_200, 28_800)
    planned = one["planned_s"] + two["planned_s"]
    run = one["run_s"] + two["run_s"]
    total = one["total_count"] + two["total_count"]  # ideal cycle 1 s: total = ideal time
    good = one["good_count"] + two["good_count"]
    whole = report["plant"]
    assert whole["planned_s"] == planned
    assert whole["output_count"] == one["output_count"] + two["output_count"]
    assert whole["kpis"]["availability"] == pytest.approx(run / planned)
    assert whole["kpis"]["performance"] == pytest.approx(total / run)
    assert whole["kpis"]["quality"] == pytest.approx(good / total)
    assert whole["kpis"]["oee"] == pytest.approx(good / planned)
    mean = (one["oee"] + two["oee"]) / 2
    assert abs(whole["kpis"]["oee"] - mean) > 0.005  # a mean of ratios would be wrong
    reasons = {r["reason"]: r["seconds"] for r in whole["downtime_by_reason"]}
    assert reasons == {
        reason: one["downtime_by_reason"].get(reason, 0) + two["downtime_by_reason"].get(reason, 0)
        for reason in ("jam", "material_shortage")
    }


def test_money_reconciles_over_lines_categories_and_reasons(client: TestClient) -> None:
    report = get(client, f"period=day&date={DAY}")
    whole = report["plant"]
    assert report["currency"] == "EUR"
    line_costs = {entry["line"]: entry["loss_cost"] for entry in report["lines"]}
    category_costs = [step["cost"] for step in whole["losses"] if step["cost"] is not None]
    assert all(cost > 0 for cost in line_costs.values()), line_costs
    assert whole["loss_cost"] == pytest.approx(sum(line_costs.values()))
    assert whole["loss_cost"] == pytest.approx(sum(category_costs))
    # line-2's 47 minutes of equipment failure at 20 a minute and 0.50 a part not made
    # (ideal cycle 1 s): 2,820 s x (20/60 + 0.5); line-1's at 10 a minute.
    failure = {step["loss"]: step["cost"] for step in whole["losses"]}["equipment_failure"]
    assert failure == pytest.approx(2_820 * (20 / 60 + 0.5) + 2_820 * (10 / 60 + 0.5))
    costs = client.get("/v1/costs", params={"from": f"{DAY}T00:00:00Z", "window": "day"}).json()
    assert whole["loss_cost"] == pytest.approx(costs["total"])


def test_a_week_is_its_days_and_the_page_shows_every_line(client: TestClient) -> None:
    week = get(client, "period=week&date=2026-11-05")  # a Thursday of ISO week 2026-W45
    day = get(client, f"period=day&date={DAY}")
    assert (week["label"], week["date"], week["from"], week["to"]) == (
        "week 2026-W45",
        DAY,
        f"{DAY}T00:00:00Z",
        "2026-11-09T00:00:00Z",
    )
    assert week["plant"]["kpis"] == pytest.approx(day["plant"]["kpis"])
    assert week["plant"]["loss_cost"] == pytest.approx(day["plant"]["loss_cost"])
    page = client.get(f"/v1/reports/plant?period=week&date={DAY}&format=html")
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "Plant report · week 2026-W45" in text
    assert "2026-11-02 to 2026-11-08" in text
    for shown in ("line-1", "line-2", "<b>plant</b>", "Downtime by reason, all lines"):
        assert shown in text, shown
    assert "<script" not in text
    assert "<link" not in text


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        (f"period=shift&date={DAY}", 422, "needs `shift`"),
        (f"period=shift&date={DAY}&shift=night", 404, "the shifts that day: early"),
        ("period=day&date=2026-11-20", 404, "no record of the day 2026-11-20 yet"),
        ("period=day&date=02.11.2026", 422, "'date' must be YYYY-MM-DD"),
        (f"period=month&date={DAY}", 422, "'shift', 'day' or 'week'"),
    ],
)
def test_bad_queries_say_what_is_wrong(
    client: TestClient, query: str, status: int, detail: str
) -> None:
    response = client.get(f"/v1/reports/plant?{query}")
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


def test_a_plant_without_day_records_is_told_how_to_get_them(tmp_path: Path) -> None:
    plant = two_lines(kpi={"windows": ["1h", "shift"]})
    with api_over_core(tmp_path, plant, both_lines_events()) as client:
        response = client.get(f"/v1/reports/plant?period=week&date={DAY}")
        assert client.get(f"/v1/reports/plant?period=shift&date={DAY}&shift=early").is_success
    assert response.status_code == 422
    assert "add day to kpi.windows" in response.json()["detail"]


def test_each_line_counts_its_stops_still_without_a_reason(tmp_path: Path) -> None:
    """The 11:00 jam (10 min) sent without its reason on both lines, and filler-1's 09:00
    stop a changeover without one (not asked for a code): one uncoded stop a line, two
    for the plant, 10 minutes each, in the day's report and on its page."""
    changed = []
    for event in both_lines_events():
        if event["signal"] == "state" and event["ts"] == "2026-11-02T11:00:00Z":
            event = {k: v for k, v in event.items() if k != "reason"}
        if event["signal"] == "state" and event["ts"] == "2026-11-02T09:00:00Z":
            if event["machine"] == "filler-1":
                event = {k: v for k, v in event.items() if k != "reason"}
                event["value"] = "changeover"
        changed.append(event)
    with api_over_core(tmp_path, two_lines(), changed, statuses(changed)) as client:
        day = get(client, f"period=day&date={DAY}")
        page = client.get(f"/v1/reports/plant?period=day&date={DAY}&format=html").text
    waiting = {e["line"]: (e["uncoded_stops"], e["uncoded_s"]) for e in day["lines"]}
    assert waiting == {"line-1": (1, 600.0), "line-2": (1, 600.0)}
    assert (day["plant"]["uncoded_stops"], day["plant"]["uncoded_s"]) == (2, 1200.0)
    assert "no reason" in page
    assert "1 (10 min)" in page
    assert "<b>2 (20 min)</b>" in page


def test_a_stop_still_open_counts_to_the_latest_event_while_the_day_runs() -> None:
    """The day's line records still open, with data up to 09:00 (calendar_s 9 h from
    midnight), and an uncoded stop open since 08:00: one hour so far, not the 16 h to the
    day's end; 16 h once the day is over."""
    plant = two_lines()
    _, outputs, _ = run(plant, [both_lines_events()])
    final_days = {
        (r["line"], r["machine"]): r
        for output in outputs
        for r in output.records
        if r["window"] == "day" and r["final"]
    }
    day_records = [{**r, "final": False, "calendar_s": 9 * 3600.0} for r in final_days.values()]
    start = datetime(2026, 11, 2, tzinfo=UTC)
    covered = PlantPeriod(
        "day",
        start.date(),
        None,
        int(start.timestamp() * 1000),
        int((start + timedelta(days=1)).timestamp() * 1000),
    )
    stop = {
        "line": "line-1",
        "start": "2026-11-02T08:00:00Z",
        "end": None,
        "state": "down",
        "reason": "unassigned",
    }
    report = plant_report(Pricing(plant), covered, ["line-1", "line-2"], day_records, [stop])
    (line_1, _) = report["lines"]
    assert (line_1["uncoded_stops"], line_1["uncoded_s"]) == (1, 3600.0)
    closed = [{**r, "final": True} for r in day_records]
    report = plant_report(Pricing(plant), covered, ["line-1", "line-2"], closed, [stop])
    assert report["lines"][0]["uncoded_s"] == 16 * 3600.0
