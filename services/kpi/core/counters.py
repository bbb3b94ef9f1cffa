"""Parts from cumulative counters, per minute, with the ideal time they stand for.

docs/kpi.md: the count in a window is the sum of the increments between consecutive good
samples (prev at t_prev, cur at t_cur): `cur - prev` when cur >= prev; when cur < prev the
rollover `max - prev + 1 + cur` where the config gives the counter's maximum and that is
plausible, else a reset counting `cur`. An increment is implausible when it exceeds
`rate_per_s x (t_cur - t_prev) + burst` (from the machine's fastest ideal cycle time and
`max_rate_factor`, or `max_rate_per_s`; `max_burst`): PLC restarts, uninitialised zeros and
one-sample spikes are not production. It is not counted, `cur` becomes the baseline, and
the jump is reported. The first sample of a machine only sets the baseline, so a
duplicated or replayed sample adds nothing. A count belongs to the minute of the sample
that shows it. Readings are exact 64-bit integers.

Each part also carries its ideal cycle time, in integer microseconds so that sums stay
exact under any batching: from the latest `ideal_cycle_time_s` sample or product change
before it (the product's configured time), else the machine's configured time.
"""

from __future__ import annotations

import polars as pl

from linepulse.calendar import MINUTE_MS, Calendar
from services.kpi.core.samples import CUMULATIVE_SIGNALS, REWORK, PlantIndex
from services.kpi.core.states import _from_dirty

# Per counter c in (T, G, R): parts (`c`), ideal µs (`i<c>`), parts with no ideal (`u<c>`),
# ideal µs of parts made in a start-up period (`s<c>`); `W` is reworked parts.
SHORT = {"total_count": "T", "good_count": "G", "reject_count": "R"}
PRODUCT_COUNT_COLUMNS = [f"{p}{s}" for s in SHORT.values() for p in ("", "i", "u")]
COUNT_COLUMNS = [*PRODUCT_COUNT_COLUMNS, *(f"s{s}" for s in SHORT.values()), "W"]


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


def increments(seq: pl.DataFrame) -> pl.DataFrame:
    """Parts shown by each sample of a (machine, signal, ts)-sorted counter sequence
    (`inc`), and the implausible increment it replaced (`jump`, null where plausible).

    Needs `count`, `cmax` (the counter's maximum or null), `rate_per_s` and `burst`. The
    rows are sorted, so the previous sample of a sequence is the previous row where the
    (machine, signal) is the same: a plain shift, cheaper than a window over groups.
    """
    same = (pl.col("machine") == pl.col("machine").shift(1)) & (
        pl.col("signal") == pl.col("signal").shift(1)
    )
    seq = seq.with_columns(
        pl.when(same).then(pl.col("count").shift(1)).alias("prev"),
        pl.when(same).then(pl.col("ts") - pl.col("ts").shift(1)).alias("since_ms"),
    )
    prev, cur = pl.col("prev"), pl.col("count")
    # What a limit allows after the time since the previous sample (null: no limit).
    allowed = pl.col("rate_per_s") * pl.col("since_ms") / 1000 + pl.col("burst")

    def plausible(step: pl.Expr) -> pl.Expr:
        return allowed.is_null() | (step.cast(pl.Float64) <= allowed)

    rollover = pl.col("cmax") - prev + 1 + cur
    raw = (
        pl.when(prev.is_null())
        .then(0)
        .when(cur >= prev)
        .then(cur - prev)
        .when(pl.col("cmax").is_not_null() & plausible(rollover))
        .then(rollover)
        .otherwise(cur)
    )
    seq = seq.with_columns(raw.alias("raw"))
    ok = prev.is_null() | plausible(pl.col("raw"))  # a first sample only sets the baseline
    return seq.with_columns(
        pl.when(ok).then(pl.col("raw")).otherwise(0).cast(pl.Int64).alias("inc"),
        pl.when(ok).then(None).otherwise(pl.col("raw")).cast(pl.Int64).alias("jump"),
    )


JUMP_SCHEMA = pl.Schema(
    {
        "machine": pl.String,
        "ts": pl.Int64,
        "signal": pl.String,
        "count": pl.Int64,
        "reason": pl.String,
    }
)


def _jumps(seq: pl.DataFrame) -> pl.DataFrame:
    """The implausible increments of a recomputed sequence, as reasons to report (rare:
    the reasons are written in Python, one per jump)."""
    found = seq.filter(pl.col("jump").is_not_null())
    rows = [
        (
            str(machine),
            ts,
            str(signal),
            count,
            f"implausible counter jump: {signal} from {prev} to {count} would count {jump} "
            "parts; not counted, taken as the new baseline",
        )
        for machine, ts, signal, count, prev, jump in found.select(
            "machine", "ts", "signal", "count", "prev", "jump"
        ).iter_rows()
    ]
    return pl.DataFrame(rows, schema=JUMP_SCHEMA, orient="row")


def _startup_anchors(
    samples: pl.DataFrame, dirty: pl.DataFrame, index: PlantIndex, calendar: Calendar, hi: int
) -> pl.DataFrame:
    """When each machine's start-up periods begin: changeover ends and shift starts."""
    starts = dirty.join(index.machines.select("machine", "line", "startup_ms"), on="machine")
    starts = starts.filter(pl.col("startup_ms") > 0)
    states = samples.filter(pl.col("signal") == "state")
    look = starts.select("machine", (pl.col("from") - pl.col("startup_ms")).alias("from"))
    seq = _from_dirty(states, look, ["machine", "ts", "text", "reason"])
    ends = seq.filter(
        (pl.col("text").shift(1).over("machine") == "changeover") & (pl.col("text") != "changeover")
    ).select("machine", "ts")
    rows: list[tuple[str, int]] = []
    for machine, line, lo, startup in starts.select(
        "machine", "line", "from", "startup_ms"
    ).iter_rows():
        rows.extend((machine, span.start) for span in calendar.spans(line, lo - startup, hi + 1))
    shifts = pl.DataFrame(
        rows, schema={"machine": index.machine_type, "ts": pl.Int64}, orient="row"
    )
    return pl.concat([ends, shifts]).unique().sort("ts")


