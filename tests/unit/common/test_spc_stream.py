"""A chart followed live (linepulse/spc_stream.py) gives the points `linepulse spc` gives
over the same samples, however they were batched and in whatever order within the
lateness; a sample later than that is counted and left out; live charts need fixed
limits."""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linepulse.events import EVENT_SCHEMA
from linepulse.spc import SpcChart
from linepulse.spc_chart import study
from linepulse.spc_stream import (
    SpcStream,
    chart_summary,
    charted_samples,
    point_of,
    spc_key,
    spc_record,
)

LATENESS = 10_000
T0 = 1_800_000_000_000


def chart(**fields: Any) -> SpcChart:
    base = {"machine": "filler-1", "signal": "fill_g", "limits": {"center": 500.0, "sigma": 1.0}}
    return SpcChart.model_validate({**base, **fields})


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[tuple[int, float]], list[int]]:
    """Samples a second apart, each sent up to 5 s late (within the lateness), values near
    the centre with a drift, and where the stream's batches end."""
    count = draw(st.integers(10, 120))
    values = draw(st.lists(st.floats(496, 504), min_size=count, max_size=count))
    delays = draw(st.lists(st.integers(0, 5_000), min_size=count, max_size=count))
    samples = [(T0 + i * 1000, round(v + i * 0.02, 3)) for i, v in enumerate(values)]
    order = sorted(range(count), key=lambda i: samples[i][0] + delays[i])
    cuts = draw(st.lists(st.integers(0, count), max_size=6))
    return [samples[i] for i in order], sorted(cuts)


@pytest.mark.parametrize("every_s", [None, 7])
@pytest.mark.parametrize("kind", ["xbar_r", "xbar_s", "imr"])
@settings(max_examples=60, deadline=None)
@given(data=arrivals())
def test_live_points_are_the_studys_however_batched(
    kind: str, every_s: int | None, data: tuple[list[tuple[int, float]], list[int]]
) -> None:
    """Consecutive subgroups, or the first of each 7 s interval (samples a second apart)."""
    sent, cuts = data
    size = 1 if kind == "imr" else 4
    config = chart(chart=kind, subgroup_size=size, subgroup_every_s=every_s)
    stream = SpcStream(config, LATENESS)
    points = []
    for start, end in zip([0, *cuts], [*cuts, len(sent)], strict=True):
        points += stream.add(sent[start:end])
    assert stream.late == 0
    expected = study(config, sent)["points"][: len(points)]
    assert [(p.x, p.spread, list(p.broken)) for p in points] == [
        (e["x"], e["spread"], e["broken"]) for e in expected
    ]
    # Everything below the watermark is charted; what is left waits for event time.
    water = max(ts for ts, _ in sent) - LATENESS
    below = [s for s in sent if s[0] < water]
    assert len(points) == len(study(config, below)["points"])
    if every_s is None:
        assert len(points) == len(below) // config.size


def test_a_sample_later_than_the_lateness_is_counted_and_left_out() -> None:
    config = chart(subgroup_size=2)
    stream = SpcStream(config, LATENESS)
    on_time = [(T0 + i * 1000, 500.0 + i % 2) for i in range(40)]
    stream.add(on_time)
    assert stream.add([(T0 + 500, 999.0)]) == []
    assert stream.late == 1


def test_a_drift_breaks_the_rules_live() -> None:
    """A fill weight creeping up by 0.1 g a subgroup: the zone and trend rules see it."""
    config = chart(subgroup_size=5)
    stream = SpcStream(config, 0)
    samples = [(T0 + i * 1000, 500.0 + (i // 5) * 0.1) for i in range(5 * 40)]
    points = stream.add(samples)
    first = next(p for p in points if p.broken)
    assert "6_trending" in first.broken
    assert points.index(first) == 5  # six rising means, the first five increases


def test_live_charts_need_fixed_limits() -> None:
    with pytest.raises(ValueError, match="needs fixed limits"):
        SpcStream(chart(limits=None), LATENESS)


def test_charted_samples_take_numbers_of_the_charts_only() -> None:
    rows = [
        (1, "filler-1", "fill_g", 500.5, None, None, None, None),
        (2, "filler-1", "fill_g", None, 501, None, None, "good"),
        (3, "filler-1", "fill_g", 499.0, None, None, None, "bad"),
        (4, "filler-1", "state", None, None, "running", None, None),
        (5, "filler-2", "fill_g", 480.0, None, None, None, None),
        (6, "filler-1", "fill_g", None, None, "n/a", None, None),
    ]
    events = pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")
    found = charted_samples(events, [chart()])
    assert found.rows() == [(1, "filler-1", "fill_g", 500.5), (2, "filler-1", "fill_g", 501.0)]


def test_a_shifts_summary_counts_its_subgroups_rules_and_capability() -> None:
    """Subgroups ending in [start, end) only, read back from their spc records (as the
    KPI API's shift report reads them); capability from their values, sigma within them
    as the chart estimates it (R-bar / d2)."""
    config = chart(subgroup_size=5, spec={"lsl": 496.0, "usl": 504.0})
    stream = SpcStream(config, 0)
    values = [500.0 + ((i * 7) % 5 - 2) * 0.4 for i in range(100)]  # 20 subgroups
    values[50:55] = [505.0] * 5  # subgroup 11 beyond the limit
    formed = stream.add([(T0 + i * 1000, v) for i, v in enumerate(values)])
    formed += stream.add([(T0 + 100 * 1000, 500.0)])  # closes the last subgroup
    start, end = T0 + 40 * 1000, T0 + 80 * 1000  # subgroups 9 to 16 end in it

    def summary_over(start: int, end: int) -> dict[str, Any]:
        records = [spc_record(stream, p, "line-1") for p in formed if start <= p.end < end]
        return chart_summary(config, [point_of(record) for record in records])

    inside = [p for p in formed if start <= p.end < end]
    assert [point_of(spc_record(stream, p, "line-1")) for p in inside] == inside
    summary = summary_over(start, end)
    assert summary["subgroups"] == len(inside) == 8
    assert summary["broken"] == dict(Counter(rule for p in inside for rule in p.broken))
    assert summary["broken"]["beyond_3sigma"] == 1
    cap = summary["capability"]
    flat = [v for p in inside for v in p.values]
    rbar = sum(max(p.values) - min(p.values) for p in inside) / len(inside)
    sigma = rbar / 2.326
    mean = sum(flat) / len(flat)
    assert cap["n"] == 40
    assert cap["cp"] == pytest.approx(8.0 / (6 * sigma))
    assert cap["cpk"] == pytest.approx(min(504.0 - mean, mean - 496.0) / (3 * sigma))
    assert summary_over(end + 60_000, end + 120_000)["subgroups"] == 0


def test_a_subgroups_record_keeps_its_times_to_the_millisecond() -> None:
    """Subgroups of a fast signal end within one second: their records (keyed by chart and
    end) stay apart, and each reads back as the subgroup it was."""
    stream = SpcStream(chart(subgroup_size=2), 0)
    points = stream.add([(T0 + i * 10, 500.0 + i % 3) for i in range(21)])
    records = [spc_record(stream, point, "line-1") for point in points]
    assert len(points) == 10
    assert len({spc_key(record) for record in records}) == 10
    assert [point_of(record) for record in records] == points
