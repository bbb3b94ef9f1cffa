"""KPI fields from window sums: the definitions of DESIGN.md, as Polars expressions.

Every field of a KPI record is a function of sums, so one set of expressions serves a
machine and a line (whose sums are the sums of its machines). A ratio whose denominator
is zero is null, never 0.

- availability = run / planned                     (ISO 22400-2: APT / PBT)
- performance  = Σ(ideal cycle time × parts) / run (not capped; > 1 means the ideal is wrong)
- quality      = good / total
- oee          = availability × performance × quality; 0 when planned time had no run or
                 no part (good × ideal / planned = 0), null when planned time is 0 or a
                 part has no ideal cycle time
- mtbf = run / stops, mttr = downtime / stops
"""

from __future__ import annotations

import polars as pl

# Window sums in integer ms / µs / parts; all are additive over minutes and machines.
SUM_COLUMNS = [
    "cal_ms",  # calendar planned time: in a shift, not in a break
    "run_ms",
    "idle_ms",
    "down_ms",
    "changeover_ms",
    "pstop_ms",  # planned_stop inside calendar planned time
    "stops",
    "total_count",
    "good_count",
    "reject_count",
    "ideal_us",  # Σ ideal cycle time × parts, µs
    "noideal",  # parts without an ideal cycle time
]


def machine_counts(has_t: pl.Expr, has_g: pl.Expr, has_r: pl.Expr) -> list[pl.Expr]:
    """Counts from whichever counters a machine has (DESIGN.md: good = total - reject, ...)."""
    total = pl.when(has_t).then(pl.col("T")).otherwise(pl.col("G") + pl.col("R"))
    reject = (
        pl.when(has_r)
        .then(pl.col("R"))
        .when(has_t & has_g)
        .then(pl.col("T") - pl.col("G"))
        .otherwise(0)
    )
    ideal = pl.when(has_t).then(pl.col("iT")).otherwise(pl.col("iG") + pl.col("iR"))
    noideal = pl.when(has_t).then(pl.col("uT")).otherwise(pl.col("uG") + pl.col("uR"))
    return [
        total.alias("total_count"),
        reject.alias("reject_count"),
        (total - reject).alias("good_count"),
        ideal.alias("ideal_us"),
        noideal.alias("noideal"),
    ]


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    return pl.when(den > 0).then(num / den).otherwise(None)


def kpi_fields() -> list[pl.Expr]:
    """The record's time, count and ratio fields from `SUM_COLUMNS`."""
    down_ms = pl.col("idle_ms") + pl.col("down_ms") + pl.col("changeover_ms")
    planned_ms = pl.col("cal_ms") - pl.col("pstop_ms")
    run_s = pl.col("run_ms") / 1000
    planned_s = planned_ms / 1000
    downtime_s = down_ms / 1000
    total, good = pl.col("total_count"), pl.col("good_count")
    ideal_s = pl.col("ideal_us") / 1e6
    known = pl.col("noideal") == 0
    availability = _ratio(run_s, planned_s)
    performance = pl.when(known).then(_ratio(ideal_s, run_s))
    quality = _ratio(good.cast(pl.Float64), total.cast(pl.Float64))
    oee = (
        pl.when((planned_ms <= 0) | ~known)
        .then(None)
        .when((pl.col("run_ms") <= 0) | (total <= 0))
        .then(0.0)
        .otherwise(availability * performance * quality)
    )
    stops = pl.col("stops").cast(pl.Float64)
    return [
        planned_s.alias("planned_s"),
        run_s.alias("run_s"),
        downtime_s.alias("downtime_s"),
        ((planned_ms - pl.col("run_ms") - down_ms) / 1000).alias("unknown_s"),
        pl.col("stops"),
        total,
        good,
        pl.col("reject_count"),
        availability.alias("availability"),
        performance.alias("performance"),
        quality.alias("quality"),
        oee.alias("oee"),
        _ratio(run_s, stops).alias("mtbf_s"),
        _ratio(downtime_s, stops).alias("mttr_s"),
    ]
