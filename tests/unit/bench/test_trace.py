"""bench/trace.py's join of the traces: a probe batch's stages, end to end."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.stream import Probe
from bench.trace import STAGES, Load, parse_args, probe_chains, stage_table

KPI = "kpi-t"


def test_help_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"])
    assert done.value.code == 0
    assert "--together" in capsys.readouterr().out


def traced_run() -> tuple[Load, list[dict[str, Any]], list[dict[str, Any]]]:
    """Two probe batches read by one worker poll, published in one record, materialised
    in one batch; stamps in wall seconds, `perf + offset` as the services write them."""
    offset = time.time() - time.perf_counter()

    def wall(perf: float) -> float:
        return perf + offset

    probe = Probe(first_ts=0, ticks=3, data_ms_per_tick=100)
    probe.produced = [10.0, 10.1, 10.2]
    probe.seen["api"] = {0: 1.0, 1: 0.95}  # batch 2 never visible
    load = Load(probe, sample_at={0: (3, 5), 1: (3, 6), 2: (3, 7)})
    part = {"first": 5, "last": 7, "records": 3, "ts_min": 0, "ts_max": 0}
    worker = [
        {
            "kind": "batch",
            "fetched": wall(10.3),
            "stepped": wall(10.5),
            "parts": {"3": {**part, "decoded": wall(10.32), "built": wall(10.55)}},
        },
        {
            "kind": "record",
            "partition": 1,
            "offset": 40,
            "appended": wall(10.6),
            "sent": wall(10.6),
            "acked": wall(10.7),
            "record": {"window_start": "1970-01-01T00:00:00Z", "total_count": 2},
        },
    ]
    materializer = [
        {
            "kind": "batch",
            "fetched": wall(10.8),
            "decoded": wall(10.82),
            "upserted": wall(10.9),
            "parts": {f"{KPI}[1]": {**part, "first": 40, "last": 41}},
        }
    ]
    return load, worker, materializer


def test_a_batch_is_followed_through_every_stage() -> None:
    load, worker, materializer = traced_run()
    chains, notes = probe_chains(load, worker, materializer, KPI)
    assert sorted(chains) == [0, 1]
    assert notes == ["1 probe batch(es) without a API answer"]
    first = chains[0]
    expected = {
        "produced": 10.0,
        "fetched": 10.3,
        "decoded": 10.32,
        "stepped": 10.5,
        "built": 10.55,
        "appended": 10.6,
        "acked": 10.7,
        "mat_fetched": 10.8,
        "mat_decoded": 10.82,
        "upserted": 10.9,
        "visible": 11.0,
    }
    assert {k: first[k] for k in expected} == pytest.approx(expected, abs=1e-3)
    assert chains[1]["visible"] == pytest.approx(11.05)


def test_the_stages_add_up_to_the_end_to_end_time() -> None:
    load, worker, materializer = traced_run()
    chains, _ = probe_chains(load, worker, materializer, KPI)
    table = stage_table(chains)
    rows = {line[:44].strip(): line.split() for line in table[2 : 2 + len(STAGES)]}
    assert list(rows) == [name for name, _ in STAGES]
    means = [float(cells[-2]) for cells in rows.values()]
    shares = [float(cells[-1].rstrip("%")) for cells in rows.values()]
    end_to_end = table[2 + len(STAGES) + 1].split()
    assert sum(means) == pytest.approx(float(end_to_end[-2]), abs=0.5)
    assert sum(shares) == pytest.approx(100, abs=0.5)
