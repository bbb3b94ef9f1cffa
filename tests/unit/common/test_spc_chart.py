"""Control charts and capability (linepulse/spc_chart.py) against a textbook worked
example and a reference computation: Montgomery's piston rings (Introduction to
Statistical Quality Control, Example 6.1, Tables 6.3 and 6.4: inside diameters, 25
subgroups of 5 for the limits, then 15 more whose last ones drift up), an individuals
chart computed by hand, and each Western Electric / Nelson rule on a pattern made for it."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from linepulse.calendar import Calendar
from linepulse.config import ConfigError, parse_config
from linepulse.spc import SpcChart
from linepulse.spc_chart import Constants, SpcError, c4, study, subgroups

# Table 6.3: 25 samples of five diameters (mm), each row a sample.
PHASE_ONE = [
    (74.030, 74.002, 74.019, 73.992, 74.008),
    (73.995, 73.992, 74.001, 74.011, 74.004),
    (73.988, 74.024, 74.021, 74.005, 74.002),
    (74.002, 73.996, 73.993, 74.015, 74.009),
    (73.992, 74.007, 74.015, 73.989, 74.014),
    (74.009, 73.994, 73.997, 73.985, 73.993),
    (73.995, 74.006, 73.994, 74.000, 74.005),
    (73.985, 74.003, 73.993, 74.015, 73.988),
    (74.008, 73.995, 74.009, 74.005, 74.004),
    (73.998, 74.000, 73.990, 74.007, 73.995),
    (73.994, 73.998, 73.994, 73.995, 73.990),
    (74.004, 74.000, 74.007, 74.000, 73.996),
    (73.983, 74.002, 73.998, 73.997, 74.012),
    (74.006, 73.967, 73.994, 74.000, 73.984),
    (74.012, 74.014, 73.998, 73.999, 74.007),
    (74.000, 73.984, 74.005, 73.998, 73.996),
    (73.994, 74.012, 73.986, 74.005, 74.007),
    (74.006, 74.010, 74.018, 74.003, 74.000),
    (73.984, 74.002, 74.003, 74.005, 73.997),
    (74.000, 74.010, 74.013, 74.020, 74.003),
    (73.982, 74.001, 74.015, 74.005, 73.996),
    (74.004, 73.999, 73.990, 74.006, 74.009),
    (74.010, 73.989, 73.990, 74.009, 74.014),
    (74.015, 74.008, 73.993, 74.000, 74.010),
    (73.982, 73.984, 73.995, 74.017, 74.013),
]
# Table 6.4: 15 samples taken after the limits were set.
PHASE_TWO = [
    (74.012, 74.015, 74.030, 73.986, 74.000),
    (73.995, 74.010, 73.990, 74.015, 74.001),
    (73.987, 73.999, 73.985, 74.000, 73.990),
    (74.008, 74.010, 74.003, 73.991, 74.006),
    (74.003, 74.000, 74.001, 73.986, 73.997),
    (73.994, 74.003, 74.015, 74.020, 74.004),
    (74.008, 74.002, 74.018, 73.995, 74.005),
    (74.001, 74.004, 73.990, 73.996, 73.998),
    (74.015, 74.000, 74.016, 74.025, 74.000),
    (74.030, 74.005, 74.000, 74.016, 74.012),
    (74.001, 73.990, 73.995, 74.010, 74.024),
    (74.015, 74.020, 74.024, 74.005, 74.019),
    (74.035, 74.010, 74.012, 74.015, 74.026),
    (74.017, 74.013, 74.036, 74.025, 74.026),
    (74.010, 74.005, 74.029, 74.000, 74.020),
]
T0 = int(datetime(2026, 11, 2, 6, 0, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def samples(rows: Sequence[Sequence[float]], start: int = T0) -> list[tuple[int, float]]:
    """One sample a minute, row after row."""
    flat = [v for row in rows for v in row]
    return [(start + i * MINUTE, v) for i, v in enumerate(flat)]


def chart(**fields: Any) -> SpcChart:
    return SpcChart.model_validate({"machine": "press-1", "signal": "bore_mm", **fields})


def test_the_standard_constants() -> None:
    """Against the printed table (Montgomery, Appendix VI) to its three places."""
    five = Constants(5)
    assert (round(five.a2, 3), round(five.d3_factor, 3), round(five.d4_factor, 3)) == (
        0.577,
        0.0,
        2.114,
    )
    assert (round(five.a3, 3), round(five.b3, 3), round(five.b4, 3)) == (1.427, 0.0, 2.089)
    assert round(c4(5), 4) == 0.9400
    seven = Constants(7)
    assert (round(seven.d3_factor, 3), round(seven.d4_factor, 3)) == (0.076, 1.924)
    assert (round(seven.b3, 3), round(seven.b4, 3)) == (0.118, 1.882)
    assert round(Constants(2).d4_factor, 3) == 3.267


def test_piston_rings_xbar_r_limits_as_the_textbook_prints_them() -> None:
    result = study(chart(chart="xbar_r", subgroup_size=5), samples(PHASE_ONE))
    limits = result["limits"]
    # The textbook: x-double-bar 74.001, R-bar 0.023, X-bar chart 73.988 to 74.014,
    # R chart 0 to 0.049 (it rounds x-double-bar and R-bar first: 74.001 + 0.577 x 0.023
    # = 74.014, where the unrounded 74.00118 + 0.577 x 0.02324 = 74.0146).
    assert round(limits["center"], 3) == 74.001
    assert round(limits["spread_center"], 3) == 0.023
    assert limits["lcl"] == pytest.approx(73.988, abs=0.001)
    assert limits["ucl"] == pytest.approx(74.014, abs=0.001)
    assert (limits["spread_lcl"], round(limits["spread_ucl"], 3)) == (0.0, 0.049)
    # And exactly as a reference computation from the raw values gives them.
    rbar = statistics.fmean(max(row) - min(row) for row in PHASE_ONE)
    xbarbar = statistics.fmean(statistics.fmean(row) for row in PHASE_ONE)
    assert limits["center"] == pytest.approx(xbarbar, abs=1e-12)
    assert limits["ucl"] == pytest.approx(xbarbar + 0.577 * rbar, abs=1e-12)
    assert limits["sigma"] == pytest.approx(rbar / 2.326, abs=1e-12)
    assert result["subgroups"] == 25
    assert result["violations"] == []  # the phase I samples are in control


def test_piston_rings_xbar_s_limits() -> None:
    result = study(chart(chart="xbar_s", subgroup_size=5), samples(PHASE_ONE))
    limits = result["limits"]
    sbar = statistics.fmean(statistics.stdev(row) for row in PHASE_ONE)
    assert round(sbar, 4) == 0.0094  # the textbook's s-bar
    assert limits["spread_center"] == pytest.approx(sbar, abs=1e-12)
    assert limits["lcl"] == pytest.approx(73.988, abs=0.001)
    assert limits["ucl"] == pytest.approx(74.014, abs=0.001)
    assert round(limits["spread_ucl"], 4) == round(2.089 * sbar, 4)  # B4 s-bar
    assert limits["sigma"] == pytest.approx(sbar / c4(5), abs=1e-12)


def test_the_later_samples_break_the_limits_of_the_baseline() -> None:
    """Limits from the first 25 samples (a baseline), judged on all 40: samples 37, 38 and
    39 plot above the upper limit, as in the textbook's phase II chart."""
    phase_one = samples(PHASE_ONE)
    later = samples(PHASE_TWO, start=phase_one[-1][0] + MINUTE)
    end_of_baseline = "2026-11-02T08:05:00Z"  # 125 minutes after the first sample
    baseline = {"from": "2026-11-02T06:00:00Z", "to": end_of_baseline}
    result = study(chart(subgroup_size=5, baseline=baseline), [*later, *phase_one])
    assert result["limits"]["source"] == "baseline"
    assert result["limits"]["ucl"] == pytest.approx(74.014, abs=0.001)
    beyond = [i + 1 for i, p in enumerate(result["points"]) if "beyond_3sigma" in p["broken"]]
    assert beyond == [37, 38, 39]
    reference = [
        i + 26 for i, row in enumerate(PHASE_TWO) if statistics.fmean(row) > result["limits"]["ucl"]
    ]
    assert beyond == reference
    # The zone rules see the shift first: samples 34 and 35 both plot beyond 2 sigma.
    first = result["violations"][0]
    assert (first["rule"], first["end"]) == ("2_of_3_beyond_2sigma", result["points"][34]["end"])
    two_sigma = (
        result["limits"]["center"] + 2 * (result["limits"]["ucl"] - result["limits"]["center"]) / 3
    )
    assert [round(statistics.fmean(PHASE_TWO[i]), 4) > two_sigma for i in (7, 8, 9)] == [
        False,
        True,
        True,
    ]


