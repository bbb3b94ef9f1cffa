"""The state step function, cut into minutes: time per state, stops, downtime reasons.

A machine is in the state of its latest `state` sample until the next one; before its
first it is `unknown` (no atoms at all: the residual of planned time). The last state
holds up to `high`, the highest event time seen, and no further. Samples are ordered by
(time, state, reason), so equal timestamps resolve the same way whatever the arrival
order. A stop is a transition from `running` straight into `down`, `idle` or
`changeover`; it belongs to the minute of the transition.
"""

from __future__ import annotations

import polars as pl

from linepulse.config import DOWNTIME_STATES
from services.kpi.core.calendar import MINUTE_MS

# Milliseconds per state column in a minute atom. `unknown` has none: unknown time is
# what planned time leaves over.
STATE_COLUMNS = {
    "running": "run_ms",
    "idle": "idle_ms",
    "down": "down_ms",
    "changeover": "changeover_ms",
    "planned_stop": "pstop_ms",
}
UNASSIGNED = "unassigned"


def _from_dirty(samples: pl.DataFrame, dirty: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """Samples at or after each machine's `from`, plus the last one before it (the baseline).

    `order` is the full sort key; its leading columns up to `ts` group a sequence.
    """
    keys = order[: order.index("ts")]
    joined = samples.join(dirty, on="machine", how="inner")
    before = joined.filter(pl.col("ts") < pl.col("from"))
    # Only rows at the latest time of their group can be its last: sort just those.
    before = before.filter(pl.col("ts") == pl.col("ts").max().over(keys))
    baseline = before.sort(order, nulls_last=True).group_by(keys, maintain_order=True).last()
    current = joined.filter(pl.col("ts") >= pl.col("from"))
    return pl.concat([baseline.select(current.columns), current]).sort(order, nulls_last=True)


def state_minutes(
    states: pl.DataFrame, dirty: pl.DataFrame, high: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per (machine, minute) from each machine's dirty `from`: ms per state and stops.

    Returns (atoms, reasons); reasons are ms of downtime states per (machine, minute, reason).
    """
    seq = _from_dirty(states, dirty, ["machine", "ts", "text", "reason"]).with_columns(
        pl.col("ts").shift(-1).over("machine").fill_null(high).alias("next"),
        pl.col("text").shift(1).over("machine").alias("prev"),
    )
    stops = (
        seq.filter(
            (pl.col("ts") >= pl.col("from"))
            & (pl.col("prev") == "running")
            & pl.col("text").is_in(sorted(DOWNTIME_STATES))
        )
        .group_by("machine", (pl.col("ts") - pl.col("ts") % MINUTE_MS).alias("minute"))
        .agg(pl.len().cast(pl.Int64).alias("stops"))
    )
    begin = pl.max_horizontal("ts", "from")
    pieces = (
        seq.with_columns(begin.alias("a"), pl.col("next").alias("b"))
        .filter((pl.col("b") > pl.col("a")) & pl.col("text").is_in(list(STATE_COLUMNS)))
        .with_columns(
            pl.int_ranges(
                pl.col("a") - pl.col("a") % MINUTE_MS,
                pl.col("b"),
                MINUTE_MS,
            ).alias("minute")
        )
        .explode("minute")
        .with_columns(
            (
                pl.min_horizontal("b", pl.col("minute") + MINUTE_MS)
                - pl.max_horizontal("a", "minute")
            ).alias("ms")
        )
    )
    atoms = (
        pieces.group_by("machine", "minute")
        .agg(
            pl.col("ms").filter(pl.col("text") == state).sum().alias(column)
            for state, column in STATE_COLUMNS.items()
        )
        .join(stops, on=["machine", "minute"], how="full", coalesce=True)
    )
    reasons = (
        pieces.filter(pl.col("text").is_in(sorted(DOWNTIME_STATES)))
        .group_by("machine", "minute", pl.col("reason").fill_null(UNASSIGNED))
        .agg(pl.col("ms").sum())
    )
    return atoms, reasons
