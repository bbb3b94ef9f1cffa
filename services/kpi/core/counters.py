"""Parts from cumulative counters, per minute, with the ideal time they stand for.

DESIGN.md: the count in a window is the sum of the positive steps between consecutive
good samples; a step down is a reset (the new value counts from zero) or, where the
config gives the counter's maximum, a rollover (max - prev + 1 + new). The first sample
of a machine only sets the baseline, so a duplicated or replayed sample adds nothing.
A count belongs to the minute of the sample that shows it.

Each part also carries its ideal cycle time, in integer microseconds so that sums stay
exact under any batching: from the latest `ideal_cycle_time_s` sample or product change
before it (the product's configured time), else the machine's configured time.
"""

from __future__ import annotations

import polars as pl

from linepulse.config import COUNTER_SIGNALS
from services.kpi.core.calendar import MINUTE_MS
from services.kpi.core.samples import PlantIndex
from services.kpi.core.states import _from_dirty

# Per counter c in (T, G, R): parts (`c`), ideal µs (`i<c>`), parts with no ideal (`u<c>`).
SHORT = {"total_count": "T", "good_count": "G", "reject_count": "R"}
COUNT_COLUMNS = [f"{p}{s}" for s in SHORT.values() for p in ("", "i", "u")]


def _ideal_times(samples: pl.DataFrame, index: PlantIndex) -> pl.DataFrame:
    """Ideal cycle time changes per machine: (machine, ts, ict_us), sorted by ts."""
    changes = samples.filter(pl.col("signal").is_in(["product", "ideal_cycle_time_s"]))
    changes = changes.join(
        index.products.rename({"product": "text"}), on=["machine", "text"], how="left"
    ).join(index.machines.select("machine", "ict_us"), on="machine", how="left")
    ict = (
        pl.when(pl.col("signal") == "ideal_cycle_time_s")
        .then((pl.col("num") * 1e6).round().cast(pl.Int64))
        .otherwise(pl.coalesce("p_ict_us", "ict_us"))
    )
    return (
        changes.select("machine", "ts", pl.col("text").fill_null(""), ict.alias("change_ict_us"))
        .sort("ts", "machine", "change_ict_us", "text", nulls_last=True)
        .select("machine", "ts", "change_ict_us")
    )


def increments() -> pl.Expr:
    """Parts shown by each sample of a (machine, signal)-sorted counter sequence."""
    prev = pl.col("num").shift(1).over("machine", "signal")
    return (
        pl.when(prev.is_null())
        .then(0.0)
        .when(pl.col("num") >= prev)
        .then(pl.col("num") - prev)
        .when(pl.col("cmax").is_not_null())
        .then(pl.col("cmax") - prev + 1 + pl.col("num"))
        .otherwise(pl.col("num"))
        .cast(pl.Int64)
    )


def counter_minutes(samples: pl.DataFrame, dirty: pl.DataFrame, index: PlantIndex) -> pl.DataFrame:
    """Per (machine, minute) from each machine's dirty `from`: parts and ideal µs per counter."""
    counters = samples.filter(pl.col("signal").is_in(COUNTER_SIGNALS))
    seq = _from_dirty(counters, dirty, ["machine", "signal", "ts", "num"]).join(
        index.counter_max, on=["machine", "signal"], how="left"
    )
    seq = seq.with_columns(increments().alias("inc")).filter(pl.col("ts") >= pl.col("from"))
    machines = seq.get_column("machine").unique()
    changes = _ideal_times(samples.filter(pl.col("machine").is_in(machines.implode())), index)
    # An unconfigured product falls back to the machine's time, so coalesce is exact.
    if changes.height:
        seq = seq.sort("ts").join_asof(changes, on="ts", by="machine", check_sortedness=False)
    else:
        seq = seq.with_columns(pl.lit(None, pl.Int64).alias("change_ict_us"))
    seq = seq.join(index.machines.select("machine", "ict_us"), on="machine", how="left")
    seq = seq.with_columns(pl.coalesce("change_ict_us", "ict_us").alias("ict"))
    aggs = []
    for signal, short in SHORT.items():
        mine = pl.col("signal") == signal
        aggs += [
            pl.col("inc").filter(mine).sum().alias(short),
            (pl.col("inc") * pl.col("ict")).filter(mine).sum().alias(f"i{short}"),
            pl.col("inc").filter(mine & pl.col("ict").is_null()).sum().alias(f"u{short}"),
        ]
    return seq.group_by("machine", (pl.col("ts") - pl.col("ts") % MINUTE_MS).alias("minute")).agg(
        aggs
    )
