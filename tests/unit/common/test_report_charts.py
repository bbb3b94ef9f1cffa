"""The shift report's charts (linepulse/report_charts.py), from the report's JSON: the
waterfall steps down from planned time by each loss, the Pareto ranks the reasons and
says how much of the downtime they reach together. Checked by hand on the SVG."""

from __future__ import annotations

import re
from typing import Any

from linepulse.report_charts import (
    BARS,
    LABEL,
    MAX_REASONS,
    charts_html,
    downtime_chart,
    losses_chart,
    shift_charts,
)
from linepulse.report_page import CHARTS_MARK, page


def report(**changes: Any) -> dict[str, Any]:
    """An 8 h shift: 1 h down (cost 700), 30 min slow, 6.5 h fully productive."""
    base: dict[str, Any] = {
        "currency": "EUR",
        "planned_s": 28800.0,
        "fully_productive_s": 23400.0,
        "losses": [
            {"loss": "equipment_failure", "seconds": 3600.0, "cost": 700.0},
            {"loss": "slow_cycles", "seconds": 1800.0, "cost": None},
        ],
        "downtime": {
            "unplanned": [
                {"reason": "material_shortage", "seconds": 1200.0, "cost": 200.0},
                {"reason": "jam", "seconds": 2400.0, "cost": 500.0},
            ],
            "planned": [],
        },
    }
    return {**base, **changes}


def bars(svg: str) -> list[tuple[float, float]]:
    """(x, width) of each bar, top to bottom (the background rect has no x)."""
    found = re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    return [(float(x), float(w)) for x, w in found]


def test_the_waterfall_steps_down_from_planned_time() -> None:
    chart = losses_chart(report())
    assert chart is not None
    unit = BARS / 28800  # px a second
    planned, failure, slow, productive = bars(chart.svg)
    assert planned == (LABEL, BARS)
    # Equipment failure: the last hour of the planned bar; slow cycles the 30 min before.
    assert failure == (round(LABEL + 25200 * unit, 1), round(3600 * unit, 1))
    assert slow == (round(LABEL + 23400 * unit, 1), round(1800 * unit, 1))
    assert productive == (LABEL, round(23400 * unit, 1))
    assert "1 h 00 min · 700 EUR" in chart.svg
    assert ">30 min<" in chart.svg  # no cost: the time alone
    assert ">81 %<" in chart.svg  # 23,400 of 28,800 s
    assert chart.alt.startswith("Where the time went: Planned time 8 h 00 min, ")
    assert chart.height == 34 + 26 * 4 + 8


def test_the_pareto_ranks_the_reasons_and_sums_them_up() -> None:
    chart = downtime_chart(report())
    assert chart is not None
    (jam, shortage) = bars(chart.svg)
    assert jam == (LABEL, BARS)  # the longest spans the bar area
    assert shortage == (LABEL, BARS / 2)
    assert chart.svg.index(">jam<") < chart.svg.index(">material_shortage<")
    assert "40 min · 67 % so far" in chart.svg
    assert "20 min · 100 % so far" in chart.svg


def test_reasons_beyond_the_eighth_are_summed_as_other() -> None:
    many = [{"reason": f"r{i:02d}", "seconds": 600.0 - i, "cost": None} for i in range(11)]
    chart = downtime_chart(report(downtime={"unplanned": many, "planned": []}))
    assert chart is not None
    assert len(bars(chart.svg)) == MAX_REASONS + 1
    assert ">other (3)<" in chart.svg
    assert "100 % so far" in chart.svg


def test_nothing_to_draw_gives_no_chart() -> None:
    assert losses_chart(report(planned_s=0.0)) is None
    assert downtime_chart(report(downtime={"unplanned": [], "planned": []})) is None
    assert shift_charts(report(planned_s=0.0, downtime={"unplanned": []})) == []


def test_a_label_is_escaped() -> None:
    odd = [{"reason": "<jam & co>", "seconds": 60.0, "cost": None}]
    chart = downtime_chart(report(downtime={"unplanned": odd, "planned": []}))
    assert chart is not None
    assert "&lt;jam &amp; co&gt;" in chart.svg
    assert "<jam" not in chart.svg


def test_the_mail_page_shows_each_chart_by_its_content_id_where_the_page_marks() -> None:
    charts = shift_charts(report())
    section = charts_html(charts)
    assert [c.cid for c in charts] == ["losses@linepulse", "downtime@linepulse"]
    for chart in charts:
        assert f'src="cid:{chart.cid}" width="{chart.width}" height="{chart.height}"' in section
    mailed = page("t", "s", ["<p>figures</p>"]).replace(CHARTS_MARK, section, 1)
    assert mailed.index("cid:losses@linepulse") < mailed.index("<p>figures</p>")
    assert charts_html([]) == ""