def test_capability_of_the_piston_rings_by_hand() -> None:
    """Specification 74.000 +- 0.05 mm: sigma = R-bar / d2 = 0.0232 / 2.326 = 0.00999, so
    Cp = 0.10 / (6 x 0.00999) = 1.67; the process is centred, so Cpk is about Cp."""
    spec = {"lsl": 73.95, "usl": 74.05, "target": 74.0}
    result = study(chart(subgroup_size=5, spec=spec), samples(PHASE_ONE))
    cap = result["capability"]
    rbar = statistics.fmean(max(row) - min(row) for row in PHASE_ONE)
    sigma = rbar / 2.326
    values = [v for row in PHASE_ONE for v in row]
    mean = statistics.fmean(values)
    assert round(cap["cp"], 2) == 1.67
    assert cap["cp"] == pytest.approx(0.10 / (6 * sigma))
    assert cap["cpk"] == pytest.approx(min(74.05 - mean, mean - 73.95) / (3 * sigma))
    overall = statistics.stdev(values)
    assert cap["pp"] == pytest.approx(0.10 / (6 * overall))
    assert cap["ppk"] == pytest.approx(min(74.05 - mean, mean - 73.95) / (3 * overall))
    one_sided = study(chart(subgroup_size=5, spec={"usl": 74.05}), samples(PHASE_ONE))
    assert one_sided["capability"]["cp"] is None
    assert one_sided["capability"]["cpk"] == pytest.approx((74.05 - mean) / (3 * sigma))


