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

from linepulse.calendar import MINUTE_MS
from linepulse.config import DOWNTIME_STATES
from linepulse.production import UNASSIGNED
from services.kpi.core.samples import PlantIndex

# Milliseconds per state column in a minute atom. `unknown` has none: unknown time is
# what planned time leaves over.
STATE_COLUMNS = {
    "running": "run_ms",
    "idle": "idle_ms",
    "down": "down_ms",
    "changeover": "changeover_ms",
    "planned_stop": "pstop_ms",
}
# Atom columns by piece kind: small stops are down/idle time of a short stop.
ATOM_STATE_COLUMNS = {**STATE_COLUMNS, "small": "small_ms"}
STOP_COLUMNS = ["stops", "small_stops", "failures"]


def _from_dirty(
    samples: pl.DataFrame, dirty: pl.DataFrame, order: list[str], start: str = "from"
) -> pl.DataFrame:
    """Samples at or after each machine's `start` (a column of `dirty`), plus the last one
    before it (the baseline), sorted by `order`; `dirty`'s columns come along.

    `order` is the full sort key; its leading columns up to `ts` group a sequence. After
    one sort a sequence's rows before `start` come first, so its baseline is the one whose
    next row is not before `start` or starts another sequence: a shift, not a group-by.
    """
    keys = order[: order.index("ts")]
    seq = samples.join(dirty, on="machine", how="inner").sort(order, nulls_last=True)
    before = pl.col("ts") < pl.col(start)
    same_next = pl.all_horizontal(pl.col(k) == pl.col(k).shift(-1) for k in keys)
    followed = same_next.fill_null(False) & before.shift(-1).fill_null(False)
    return seq.filter(~before | ~followed)


def _shifted(column: str, n: int, by: str = "machine") -> pl.Expr:
    """`column` `n` rows away within runs of equal `by` (null across a run's edge): on rows
    sorted by `by`, the same as `shift(n).over(by)` without a window's group-by."""
    same = pl.col(by) == pl.col(by).shift(n)
    return pl.when(same).then(pl.col(column).shift(n))


STATE_ORDER = ["machine", "ts", "text", "reason"]
# STATE_ORDER on the state and reason as sent, before corrections (`state_minutes`).
_RAW = ["_raw_text", "_raw_reason"]
RAW_ORDER = ["machine", "ts", *_RAW]


def segments() -> pl.Expr:
    """Per machine, a number that changes where the state or the reason changes (rows in
    `STATE_ORDER`)."""
    changed = (
        pl.col("text").ne_missing(pl.col("text").shift(1))
        | pl.col("reason").ne_missing(pl.col("reason").shift(1))
    ).over("machine")
    return changed.cum_sum().over("machine")


SMALL_STATES = ("down", "idle")  # a short stop in these is a small stop
PRODUCT_COLUMNS = ["run_ms"]  # state-side columns of product atoms


def corrected(states: pl.DataFrame, samples: pl.DataFrame, index: PlantIndex) -> pl.DataFrame:
    """States with operators' reason corrections applied, planned codes made planned.

    A `reason` sample re-codes the state sample of its machine at exactly its time; the
    highest correction number wins (then the code, so any arrival order agrees). A
    downtime state whose (corrected) reason is a planned code of the machine's reason
    tree counts as `planned_stop`.
    """
    fixes = samples.filter(pl.col("signal") == "reason")
    if fixes.height:
        fixes = (
            fixes.sort("machine", "ts", "num", "text", nulls_last=True)
            .group_by("machine", "ts", maintain_order=True)
            .last()
            .select("machine", "ts", pl.col("text").alias("fix"))
        )
        # A stop is a run of samples with one state and reason (machines repeat theirs):
        # a correction of its first sample holds until the state or reason changes.
        states = (
            states.sort(STATE_ORDER, nulls_last=True)
            .join(fixes, on=["machine", "ts"], how="left")
            .with_columns(segments().alias("_seg"))
            .with_columns(pl.col("fix").forward_fill().over("machine", "_seg"))
            .with_columns(pl.coalesce("fix", "reason").alias("reason"))
            .drop("fix", "_seg")
        )
    if index.planned_reasons.height:
        planned = index.planned_reasons.with_columns(pl.lit(True).alias("_planned"))
        states = states.join(planned, on=["machine", "reason"], how="left").with_columns(
            pl.when(pl.col("_planned").fill_null(False) & pl.col("text").is_in(DOWNTIME))
            .then(pl.lit("planned_stop"))
            .otherwise(pl.col("text"))
            .alias("text")
        )
        states = states.drop("_planned")
    return states


DOWNTIME = sorted(DOWNTIME_STATES)


def _classified(seq: pl.DataFrame, high: int, *, small_stops: bool) -> pl.DataFrame:
    """Each state sample with `next` (its end), `prev`, and whether it is a small stop.

    A small stop is a run of `down`/`idle` samples entered from `running` and shorter
    than the machine's `small_ms` (an open one counts as small until it is not).
    """
    in_stop = pl.col("text").is_in(SMALL_STATES)
    seq = seq.with_columns(
        _shifted("ts", -1).fill_null(high).alias("next"), _shifted("text", 1).alias("prev")
    )
    if not small_stops:  # no machine has a threshold
        return seq.with_columns(pl.lit(False).alias("small"))
    opens = in_stop & ~pl.col("prev").is_in(SMALL_STATES).fill_null(False)
    seq = seq.with_columns(pl.when(in_stop).then(opens.cum_sum().over("machine")).alias("_ep"))
    episode = ["machine", "_ep"]
    return seq.with_columns(
        (
            in_stop
            & (pl.col("prev").first().over(episode) == "running").fill_null(False)
            & (
                pl.col("next").last().over(episode) - pl.col("ts").first().over(episode)
                < pl.col("small_ms")
            )
        ).alias("small")
    ).drop("_ep")


