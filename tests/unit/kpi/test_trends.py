"""`GET /v1/trends`: days and ISO weeks summed from the core's own `day` records, ratios
from the sums (checked by hand), week-over-week change, and next week's output projected
from the shift calendar."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.unit.kpi.core.support import ev, plant
from tests.unit.kpi.served import api_over_core

MONDAY = date(2026, 11, 2)  # ISO week 2026-W45
# Monday to Thursday 06:00-14:00 with a 30-minute break (7.5 h planned), Friday 06:00-10:00
# (4 h): days of unequal planned time, so a week's OEE is not the mean of its days'.
SHIFTS: list[dict[str, Any]] = [
    {
        "name": "early",
        "start": "06:00",
        "end": "14:00",
        "days": ["mon", "tue", "wed", "thu"],
        "breaks": [{"start": "10:00", "end": "10:30"}],
    },
    {"name": "short", "start": "06:00", "end": "10:00", "days": ["fri"]},
]
LONG_S, SHORT_S = 7.5 * 3600, 4 * 3600
# The working days stored: W45 Monday to Friday, W46 Monday to Wednesday. Per day: parts
# made, of them rejects, and minutes down (a jam at 08:00). The ideal cycle time is 1 s.
DAYS = [
    (MONDAY + timedelta(days=n), parts, rejects, down)
    for n, parts, rejects, down in [
        (0, 20_000, 100, 10),
        (1, 21_000, 200, 15),
        (2, 22_000, 300, 20),
        (3, 23_000, 400, 25),
        (4, 6_000, 500, 10),  # Friday: a poor short day
        (7, 19_000, 100, 30),
        (8, 24_000, 200, 5),
        (9, 18_000, 300, 40),
    ]
]


def planned_s(day: date) -> float:
    return SHORT_S if day.weekday() == 4 else LONG_S


def events() -> list[dict[str, Any]]:
    """Running from 06:00, down for the day's minutes from 08:00, the day's parts counted
    between 06:00 and the last hour of its shift (cumulative counters)."""
    out: list[dict[str, Any]] = []
    total = rejects = 0
    for day, parts, rejected, down in DAYS:
        last = "09:30:00" if day.weekday() == 4 else "13:00:00"
        iso = day.isoformat()
        out += [
            ev(f"{iso}T06:00:00Z", "state", "running"),
            ev(f"{iso}T06:00:00Z", "total_count", total),
            ev(f"{iso}T06:00:00Z", "reject_count", rejects),
            ev(f"{iso}T08:00:00Z", "state", "down", reason="jam"),
            ev(f"{iso}T08:{down:02d}:00Z", "state", "running"),
        ]
        total, rejects = total + parts, rejects + rejected
        out += [
            ev(f"{iso}T{last}Z", "total_count", total),
            ev(f"{iso}T{last}Z", "reject_count", rejects),
        ]
    # The last day's shift end: without a sample, time after the last one is unknown.
    return [*out, ev(f"{DAYS[-1][0].isoformat()}T14:00:00Z", "state", "running")]


@pytest.fixture
def config() -> PlantConfig:
    return plant(SHIFTS, kpi={"windows": ["1h", "day"]})


@pytest.fixture
def client(tmp_path: Path, config: PlantConfig) -> Iterator[TestClient]:
    with api_over_core(tmp_path, config, events()) as client:
        yield client


def trends(client: TestClient, query: str = "line=line-1&weeks=2") -> dict[str, Any]:
    response = client.get(f"/v1/trends?{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_days_read_as_the_days_records_computed_by_hand(client: TestClient) -> None:
    body = trends(client)
    assert body["through"] == DAYS[-1][0].isoformat()
    days = {d["date"]: d for d in body["days"]}
    assert len(days) == 10  # Monday of W45 to Wednesday of W46, the weekend included
    for day, parts, rejects, down in DAYS:
        got = days[day.isoformat()]
        planned, run_s = planned_s(day), planned_s(day) - down * 60
        assert got["final"] is True
        assert (got["planned_s"], got["run_s"]) == (planned, run_s)
        assert (got["total_count"], got["good_count"]) == (parts, parts - rejects)
        assert got["output_count"] == parts - rejects  # the line's one machine
        assert got["availability"] == pytest.approx(run_s / planned)
        assert got["performance"] == pytest.approx(parts / run_s)
        assert got["quality"] == pytest.approx((parts - rejects) / parts)
        assert got["oee"] == pytest.approx((parts - rejects) / planned)
    saturday = days[(MONDAY + timedelta(days=5)).isoformat()]
    assert (saturday["planned_s"], saturday["oee"]) == (0.0, None)


def test_weeks_are_summed_then_divided_and_compared_with_the_week_before(
    client: TestClient,
) -> None:
    w45, w46 = trends(client)["weeks"]
    assert (w45["week"], w45["start"], w45["days"], w45["complete"]) == (
        "2026-W45",
        "2026-11-02",
        7,
        True,
    )
    assert (w46["week"], w46["days"], w46["complete"]) == ("2026-W46", 3, False)
    first, second = DAYS[:5], DAYS[5:]
    good = [sum(p - r for _, p, r, _ in week) for week in (first, second)]
    planned = [sum(planned_s(d) for d, *_ in week) for week in (first, second)]
    assert (w45["good_count"], w45["planned_s"]) == (good[0], 4 * LONG_S + SHORT_S)
    assert (w46["output_count"], w46["planned_s"]) == (good[1], 3 * LONG_S)
    # 90,500 good parts of 1 s in 34 planned hours; the mean of the days' OEE differs.
    assert w45["oee"] == pytest.approx(90_500 / 122_400)
    mean = sum((p - r) / planned_s(d) for d, p, r, _ in first) / 5
    assert abs(mean - w45["oee"]) > 0.01
    down = sum(m for *_, m in first) * 60
    assert w45["availability"] == pytest.approx((planned[0] - down) / planned[0])
    assert w45["top_losses"][0] == {
        "loss": "slow_cycles",
        "seconds": pytest.approx(w45["run_s"] - sum(p for _, p, _, _ in first)),
        "share": pytest.approx(w45["top_losses"][0]["seconds"] / (planned[0] - 90_500), rel=1e-9),
    }
    assert w45["top_reasons"] == [{"reason": "jam", "seconds": down}]
    assert w45["change"] is None  # nothing stored before it
    change = w46["change"]
    assert change["oee"] == pytest.approx(good[1] / planned[1] - good[0] / planned[0])
    rate = [g * 3600 / p for g, p in zip(good, planned, strict=True)]
    assert change["output_per_planned_h"] == pytest.approx(rate[1] - rate[0])
    assert change["output_count"] is None  # W46 is not whole: output is not comparable


def test_next_week_is_projected_from_the_recent_rate_and_the_calendar(client: TestClient) -> None:
    projection = trends(client)["projection"]
    good = sum(p - r for _, p, r, _ in DAYS)
    planned = sum(planned_s(d) for d, *_ in DAYS)
    assert projection["week"] == "2026-W47"
    assert projection["start"] == "2026-11-16"
    assert projection["planned_s"] == 4 * LONG_S + SHORT_S
    assert projection["output_per_planned_h"] == pytest.approx(good * 3600 / planned)
    assert projection["output_count"] == pytest.approx(good / planned * (4 * LONG_S + SHORT_S))
    assert projection["based_on"]["days"] == 10
    assert (projection["based_on"]["from"], projection["based_on"]["to"]) == (
        "2026-11-02",
        "2026-11-11",
    )
    assert projection["based_on"]["output_count"] == good
    assert "shift calendar" in projection["method"]


def test_the_plant_is_its_lines_summed_and_weeks_limit_what_is_shown(client: TestClient) -> None:
    plant_view = trends(client, "weeks=1")
    assert plant_view["line"] is None
    assert [w["week"] for w in plant_view["weeks"]] == ["2026-W46"]
    assert plant_view["weeks"][0]["change"] is not None  # the week before still counts
    assert plant_view["weeks"][0]["oee"] == trends(client)["weeks"][1]["oee"]


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("line=nope", 404, "unknown line 'nope'"),
        ("weeks=0", 422, "greater than or equal to 1"),
        ("weeks=54", 422, "less than or equal to 53"),
    ],
)
def test_bad_queries_say_what_is_wrong(
    client: TestClient, query: str, status: int, detail: str
) -> None:
    response = client.get(f"/v1/trends?{query}")
    assert response.status_code == status
    assert detail in response.text


def test_a_plant_without_day_windows_is_told_how_to_get_trends(tmp_path: Path) -> None:
    config = plant(SHIFTS, kpi={"windows": ["1h"]})
    with (
        KpiStore(tmp_path / "kpi.duckdb", config) as store,
        TestClient(create_app(config, store, CollectorRegistry())) as client,
    ):
        response = client.get("/v1/trends")
    assert response.status_code == 422
    assert "add day to kpi.windows" in response.json()["detail"]


def test_nothing_stored_yet_is_an_empty_answer(tmp_path: Path, config: PlantConfig) -> None:
    with (
        KpiStore(tmp_path / "kpi.duckdb", config) as store,
        TestClient(create_app(config, store, CollectorRegistry())) as client,
    ):
        body = trends(client)
    assert (body["days"], body["weeks"], body["projection"], body["through"]) == (
        [],
        [],
        None,
        None,
    )
