"""The DuckDB-SQL peer of the replay benchmark, on a tiny input with hand-computed results.

The benchmark compares this peer's records with LinePulse's; if the SQL were wrong, the
comparison would blame the wrong side. So the query is pinned down here on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from bench.peer_duckdb_sql import COLUMNS, run

T0 = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
W0 = int(T0.timestamp() * 1000)
W1 = W0 + 60_000

# (seconds after T0, machine, signal, value, reason)
EVENTS: list[tuple[int, str, str, str | int, str | None]] = [
    # m1: running 0-50 s, down 50-70 s (crossing the minute), running 70 s to the end.
    (0, "m1", "state", "running", None),
    (0, "m1", "total_count", 100, None),  # the baseline: counts nothing
    (0, "m1", "reject_count", 7, None),
    (30, "m1", "total_count", 110, None),  # +10
    (30, "m1", "reject_count", 8, None),  # +1
    (50, "m1", "state", "down", "jam"),
    (65, "m1", "total_count", 130, None),  # +20
    (65, "m1", "reject_count", 8, None),  # +0
    (70, "m1", "state", "running", None),
    (100, "m1", "total_count", 5, None),  # a reset: the new value counts, +5
    (100, "m1", "reject_count", 9, None),  # +1
    # m2: no data until it goes idle at 20 s; no counters at all.
    (20, "m2", "state", "idle", None),
    # The last event of the file (not a KPI signal) ends every last state: at 110 s.
    (110, "m2", "temperature", 65, None),
]

PLANT = """\
lines:
  - id: line-1
    machines:
      - {id: m1, ideal_cycle_time_s: 0.5}
      - {id: m2, ideal_cycle_time_s: 1.0}
"""

# machine, window start: planned, run, downtime, unknown, total, reject, good, A, P, Q, OEE
EXPECTED: list[tuple[Any, ...]] = [
    ("m1", W0, 60.0, 50.0, 10.0, 0.0, 10, 1, 9, 50 / 60, 0.5 * 10 / 50, 9 / 10, 9 * 0.5 / 60),
    ("m1", W1, 60.0, 40.0, 10.0, 10.0, 25, 1, 24, 40 / 60, 0.5 * 25 / 40, 24 / 25, 24 * 0.5 / 60),
    # Never running: availability 0, no performance or quality, OEE 0 (good x ict / planned).
    ("m2", W0, 60.0, 0.0, 40.0, 20.0, 0, 0, 0, 0.0, None, None, 0.0),
    ("m2", W1, 60.0, 0.0, 50.0, 10.0, 0, 0, 0, 0.0, None, None, 0.0),
]


def _write(tmp_path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        path = tmp_path / "events.parquet"
        pl.DataFrame(
            {
                "ts": [T0 + timedelta(seconds=s) for s, *_ in EVENTS],
                "machine": [e[1] for e in EVENTS],
                "signal": [e[2] for e in EVENTS],
                "value": [str(e[3]) for e in EVENTS],
                "reason": [e[4] for e in EVENTS],
            },
            schema={
                "ts": pl.Datetime("ms", "UTC"),
                "machine": pl.String,
                "signal": pl.String,
                "value": pl.String,
                "reason": pl.String,
            },
        ).write_parquet(path)
        return path
    path = tmp_path / "events.jsonl"
    lines = []
    for seconds, machine, signal, value, reason in EVENTS:
        ts = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
        event: dict[str, Any] = {"ts": ts, "machine": machine, "signal": signal, "value": value}
        if reason is not None:
            event["reason"] = reason
        lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_windowed_oee_matches_hand_computed_values(tmp_path: Path, fmt: str) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(PLANT)
    output = tmp_path / "out.parquet"

    rows, _ = run(_write(tmp_path, fmt), config, "1m", output)

    got = pl.read_parquet(output)
    assert got.columns == list(COLUMNS)
    assert rows == len(EXPECTED)
    for want, have in zip(EXPECTED, got.iter_rows(), strict=True):
        assert have[:2] == want[:2]
        for name, w, h in zip(COLUMNS[2:], want[2:], have[2:], strict=True):
            assert (h is None) == (w is None), name
            if w is not None:
                assert h == pytest.approx(w, abs=1e-9), (have[:2], name)


def test_a_longer_window_sums_the_minutes(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(PLANT)
    output = tmp_path / "out.parquet"

    run(_write(tmp_path, "parquet"), config, "15m", output)

    got = pl.read_parquet(output).filter(pl.col("machine") == "m1").row(0, named=True)
    assert got["window_start_ms"] == W0  # 05:00 UTC is on a quarter hour
    assert (got["planned_s"], got["run_s"], got["downtime_s"]) == (900.0, 90.0, 20.0)
    assert got["unknown_s"] == pytest.approx(790.0)  # after the file's last event
    assert (got["total_count"], got["reject_count"], got["good_count"]) == (35, 2, 33)
    assert got["oee"] == pytest.approx(33 * 0.5 / 900)