def state_minutes(
    samples: pl.DataFrame, dirty: pl.DataFrame, high: int, index: PlantIndex
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per (machine, minute) from each machine's dirty `from`: ms per state and stops.

    Returns (atoms, reasons, products): reasons are ms of downtime per (machine, minute,
    reason); products are running ms (small stops included) per (machine, minute,
    product). States before `from` are read back to the machine's small-stop threshold,
    so a stop that straddles `from` is classified as a whole.
    """
    # Samples at one instant are ordered by what the machine sent (`RAW_ORDER`), not by
    # what corrections and planned codes make of it: the baselines the core keeps
    # between batches (`_last_per_signal`) are chosen in that order, and a correction
    # arriving later must not change which sample of an instant is the last.
    raw = samples.filter(pl.col("signal") == "state").with_columns(
        pl.col("text").alias("_raw_text"), pl.col("reason").alias("_raw_reason")
    )
    states = corrected(raw, samples, index)
    look = dirty.join(index.machines.select("machine", "small_ms"), on="machine").with_columns(
        (pl.col("from") - pl.col("small_ms")).alias("_look")
    )
    seq = _from_dirty(states.select(*STATE_ORDER, *_RAW), look, RAW_ORDER, start="_look")
    seq = _classified(seq.drop("_look", *_RAW), high, small_stops=index.lookback_ms > 0)
    downtime = pl.col("text").is_in(DOWNTIME)
    stop = (pl.col("ts") >= pl.col("from")) & (pl.col("prev") == "running") & downtime
    stops = (
        seq.filter(stop)
        .group_by("machine", (pl.col("ts") - pl.col("ts") % MINUTE_MS).alias("minute"))
        .agg(
            (~pl.col("small")).sum().cast(pl.Int64).alias("stops"),
            pl.col("small").sum().cast(pl.Int64).alias("small_stops"),
            ((pl.col("text") == "down") & ~pl.col("small")).sum().cast(pl.Int64).alias("failures"),
        )
    )
    products = samples.filter(pl.col("signal") == "product")
    if products.height:  # most plants have no product signal: skip the join then
        products = _from_dirty(products, dirty, ["machine", "ts", "text"])
    products = products.select("machine", "ts", pl.col("text").alias("product"))
    timeline = _timeline(seq, products, dirty, high)
    begin = pl.max_horizontal("ts", "from")
    pieces = (
        timeline.with_columns(begin.alias("a"), pl.col("next").alias("b"))
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
            ).alias("ms"),
            pl.when(pl.col("small")).then(pl.lit("small")).otherwise(pl.col("text")).alias("kind"),
        )
    )
    # One column per kind, then plain sums: a group-by's fast path, where a filter inside
    # each aggregation runs per group.
    atoms = (
        pieces.select(
            "machine",
            "minute",
            *(
                pl.when(pl.col("kind") == kind).then(pl.col("ms")).alias(column)
                for kind, column in ATOM_STATE_COLUMNS.items()
            ),
        )
        .group_by("machine", "minute")
        .agg(pl.col(ATOM_STATE_COLUMNS.values()).sum())
        .join(stops, on=["machine", "minute"], how="full", coalesce=True)
    )
    reasons = (
        pieces.filter(pl.col("kind").is_in(DOWNTIME))
        .group_by("machine", "minute", pl.col("reason").fill_null(UNASSIGNED))
        .agg(pl.col("ms").sum())
    )
    product_atoms = (
        pieces.filter(pl.col("kind").is_in(["running", "small"]) & pl.col("product").is_not_null())
        .group_by("machine", "minute", "product")
        .agg(pl.col("ms").sum().alias("run_ms"))
    )
    return atoms, reasons, product_atoms


def _timeline(
    seq: pl.DataFrame, products: pl.DataFrame, dirty: pl.DataFrame, high: int
) -> pl.DataFrame:
    """State segments cut again at product changes, each with the product then running."""
    # No nulls on state rows: the forward fill below must only fill the product marks.
    states = seq.select(
        "machine", "ts", "from", "text", pl.col("reason").fill_null(UNASSIGNED), "small"
    )
    if products.is_empty():  # the states' own ends (`_classified`) stand
        return states.with_columns(seq.get_column("next"), pl.lit(None, pl.String).alias("product"))
    marks = products.join(dirty, on="machine").select(
        "machine",
        "ts",
        "from",
        pl.lit(None, pl.String).alias("text"),
        pl.lit(None, pl.String).alias("reason"),
        pl.lit(None, pl.Boolean).alias("small"),
        "product",
    )
    # At one instant states come before product changes, so the last row of an instant
    # carries both the final state and the final product; earlier rows last 0 ms.
    merged = (
        pl.concat(
            [
                states.with_columns(
                    pl.lit(None, pl.String).alias("product"), pl.lit(0).alias("_k")
                ),
                marks.with_columns(pl.lit(1).alias("_k")),
            ],
            how="vertical_relaxed",
        )
        .sort("machine", "ts", "_k", maintain_order=True)
        .with_columns(
            pl.col("text", "reason", "small").forward_fill().over("machine"),
            pl.col("product").forward_fill().over("machine"),
        )
    )
    return merged.with_columns(_shifted("ts", -1).fill_null(high).alias("next")).drop("_k")
