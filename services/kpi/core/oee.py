"""KPI fields from window sums: the definitions of docs/kpi.md, as Polars expressions.

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

- coverage     = (planned - unknown) / planned: how much of the planned time the numbers
                 rest on (null when planned time is 0)

Beyond OEE (README "KPI definitions"): run time includes small stops (stops shorter than
the machine's threshold), so A x P x Q still multiply to good x ideal / planned; the six
big losses, the time with no data (`no_data_s`, its own loss: a machine that sent nothing
did not fail) and the fully productive time (ideal time of the good parts) sum to planned
time exactly, by construction from the same integer sums.
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
    "small_ms",  # down/idle time of small stops (performance, not availability)
    "stops",
    "small_stops",
    "failures",
    "total_count",
    "good_count",
    "reject_count",
    "ideal_us",  # Σ ideal cycle time × parts, µs
    "noideal",  # parts without an ideal cycle time
    "reject_ideal_us",  # Σ ideal cycle time × rejected parts, µs
    "startup_reject_ideal_us",  # the same for rejects made in a start-up period
    "rework_count",
    "rework_machines",  # machines with a rework counter (0: rework is unknown)
]


def machine_counts(
    has_t: pl.Expr, has_g: pl.Expr, has_r: pl.Expr, has_w: pl.Expr | None = None
) -> list[pl.Expr]:
    """Counts from whichever counters a machine has (docs/kpi.md: good = total - reject, ...)."""
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
    counts = [
        total.alias("total_count"),
        reject.alias("reject_count"),
        (total - reject).alias("good_count"),
        ideal.alias("ideal_us"),
        noideal.alias("noideal"),
    ]
    if has_w is None:
        return counts

    def rejected(prefix: str) -> pl.Expr:
        return (
            pl.when(has_r)
            .then(pl.col(f"{prefix}R"))
            .when(has_t & has_g)
            .then(pl.col(f"{prefix}T") - pl.col(f"{prefix}G"))
            .otherwise(0)
        )

    return [
        *counts,
        rejected("i").alias("reject_ideal_us"),
        rejected("s").alias("startup_reject_ideal_us"),
        pl.when(has_w).then(pl.col("W")).otherwise(0).alias("rework_count"),
        has_w.cast(pl.Int64).alias("rework_machines"),
    ]


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    return pl.when(den > 0).then(num / den).otherwise(None)


def kpi_fields() -> list[pl.Expr]:
    """The record's time, count and ratio fields from `SUM_COLUMNS`, `calendar_ms` (the
    window's length) and `machine_calendar_ms` (that length summed over the machines)."""
    down_ms = pl.col("idle_ms") + pl.col("down_ms") + pl.col("changeover_ms")
    planned_ms = pl.col("cal_ms") - pl.col("pstop_ms")
    run_ms = pl.col("run_ms") + pl.col("small_ms")  # operating time: small stops included
    run_s = run_ms / 1000
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
        .when((run_ms <= 0) | (total <= 0))
        .then(0.0)
        .otherwise(availability * performance * quality)
    )
    stops = pl.col("stops").cast(pl.Float64)
    setup_s = pl.col("changeover_ms") / 1000
    down_s = pl.col("down_ms") / 1000
    calendar_s = pl.col("calendar_ms") / 1000
    has_rework = pl.col("rework_machines") > 0
    rework = pl.when(has_rework).then(pl.col("rework_count"))
    totalf = total.cast(pl.Float64)
    unknown_ms = planned_ms - run_ms - down_ms
    fully_productive_us = pl.col("ideal_us") - pl.col("reject_ideal_us")
    losses = {
        "equipment_failure_s": (pl.col("down_ms") + pl.col("idle_ms")) / 1000,
        "setup_s": setup_s,
        "small_stops_s": pl.col("small_ms") / 1000,
        "slow_cycles_s": pl.col("run_ms") / 1000 - ideal_s,  # small stops apart
        "startup_rejects_s": pl.col("startup_reject_ideal_us") / 1e6,
        "production_rejects_s": (pl.col("reject_ideal_us") - pl.col("startup_reject_ideal_us"))
        / 1e6,
        "no_data_s": unknown_ms / 1000,
    }
    return [
        planned_s.alias("planned_s"),
        run_s.alias("run_s"),
        downtime_s.alias("downtime_s"),
        (unknown_ms / 1000).alias("unknown_s"),
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
        # -- beyond OEE, in linepulse.records order
        _ratio(planned_ms - unknown_ms, planned_ms).alias("coverage"),
        calendar_s.alias("calendar_s"),
        down_s.alias("down_s"),
        (pl.col("idle_ms") / 1000).alias("idle_s"),
        setup_s.alias("setup_s"),
        pl.col("small_stops"),
        (pl.col("small_ms") / 1000).alias("small_stop_s"),
        pl.col("failures"),
        rework.alias("rework_count"),
        performance.alias("effectiveness"),
        _ratio(run_s, run_s + down_s).alias("technical_efficiency"),
        _ratio(setup_s, run_s + setup_s).alias("setup_rate"),
        (oee * _ratio(planned_s, planned_s - setup_s)).alias("nee"),
        # Σ planned over Σ calendar time of the same machines (one machine: its window).
        (oee * _ratio(planned_s, pl.col("machine_calendar_ms") / 1000)).alias("teep"),
        _ratio(totalf * 3600, planned_s).alias("throughput_per_h"),
        _ratio(pl.col("reject_count").cast(pl.Float64), totalf).alias("scrap_ratio"),
        _ratio(rework.cast(pl.Float64), totalf).alias("rework_ratio"),
        _ratio((good - pl.col("rework_count")).cast(pl.Float64), totalf).alias("first_pass_yield"),
        _ratio(run_s, pl.col("failures").cast(pl.Float64)).alias("mttf_s"),
        pl.when(known).then(fully_productive_us / 1e6).alias("fully_productive_s"),
        *(pl.when(known).then(expr).alias(f"loss_{name}") for name, expr in losses.items()),
    ]
