"""A peer of `linepulse replay`: per-machine windowed OEE over a telemetry file in DuckDB SQL.

    python -m bench.peer_duckdb_sql --config PLANT.yaml --window 1m EVENTS --output OUT.parquet

What an analyst would write in plain SQL over the same file (Parquet, or JSON lines), with
no LinePulse code. Python only reads the machines' ideal cycle times from the plant YAML
and hands the file to DuckDB; the computation is one query. Per machine and tumbling
window (`1m`, `15m` or `1h`, aligned to the epoch in UTC, which is also the plant's clock
for any timezone whose offset is whole hours):

- **time in each state**: each `state` sample holds until the machine's next one
  (`LEAD()`); the last one until the highest event time in the file. The intervals are
  split at window boundaries. `run_s` is time in `running`; `downtime_s` in `down`,
  `idle`, `changeover`; `unknown_s` is the rest of the window (before a machine's first
  state sample, and after the last event);
- **counts**: `total_count` and `reject_count` are cumulative; the count in a window is
  the sum of the steps (`LAG()`) of the samples in it: a step down is a reset and counts
  the new value; a machine's first sample only sets the baseline. good = total - reject;
- `planned_s` is the whole window: plain SQL here has no shift calendar, breaks or
  planned stops;
- availability = run / planned, performance = ideal cycle time x total / run,
  quality = good / total, oee = availability x performance x quality, computed as
  good x ideal cycle time / planned (the same product, which is still defined, 0, for a
  window in which the machine never ran); a ratio with a zero denominator is null.

What it does not do that LinePulse's core does: no shift calendar (planned time, breaks,
`shift` and `day` windows), no `planned_stop` or reason codes, counter rollovers at
`counter_max` are taken as resets, `bad`-quality samples are not dropped, samples at equal
timestamps are ordered by value only, no lines, no late data or restatement (the file is
one sorted batch), and none of LinePulse's other KPIs (stops, MTBF/MTTR, losses...).

It prints one line on stdout: `rows,windows,seconds in the query` (CSV).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Final

import duckdb
import yaml

WINDOW_MS: Final = {"1m": 60_000, "15m": 900_000, "1h": 3_600_000}
DOWN_STATES: Final = ("down", "idle", "changeover")
COUNTER_SIGNALS: Final = ("total_count", "reject_count")

# Columns of the output, in order: what `bench/peers.py` compares with LinePulse's records.
COLUMNS: Final = (
    "machine",
    "window_start_ms",
    "planned_s",
    "run_s",
    "downtime_s",
    "unknown_s",
    "total_count",
    "reject_count",
    "good_count",
    "availability",
    "performance",
    "quality",
    "oee",
)

# $w: the window length in ms. `events` is a view of (t BIGINT epoch ms, machine, signal,
# value VARCHAR, reason VARCHAR); `machines` a table of (machine, ict) ideal cycle times.
OEE_SQL: Final = """
WITH
high AS (SELECT max(t) AS t_high FROM events),
states AS (
    SELECT machine, value AS state, t,
        coalesce(
            lead(t) OVER (PARTITION BY machine ORDER BY t, value, reason),
            (SELECT t_high FROM high)
        ) AS t_end
    FROM events
    WHERE signal = 'state'
),
pieces AS (  -- each state interval, once per window it overlaps
    SELECT machine, state, t, t_end, unnest(range(t // $w, (t_end - 1) // $w + 1)) AS w
    FROM states
    WHERE t_end > t
),
state_time AS (
    SELECT machine, w * $w AS ws,
        sum(least(t_end, (w + 1) * $w) - greatest(t, w * $w))
            FILTER (WHERE state = 'running') AS run_ms,
        sum(least(t_end, (w + 1) * $w) - greatest(t, w * $w))
            FILTER (WHERE state IN ('down', 'idle', 'changeover')) AS down_ms
    FROM pieces
    GROUP BY ALL
),
counters AS (
    SELECT machine, signal, t, v,
        lag(v) OVER (PARTITION BY machine, signal ORDER BY t, v) AS prev
    FROM (
        SELECT machine, signal, t, try_cast(value AS DOUBLE) AS v
        FROM events
        WHERE signal IN ('total_count', 'reject_count')
    )
    WHERE v IS NOT NULL
),
counts AS (
    SELECT machine, t // $w * $w AS ws,
        sum(CASE WHEN prev IS NULL THEN 0 WHEN v >= prev THEN v - prev ELSE v END)
            FILTER (WHERE signal = 'total_count') AS total,
        sum(CASE WHEN prev IS NULL THEN 0 WHEN v >= prev THEN v - prev ELSE v END)
            FILTER (WHERE signal = 'reject_count') AS rejects
    FROM counters
    GROUP BY ALL
),
joined AS (
    SELECT machine, ws,
        $w / 1000.0 AS planned_s,
        coalesce(run_ms, 0) / 1000.0 AS run_s,
        coalesce(down_ms, 0) / 1000.0 AS downtime_s,
        coalesce(total, 0) AS total_count,
        coalesce(rejects, 0) AS reject_count,
        ict
    FROM state_time FULL OUTER JOIN counts USING (machine, ws)
    JOIN machines USING (machine)
),
ratios AS (
    SELECT *,
        total_count - reject_count AS good_count,
        run_s / nullif(planned_s, 0) AS availability,
        ict * total_count / nullif(run_s, 0) AS performance,
        (total_count - reject_count) / nullif(total_count, 0) AS quality
    FROM joined
)
SELECT machine, ws AS window_start_ms, planned_s, run_s, downtime_s,
    planned_s - run_s - downtime_s AS unknown_s,
    total_count, reject_count, good_count, availability, performance, quality,
    -- = availability x performance x quality wherever all three are defined, and 0, not
    -- null, when the machine did not run at all (docs/kpi.md's KPI record)
    good_count * ict / nullif(planned_s, 0) AS oee
FROM ratios
ORDER BY machine, window_start_ms
"""


EVENTS_VIEW: Final = (
    "CREATE OR REPLACE TEMP VIEW events AS SELECT {t} AS t, machine, signal, "
    "CAST(value AS VARCHAR) AS value, CAST(reason AS VARCHAR) AS reason FROM raw_events"
)
JSON_TS: Final = "coalesce(try_cast(ts AS BIGINT), epoch_ms(CAST(ts AS TIMESTAMPTZ)))"


def ideal_cycle_times(config: Path) -> dict[str, float]:
    """machine id -> ideal_cycle_time_s (seconds per part), from the plant YAML."""
    plant: dict[str, Any] = yaml.safe_load(config.read_text("utf-8"))
    return {
        str(m["id"]): float(m["ideal_cycle_time_s"])
        for line in plant.get("lines", [])
        for m in line.get("machines", [])
        if m.get("ideal_cycle_time_s") is not None
    }


def _register_events(con: duckdb.DuckDBPyConnection, events: Path) -> None:
    """The file as a view `events` of (t, machine, signal, value, reason), t in epoch ms."""
    if events.suffix == ".parquet":
        con.read_parquet(str(events)).create_view("raw_events")
        con.execute(EVENTS_VIEW.format(t="epoch_ms(ts)"))
        return
    # JSON lines: `ts` is RFC 3339 text or epoch ms, `value` a number or a word.
    text = dict.fromkeys(["ts", "machine", "signal", "value", "reason"], "VARCHAR")
    con.read_json(str(events), format="newline_delimited", columns=text).create_view("raw_events")
    con.execute(EVENTS_VIEW.format(t=JSON_TS))


def windowed_oee(
    con: duckdb.DuckDBPyConnection, events: Path, machines: dict[str, float], window: str
) -> duckdb.DuckDBPyRelation:
    """The query's result as a relation (columns `COLUMNS`)."""
    _register_events(con, events)
    con.execute("CREATE OR REPLACE TEMP TABLE machines (machine VARCHAR, ict DOUBLE)")
    con.executemany("INSERT INTO machines VALUES (?, ?)", list(machines.items()))
    return con.sql(OEE_SQL, params={"w": WINDOW_MS[window]})


def run(events: Path, config: Path, window: str, output: Path) -> tuple[int, float]:
    """Write the windowed OEE of `events` to `output` (Parquet); return (rows, seconds)."""
    started = time.perf_counter()
    con = duckdb.connect()
    try:
        relation = windowed_oee(con, events, ideal_cycle_times(config), window)
        relation.write_parquet(str(output))
        rows = con.read_parquet(str(output)).shape[0]
    finally:
        con.close()
    return rows, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer_duckdb_sql",
        description="Per-machine windowed OEE over a telemetry file, in DuckDB SQL only.",
    )
    parser.add_argument("events", type=Path, help="telemetry events: .parquet or .jsonl")
    parser.add_argument("--config", type=Path, required=True, help="plant YAML")
    parser.add_argument("--window", choices=sorted(WINDOW_MS), default="1m", help="default: 1m")
    parser.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    args = parser.parse_args(argv)
    rows, seconds = run(args.events, args.config, args.window, args.output)
    print(f"{rows},{args.window},{seconds:.3f}")


if __name__ == "__main__":
    main()