def test_an_individuals_chart_by_hand() -> None:
    """2, 4, 6, 4, 2, 4, 6, 4: mean 4, moving ranges all 2, sigma = 2 / 1.128 = 1.7730,
    limits 4 +- 3 x 1.7730 = -1.319 to 9.319; MR limit 3.267 x 2 = 6.534."""
    values = [2, 4, 6, 4, 2, 4, 6, 4]
    result = study(chart(chart="imr"), [(T0 + i * MINUTE, v) for i, v in enumerate(values)])
    limits = result["limits"]
    assert limits["center"] == 4.0
    assert limits["spread_center"] == 2.0
    assert round(limits["sigma"], 4) == 1.7730
    assert (round(limits["lcl"], 3), round(limits["ucl"], 3)) == (-1.319, 9.319)
    assert round(limits["spread_ucl"], 3) == 6.534
    assert [p["spread"] for p in result["points"]] == [None, 2, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    ("values", "rule", "at"),
    [
        ([0.0, 3.5], "beyond_3sigma", [1]),
        ([0.0, 2.5, 0.0, 2.5], "2_of_3_beyond_2sigma", [3]),
        ([-2.5, -2.2, 0.0], "2_of_3_beyond_2sigma", [1]),
        ([1.5, 1.5, 0.0, 1.5, 1.5], "4_of_5_beyond_1sigma", [4]),
        ([0.5] * 8, "8_on_one_side", [7]),
        ([-0.5] * 9, "8_on_one_side", [7, 8]),
        ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], "6_trending", [5]),
        ([0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1], "6_trending", [5, 6]),
    ],
)
def test_each_rule_fires_on_its_pattern_and_no_other_does(
    values: list[float], rule: str, at: list[int]
) -> None:
    """Individuals with known limits (centre 0, sigma 1): each pattern breaks its rule at
    the points that complete it, and nothing else."""
    limits = {"center": 0.0, "sigma": 1.0}
    result = study(
        chart(chart="imr", limits=limits), [(T0 + i * MINUTE, v) for i, v in enumerate(values)]
    )
    assert [(v["rule"]) for v in result["violations"]] == [rule] * len(at)
    broken = [i for i, p in enumerate(result["points"]) if rule in p["broken"]]
    assert broken == at


