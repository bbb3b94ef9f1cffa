"""The soak test's verdict arithmetic (bench/soak_compare.py) on hand-made records, events
and pages: what counts as wrong, lost, excused or duplicated."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak_compare import (
    FIELDS,
    Outage,
    compare_events,
    compare_pages,
    compare_records,
    down_spans,
    epoch_ms,
    rss_ratio,
    same,
    unpaged,
)

T0 = epoch_ms("2026-11-21T10:00:00Z")
MIN = 60_000


def record(machine: str | None, start_min: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "site": "s",
        "line": "line-1",
        "machine": machine,
        "window": "1m",
        "window_start": f"2026-11-21T10:{start_min:02d}:00Z",
        "window_end": f"2026-11-21T10:{start_min + 1:02d}:00Z",
        "shift": None,
        "planned_s": 60.0,
        "run_s": 50.0,
        "downtime_s": 10.0,
        "unknown_s": 0.0,
        "stops": 1,
        "total_count": 100,
        "good_count": 98,
        "reject_count": 2,
        "availability": 50 / 60,
        "performance": 0.9,
        "quality": 0.98,
        "oee": 50 / 60 * 0.9 * 0.98,
        "mtbf_s": 50.0,
        "mttr_s": 10.0,
        "downtime_by_reason": {"jam": 10.0},
        "final": True,
        "revision": 0,
    }
    return {**base, **changes}


def test_every_design_field_is_compared_and_revision_is_not() -> None:
    assert {"planned_s", "oee", "downtime_by_reason", "final", "stops"} <= set(FIELDS)
    assert "revision" not in FIELDS


def test_equal_records_pass_and_a_restated_revision_is_not_a_difference() -> None:
    truth = [record("m1", 1), record(None, 1)]
    served = [record("m1", 1, revision=3), record(None, 1)]
    check = compare_records(truth, served, start_ms=T0, end_ms=T0 + 10 * MIN)
    assert (check.compared, check.records_wrong) == (2, 0)


def test_float_noise_within_1e9_passes_and_beyond_fails() -> None:
    truth = [record("m1", 1), record("m2", 1)]
    served = [record("m1", 1, oee=truth[0]["oee"] + 1e-12), record("m2", 1, run_s=50.001)]
    check = compare_records(truth, served, start_ms=T0, end_ms=T0 + 10 * MIN)
    assert check.wrong == 1
    assert [(m.key[1], m.field) for m in check.mismatches] == [("m2", "run_s")]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("stops", 2),
        ("availability", None),
        ("downtime_by_reason", {"jam": 9.0, "motor": 1.0}),
        ("final", False),
        ("shift", "early"),
    ],
)
def test_any_field_that_differs_is_wrong(name: str, value: Any) -> None:
    check = compare_records(
        [record("m1", 1)], [record("m1", 1, **{name: value})], start_ms=T0, end_ms=T0 + MIN * 10
    )
    assert check.wrong == 1
    assert check.mismatches[0].field == name


def test_a_record_not_served_is_missing_and_counts_as_wrong() -> None:
    check = compare_records([record("m1", 1)], [], start_ms=T0, end_ms=T0 + 10 * MIN)
    assert (check.missing, check.records_wrong) == (1, 1)


def test_windows_outside_the_span_are_not_compared() -> None:
    truth = [record("m1", 0), record("m1", 5), record("m1", 9)]
    check = compare_records(truth, [], start_ms=T0 + MIN, end_ms=T0 + 9 * MIN)
    assert check.compared == 1  # 10:05 only: 10:00 starts before, 10:09-10:10 ends after


def test_an_outage_excuses_its_machines_and_their_line_only_where_windows_overlap() -> None:
    outage = Outage(frozenset({"m1"}), T0 + 2 * MIN + 30_000, T0 + 3 * MIN + 10_000)
    truth = [record("m1", 1), record("m1", 2), record("m1", 3), record("m2", 2), record(None, 2)]
    served = [record("m1", 1), record("m1", 2, unknown_s=5.0), record("m2", 2)]
    check = compare_records(
        truth,
        served,
        start_ms=T0,
        end_ms=T0 + 10 * MIN,
        outages=[outage],
        lines={"m1": "line-1", "m2": "line-1"},
    )
    # m1 10:02 and 10:03 and the line's 10:02 overlap the outage; m1 10:01 and m2 do not.
    assert (check.excused, check.excused_differing) == (3, 3)
    assert (check.compared, check.records_wrong) == (2, 0)


def test_same_compares_instants_not_spellings() -> None:
    assert same("2026-11-21T10:00:00Z", "2026-11-21T10:00:00+00:00")
    assert not same("2026-11-21T10:00:00Z", "2026-11-21T10:00:01Z")
    assert not same(True, 1)
    assert not same(None, 0.0)


def ev(ts: int, machine: str = "m1", signal: str = "total_count", value: Any = 1.0) -> Any:
    return (ts, machine, signal, value, None)


SIGNALS = frozenset({"state", "total_count"})


def test_a_true_event_missing_from_the_topic_is_lost() -> None:
    truth = [ev(T0 + 1), ev(T0 + 2, value=2.0), ev(T0 + 3, signal="temperature")]
    check = compare_events(truth, [ev(T0 + 1)], start_ms=T0, end_ms=T0 + MIN, signals=SIGNALS)
    assert (check.expected, check.lost) == (2, 1)
    assert check.lost_examples == [ev(T0 + 2, value=2.0)]


def test_events_in_an_outage_of_their_machine_are_excused_and_duplicates_counted() -> None:
    outage = Outage(frozenset({"m1"}), T0 + 10, T0 + 20)
    truth = [ev(T0 + 5), ev(T0 + 15), ev(T0 + 15, machine="m2")]
    topic = [ev(T0 + 5), ev(T0 + 5)]
    check = compare_events(
        truth, topic, start_ms=T0, end_ms=T0 + MIN, signals=SIGNALS, outages=[outage]
    )
    assert (check.expected, check.lost, check.excused, check.excused_missing) == (2, 1, 1, 1)
    assert check.duplicated == 1


def test_pages_received_twice_or_never_are_counted() -> None:
    check = compare_pages(["a", "b", "b", "x"], ["a", "b", "c"])
    assert (check.received, check.distinct, check.duplicates) == (4, 3, 1)
    assert (check.missing, check.unexplained) == (1, 1)


def test_rss_ratio_compares_the_last_third_with_the_first_after_warmup() -> None:
    flat = [(float(t), 100) for t in range(20)]
    growing = [(float(t), 100 + 10 * t) for t in range(20)]
    assert rss_ratio(flat, warmup_s=2) == 1.0
    ratio = rss_ratio(growing, warmup_s=2)
    assert ratio is not None
    assert ratio > 1.5
    assert rss_ratio(flat[:5], warmup_s=0) is None


def state(ts: int, machine: str, value: str) -> Any:
    return (ts, machine, "state", value, None)


def test_down_spells_long_enough_owe_a_page_and_a_page_in_the_spell_pays_it() -> None:
    truth = [
        state(T0, "m1", "running"),
        state(T0 + 1_000, "m1", "down"),
        state(T0 + 3_000, "m1", "down"),  # repeated: the same spell
        state(T0 + 10_000, "m1", "running"),  # 9 s down: owed
        state(T0 + 20_000, "m1", "down"),
        state(T0 + 22_000, "m1", "idle"),  # 2 s: not owed
        state(T0 + 30_000, "m2", "down"),
        state(T0 + 40_000, "m2", "running"),  # 10 s: owed
        state(T0 + 50_000, "m1", "down"),  # still open at the end: not owed
        state(T0 + 5_000, "x", "down"),
        state(T0 + 60_000, "x", "running"),  # not a watched machine
    ]
    spans = down_spans(truth, frozenset({"m1", "m2"}), min_ms=8_000)
    assert spans == {"m1": [(T0 + 1_000, T0 + 10_000)], "m2": [(T0 + 30_000, T0 + 40_000)]}
    fired = {"m1": [T0 + 1_000], "m2": [T0 + 45_000]}
    assert unpaged(spans, fired, start_ms=T0, end_ms=T0 + MIN) == 1  # m2's page is outside
    assert unpaged(spans, fired, start_ms=T0 + 20_000, end_ms=T0 + MIN) == 1
    assert unpaged(spans, {}, start_ms=T0 + 20_000, end_ms=T0 + 35_000) == 0