def _marked(seq: pl.DataFrame, marks: pl.DataFrame, index: PlantIndex) -> pl.DataFrame:
    """`ts`-sorted counter samples with the ideal time changed last before each
    (`change_ict_us`) and the product then made (`product`), null where none came yet."""
    changes = _ideal_times(marks, index)
    # An unconfigured product falls back to the machine's time, so coalesce is exact.
    if changes.height:
        seq = seq.join_asof(changes, on="ts", by="machine", check_sortedness=False)
    else:
        seq = seq.with_columns(pl.lit(None, pl.Int64).alias("change_ict_us"))
    products = (
        marks.filter(pl.col("signal") == "product")
        .sort("ts", "machine", "text")
        .select("machine", "ts", pl.col("text").alias("product"))
    )
    if products.height:
        return seq.join_asof(products, on="ts", by="machine", check_sortedness=False)
    return seq.with_columns(pl.lit(None, pl.String).alias("product"))


def counter_minutes(
    samples: pl.DataFrame, dirty: pl.DataFrame, index: PlantIndex, calendar: Calendar
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per (machine, minute) from each machine's dirty `from`: parts and ideal µs per counter.

    Returns (atoms, products, jumps): products are the T/G/R columns per (machine, minute,
    product), the product being the latest `product` sample before the part; jumps the
    implausible increments of the recomputed samples (`JUMP_SCHEMA`).
    """
    order = ["machine", "signal", "ts", "count"]
    counters = samples.filter(pl.col("signal").is_in(CUMULATIVE_SIGNALS)).select(order)
    seq = _from_dirty(counters, dirty, order).join(
        index.counters, on=["machine", "signal"], how="left", maintain_order="left"
    )
    seq = increments(seq).filter(pl.col("ts") >= pl.col("from"))
    jumps = _jumps(seq)
    # Product and ideal-time samples are few (most plants send none): pick them out before
    # asking which machine, and skip the as-of joins without them.
    marks = samples.filter(pl.col("signal").is_in(["product", "ideal_cycle_time_s"]))
    if marks.height:
        machines = seq.get_column("machine").unique()
        marks = marks.filter(pl.col("machine").is_in(machines.implode()))
    if marks.height:
        seq = _marked(seq.sort("ts"), marks, index)  # as-of joins need `ts` order; sums do not
    else:
        seq = seq.with_columns(
            pl.lit(None, pl.Int64).alias("change_ict_us"), pl.lit(None, pl.String).alias("product")
        )
    seq = seq.join(
        index.machines.select("machine", "ict_us", "startup_ms"),
        on="machine",
        maintain_order="left",
    )
    seq = seq.with_columns(pl.coalesce("change_ict_us", "ict_us").alias("ict"))
    if seq.height and index.lookback_ms and seq.select((pl.col("startup_ms") > 0).any()).item():
        hi = int(seq.get_column("ts").max())  # type: ignore[arg-type]
        anchors = _startup_anchors(samples, dirty, index, calendar, hi)
        seq = seq if marks.height else seq.sort("ts")  # sorted above when marks came
        seq = seq.join_asof(
            anchors.rename({"ts": "anchor"}),
            left_on="ts",
            right_on="anchor",
            by="machine",
            check_sortedness=False,
        )
        startup = (pl.col("ts") - pl.col("anchor") < pl.col("startup_ms")).fill_null(False)
    else:
        startup = pl.lit(False)
    seq = seq.with_columns(startup.alias("startup"))
    minute = (pl.col("ts") - pl.col("ts") % MINUTE_MS).alias("minute")
    atoms = _summed(
        seq.select("machine", minute, *_parts(with_startup=True)), ["machine", "minute"]
    )
    made = seq.filter(pl.col("product").is_not_null() & (pl.col("signal") != REWORK))
    product_atoms = _summed(
        made.select("machine", minute, "product", *_parts(with_startup=False)),
        ["machine", "minute", "product"],
    )
    return atoms, product_atoms, jumps


def _parts(*, with_startup: bool) -> list[pl.Expr]:
    """Each sample's share of every count column (null where it has none), so that the
    group-by that follows only sums columns: its fast path, where a filter inside each
    aggregation runs per group."""
    parts = []
    for signal, short in SHORT.items():
        mine = pl.col("signal") == signal
        ideal = pl.col("inc") * pl.col("ict")
        parts += [
            pl.when(mine).then(pl.col("inc")).alias(short),
            pl.when(mine).then(ideal).alias(f"i{short}"),
            pl.when(mine & pl.col("ict").is_null()).then(pl.col("inc")).alias(f"u{short}"),
        ]
        if with_startup:
            parts.append(pl.when(mine & pl.col("startup")).then(ideal).alias(f"s{short}"))
    if with_startup:
        parts.append(pl.when(pl.col("signal") == REWORK).then(pl.col("inc")).alias("W"))
    return parts


def _summed(parts: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return parts.group_by(keys).agg(pl.exclude(keys).sum())