def test_only_the_rules_chosen_are_watched() -> None:
    trend = [0.0, 0.1, 0.2, 0.3, 0.4, 3.5]  # a trend ending beyond the limit
    points = [(T0 + i * MINUTE, v) for i, v in enumerate(trend)]
    limits = {"center": 0.0, "sigma": 1.0}
    both = study(chart(chart="imr", limits=limits), points)
    assert {v["rule"] for v in both["violations"]} >= {"beyond_3sigma", "6_trending"}
    one = study(chart(chart="imr", limits=limits, rules=["6_trending"]), points)
    assert {v["rule"] for v in one["violations"]} == {"6_trending"}


def test_a_stable_process_alarms_at_the_rate_the_rules_promise() -> None:
    """A centred normal process at its own sigma: a point beyond 3 sigma has chance
    0.0027, so 20,000 subgroups give about 54 (sd 7.3) and nothing systematic; the
    zone rules add their own known false alarms (docs/spc.md)."""
    rng = random.Random(7)
    values = [(T0 + i * MINUTE, rng.gauss(500.0, 1.0)) for i in range(5 * 20_000)]
    known = {"center": 500.0, "sigma": 1.0}
    result = study(chart(subgroup_size=5, limits=known, rules=["beyond_3sigma"]), values)
    beyond = sum(1 for v in result["violations"] if v["rule"] == "beyond_3sigma")
    assert 54 - 4 * 7.3 < beyond < 54 + 4 * 7.3


def test_arrival_order_does_not_matter() -> None:
    ordered = samples(PHASE_ONE)
    shuffled = ordered[:]
    random.Random(3).shuffle(shuffled)
    assert study(chart(subgroup_size=5), shuffled) == study(chart(subgroup_size=5), ordered)


def test_time_based_subgroups_take_the_first_samples_of_each_interval() -> None:
    """`subgroup_every_s: 60` and size 3: per minute (from the epoch), its first three
    samples by time, whatever the rest of the minute holds; a minute with two gives none."""
    t = 1_800_000_000_000 - 1_800_000_000_000 % 60_000  # a whole minute
    values = [
        (t + 5_000, 10.0),
        (t + 1_000, 11.0),
        (t + 9_000, 12.0),
        (t + 30_000, 99.0),  # the fourth of the minute: not charted
        (t + 61_000, 20.0),  # the next minute has two: no point
        (t + 62_000, 21.0),
        (t + 120_000, 30.0),
        (t + 121_000, 30.0),
        (t + 122_000, 33.0),
    ]
    groups = subgroups(values, 3, 60_000)
    assert [(g.start - t, g.values) for g in groups] == [
        (1_000, (11.0, 10.0, 12.0)),
        (120_000, (30.0, 30.0, 33.0)),
    ]
    config = chart(subgroup_size=3, subgroup_every_s=60, limits={"center": 20, "sigma": 5})
    result = study(config, values)
    assert [p["x"] for p in result["points"]] == [11.0, 31.0]
    assert [p["spread"] for p in result["points"]] == [2.0, 3.0]
    assert result["subgroup_every_s"] == 60


