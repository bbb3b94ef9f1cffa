"""bench/scale.py's pure parts: the regrouped plant and the report's arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scale import (
    Result,
    Worker,
    plan,
    planning_rate,
    regroup,
    run_config,
    spread,
    table,
    verdict,
)
from bench.throughput import kafka_block, plant_text
from linepulse.config import load_config


def test_regroup_keeps_every_machine_in_order_in_lines_of_the_size(tmp_path: Path) -> None:
    text = regroup(plant_text(25, kafka_block("t", "x", 4)), per_line=10)
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    plant = load_config(path)
    assert [line.id for line in plant.lines] == ["line-001", "line-002", "line-003"]
    assert [len(line.machines) for line in plant.lines] == [10, 10, 5]
    machines = [m.id for line in plant.lines for m in line.machines]
    assert machines == [f"m{i:04d}" for i in range(1, 26)]  # the probe line is gone


def test_run_config_gives_each_run_its_own_topics_and_group(tmp_path: Path) -> None:
    plants = []
    for name in ("r0n1", "r1n2"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(run_config(30, 10, 8, "tag", name))
        plants.append(load_config(path))
    a, b = (p.kafka for p in plants)
    assert a.telemetry.partitions == b.telemetry.partitions == 8
    assert {a.telemetry.name, a.kpi.name, a.group}.isdisjoint(
        {b.telemetry.name, b.kpi.name, b.group}
    )


@pytest.mark.parametrize(("machines", "partitions"), [(1000, 8), (30, 4), (7, 16)])
def test_spread_counts_every_machine_once_over_every_partition(
    tmp_path: Path, machines: int, partitions: int
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(run_config(machines, 10, partitions, "tag", "n1"))
    counts = spread(load_config(path), partitions)
    assert sorted(counts) == list(range(partitions))
    assert sum(counts.values()) == machines


def _result(workers: int, seconds: float, events: int = 1_000_000) -> Result:
    return Result(
        workers,
        ok=True,
        seconds=seconds,
        events=events,
        per_worker=[Worker(events // workers, 100.0, seconds / 2) for _ in range(workers)],
        assignment=[[i] for i in range(workers)],
    )


def test_report_compares_each_run_with_one_worker() -> None:
    results = [_result(1, 4.0), _result(2, 2.5), _result(4, 2.0)]
    rows = table(results)
    assert rows[2].split()[:6] == ["1", "1", "4.00", "250,000", "1.00", "250,000"]
    assert rows[3].split()[:6] == ["2", "1/1", "2.50", "400,000", "1.60", "200,000"]
    assert rows[4].split()[:6] == ["4", "1/1/1/1", "2.00", "500,000", "2.00", "125,000"]
    lines = verdict(results, cores=2)
    assert "N=2: 1.60x N=1 (at most 2x on 2 cores: 80% of that)" in lines[1]
    assert "N=4: 2.00x N=1 (at most 2x on 2 cores: 100% of that)" in lines[2]
    assert "events per CPU second from 250,000 to 500,000 across N" in lines[3]
    assert "at N=4 an event cost +100% of N=1's CPU: more than 15% apart" in lines[3]


def test_a_cost_within_the_tolerance_counts_as_the_same() -> None:
    results = [_result(1, 4.0), _result(2, 2.2)]  # 2 and 2.2 CPU s in all: +10%
    assert (
        "N=2 an event cost +10% of N=1's CPU: adding workers adds no work"
        in (verdict(results, cores=2)[2])
    )


def test_a_failed_run_has_no_rate_and_says_why() -> None:
    failed = Result(2, ok=False, reason="n2-w0 exited with code 1", seconds=3.0, events=10)
    assert failed.rate is None
    assert "FAILED: n2-w0 exited with code 1" in table([failed])[2]
    assert verdict([failed], cores=2) == []


def test_plan_sizes_workers_at_half_their_rate_and_doubles_partitions() -> None:
    plans = plan(per_worker=100_000, arrow_bytes=6.0, kpi_bytes=500.0)
    by = {(p.machines, p.rate): p for p in plans}
    small, big = by[(1_000, 10.0)], by[(100_000, 10.0)]
    assert (small.events_s, small.workers, small.partitions) == (10_000, 1, 8)
    assert (big.events_s, big.workers, big.partitions) == (1_000_000, 20, 40)
    assert big.telemetry_mb_s == pytest.approx(6.0)
    # 1,000 machines in lines of 20: 1,050 scopes, 5 open records a second each, plus finals
    # (one a minute, a quarter, an hour, a shift, a day).
    finals = 1 / 60 + 1 / 900 + 1 / 3600 + 1 / 28_800 + 1 / 86_400
    assert small.kpi_records_s == pytest.approx(1_050 * (5 + finals))
    assert small.kpi_mb_s == pytest.approx(small.kpi_records_s * 500 / 1e6)
    slower = plan(per_worker=100_000, arrow_bytes=6.0, kpi_bytes=500.0, open_interval_s=5.0)
    assert slower[0].kpi_records_s == pytest.approx(1_050 * (1 + finals))


def test_planning_rate_is_the_lowest_events_per_cpu_second() -> None:
    # _result gives each worker seconds / 2 CPU seconds: N=1 1M events in 2 CPU s,
    # N=2 in 2.5 CPU s, N=4 in 4 CPU s.
    results = [_result(1, 4.0), _result(2, 2.5), _result(4, 2.0)]
    assert [r.per_cpu_s for r in results] == [500_000, 400_000, 250_000]
    rate, source = planning_rate(results) or (0.0, "")
    assert rate == pytest.approx(250_000)
    assert source.endswith("N=4")
    failed = Result(2, ok=False, reason="timed out", seconds=3.0, events=10)
    assert planning_rate([failed]) is None
