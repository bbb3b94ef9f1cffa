"""The control chart on the live board (issue 21), in headless Chromium: a drifting fill
weight's subgroups, as the KPI worker puts them on the spc topic, in the API's store;
`GET /v1/spc` gives the chart's limits and subgroups, and the line's card draws the last
of them: the centre line, the limits, the means, a red dot on each subgroup that broke a
rule, and the chart's state. The screenshot is docs/spc-chart.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from linepulse.config import PlantConfig, parse_config
from linepulse.events import EVENT_SCHEMA
from linepulse.spc_stream import SpcStream, spc_record
from services.kpi.store import KpiStore
from tests.integration.test_board_browser import INSTALL_HINT, board_page
from tests.integration.test_board_layout_browser import serve_board

pytestmark = pytest.mark.integration

SCREENSHOT = Path(__file__).parents[2] / "docs" / "spc-chart.png"
WAIT_MS = 15_000
CHART = "filler-1/fill_g"


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "UTC",
            "shifts": [{"name": "all-day", "start": "00:00", "end": "00:00", "lead": "ann"}],
            "kpi": {"lateness_s": 0},
            "lines": [{"id": "fill", "machines": [{"id": "filler-1", "ideal_cycle_time_s": 1.0}]}],
            "spc": [
                {
                    "machine": "filler-1",
                    "signal": "fill_g",
                    "subgroup_size": 5,
                    "limits": {"center": 500.0, "sigma": 1.0},
                }
            ],
            "alerts": {
                "channels": [{"id": "log", "type": "console"}],
                "people": {"ann": {"name": "Ann", "channels": ["log"]}},
                "group_wait": 0,
                "rules": [{"name": "fill-drift", "spc": CHART, "severity": "warning"}],
            },
        }
    )


def fill_weights(start: int) -> pl.DataFrame:
    """Forty subgroups a minute apart around 500 g (alternating +-0.3), then twelve that
    creep up by 0.15 g each: the trend and zone rules break before any point crosses the
    upper limit (501.34 g)."""
    rows: list[tuple[Any, ...]] = []
    means = [500.0 + (0.3 if n % 2 else -0.3) for n in range(40)]
    means += [500.0 + 0.15 * (n + 1) for n in range(12)]
    for n, mean in enumerate(means):
        for k, offset in enumerate((-0.4, 0.2, 0.0, 0.3, -0.1)):
            ts = start + n * 60_000 + k * 10_000
            rows.append((ts, "filler-1", "fill_g", mean + offset, None, None, None, None))
    rows.append((start + len(means) * 60_000, "filler-1", "fill_g", 500.0, None, None, None, None))
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def subgroups(start: int) -> list[dict[str, Any]]:
    """The drifting fill weight's subgroups as the KPI worker publishes them."""
    config = plant()
    stream = SpcStream(config.spc[0], 0)
    events = fill_weights(start)
    points = stream.add(
        (ts, float(value)) for ts, value in events.select("ts", "value_num").iter_rows()
    )
    return [spc_record(stream, point, "fill") for point in points]


def test_the_board_draws_the_control_chart_of_a_drifting_fill_weight(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import expect
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with KpiStore(tmp_path / "kpi.duckdb", plant()) as store:
        store.spc.upsert(subgroups(int(time.time() * 1000) - 60 * 60_000))
        kpi = serve_board(plant(), store, None)
        try:
            (chart,) = httpx.get(kpi.url + "/v1/spc?last=60").json()["charts"]
            assert chart["chart"] == CHART
            broken = [p for p in chart["points"] if p["broken"]]
            assert broken, "the drift broke no rule"
            # A phone-wide card: the chart as a shift lead sees it on the floor.
            with board_page(kpi.url, 640, 900) as (page, errors):
                panel = page.locator('[data-spc="fill"]')
                expect(panel).to_be_visible(timeout=WAIT_MS)
                drawn = page.locator(f'[data-spc-chart="{CHART}"]')
                expect(drawn.locator("polyline")).to_have_count(1)
                points = drawn.locator("polyline").get_attribute("points") or ""
                assert len(points.split()) == len(chart["points"])
                expect(drawn.locator(".violation")).to_have_count(len(broken))
                expect(drawn.locator("line.limit")).to_have_count(2)
                state = page.locator(f'[data-spc-state="{CHART}"]')
                last = chart["points"][-1]
                if last["broken"]:
                    expect(state).to_contain_text("out of control: " + ", ".join(last["broken"]))
                else:
                    expect(state).to_contain_text("in control (last rule broken")
                expect(panel).to_contain_text("LCL 498.7 · CL 500.0 · UCL 501.3")
                panel.screenshot(path=str(SCREENSHOT))
                assert errors == []
        finally:
            assert kpi.stop()