def test_capability_per_shift_and_day() -> None:
    plant = parse_config(
        {
            "site": "s",
            "shifts": [
                {"name": "early", "start": "06:00", "end": "14:00"},
                {"name": "late", "start": "14:00", "end": "22:00"},
            ],
            "lines": [{"id": "L1", "machines": [{"id": "press-1"}]}],
        }
    )
    # 60 subgroups of the piston rings' first rows, one sample every 5 minutes from
    # 06:00: 25 hours, over two production days and both shifts.
    rows = PHASE_ONE * 3
    points = [(T0 + i * 5 * MINUTE, v) for i, v in enumerate(v for row in rows for v in row)]
    spec = {"lsl": 73.95, "usl": 74.05}
    result = study(chart(subgroup_size=5, spec=spec), points, Calendar(plant), "L1")
    days = {row["date"]: row["n"] for row in result["capability_by_day"]}
    expected: dict[str, int] = {}
    for end in points[4::5]:  # each subgroup's last sample (day_start 00:00, UTC)
        day = datetime.fromtimestamp(end[0] / 1000, UTC).date().isoformat()
        expected[day] = expected.get(day, 0) + 5
    assert days == expected
    assert sorted(days) == ["2026-11-02", "2026-11-03"]
    shifts = {(row["date"], row["shift"]): row for row in result["capability_by_shift"]}
    # early 06:00-14:00: subgroups ending 06:20 ... 13:55 (each ends 20 min after it starts).
    assert sorted(shifts) == [
        ("2026-11-02", "early"),
        ("2026-11-02", "late"),
        ("2026-11-03", "early"),
    ]
    assert sum(row["n"] for row in shifts.values()) < 375  # the nights are no shift's
    assert all(row["cp"] is not None for row in shifts.values())


BASELINE = {"from": "2026-11-02T06:00:00Z", "to": "2026-11-02T07:00:00Z"}


BASELINE = {"from": "2026-11-02T06:00:00Z", "to": "2026-11-02T07:00:00Z"}


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"chart": "imr", "subgroup_size": 5}, "single values"),
        ({"chart": "xbar_r", "subgroup_size": 12}, "use xbar_s"),
        ({"chart": "xbar_s", "subgroup_size": 1}, "imr for 1"),
        ({"limits": {"center": 1, "sigma": 1}, "baseline": BASELINE}, "not both"),
        ({"spec": {"lsl": 5, "usl": 4}}, "must be below usl"),
        ({"spec": {}}, "give lsl, usl or both"),
        ({"rules": ["9_on_one_side"]}, "8_on_one_side"),
        ({"subgroup_every_s": 0}, "greater than or equal to 1"),
    ],
)
def test_a_chart_configured_wrong_is_refused(fields: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError, match=said):
        chart(**fields)


def test_too_few_subgroups_for_limits_says_so() -> None:
    with pytest.raises(SpcError, match="press-1/bore_mm: 1 subgroup"):
        study(chart(subgroup_size=5), samples(PHASE_ONE[:1]))


@pytest.mark.parametrize(
    ("charts", "said"),
    [
        ([{"machine": "press-9", "signal": "bore_mm"}], r"spc\[0\]\.machine: unknown machine"),
        (
            [{"machine": "press-1", "signal": "bore_mm"}] * 2,
            r"spc\[1\]: press-1/bore_mm is charted twice",
        ),
    ],
)
def test_the_plant_config_checks_its_charts(charts: list[dict[str, Any]], said: str) -> None:
    data = {"site": "s", "lines": [{"id": "L1", "machines": [{"id": "press-1"}]}], "spc": charts}
    with pytest.raises(ConfigError, match=said):
        parse_config(data)
