"""From telemetry events to the samples the KPI core uses, with reasons for the rest.

The core keeps four kinds of signal: `state` (mapped to a LinePulse state through the
config's state maps), the cumulative counters, `product` and `ideal_cycle_time_s`.
Other tags (temperature, speed) are valid telemetry but carry no KPI. `bad`-quality
samples are ignored (docs/kpi.md); events for machines not in the config, or with values
the config cannot interpret, are rejected with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from linepulse.config import COUNTER_SIGNALS, MAX_COUNTER, STATES, PlantConfig

# `rework_count` is a cumulative counter outside the total/good/reject combination;
# `reason` re-codes the state sample at its exact time (an operator's correction).
REWORK = "rework_count"
CUMULATIVE_SIGNALS = (*COUNTER_SIGNALS, REWORK)
KPI_SIGNALS = ("state", *COUNTER_SIGNALS, "product", "ideal_cycle_time_s", REWORK, "reason")
# Machines and signals are Enums inside the core: sorts, joins and group-bys on them run
# on small integers, while values still read as names.
SIGNAL_TYPE = pl.Enum(KPI_SIGNALS)


def sample_schema(machine_type: pl.DataType) -> pl.Schema:
    """One row per usable sample. `count` holds counter readings (exact integers), `num`
    ideal cycle times and a correction's number; `text` the LinePulse state, the product
    or a correction's code."""
    return pl.Schema(
        {
            "machine": machine_type,
            "ts": pl.Int64(),
            "signal": SIGNAL_TYPE,
            "count": pl.Int64(),
            "num": pl.Float64(),
            "text": pl.String(),
            "reason": pl.String(),
        }
    )


REJECTED_SCHEMA = pl.Schema(
    {"ts": pl.Int64, "machine": pl.String, "signal": pl.String, "reason": pl.String}
)


@dataclass(frozen=True)
class PlantIndex:
    """The config, flattened into lookup frames once, for vectorised joins."""

    machine_type: pl.Enum
    machines: pl.DataFrame  # machine, line, ict_us, small_ms, startup_ms
    state_map: pl.DataFrame  # machine, source, mapped
    products: pl.DataFrame  # machine, product, p_ict_us
    # machine, signal (every cumulative counter), cmax (its maximum, or null), and the
    # machine's plausibility limit: rate_per_s (null: unchecked) and burst
    counters: pl.DataFrame
    line_machines: dict[str, tuple[str, ...]]
    declared_counters: dict[str, frozenset[str]]  # machines whose counters the config names
    planned_reasons: pl.DataFrame  # machine, reason: codes that make a stop planned time
    lookback_ms: int  # how far before a change small-stop and start-up classes can move

    @classmethod
    def build(cls, plant: PlantConfig) -> PlantIndex:
        machines: list[tuple[str, str, int | None, int, int]] = []
        counter_rows: list[tuple[str, str, int | None, float | None, int]] = []
        planned_rows: list[tuple[str, str]] = []
        state_rows: list[tuple[str, str, str]] = []
        product_rows: list[tuple[str, str, int]] = []
        for line in plant.lines:
            for m in line.machines:
                ict = None if m.ideal_cycle_time_s is None else round(m.ideal_cycle_time_s * 1e6)
                machines.append((m.id, line.id, ict, plant.small_stop_ms(m), plant.startup_ms(m)))
                limit = plant.counter_limit(m)
                counter_rows.extend(
                    (
                        m.id,
                        signal,
                        m.counter_max.get(signal),  # type: ignore[call-overload]
                        None if limit is None else limit.per_s,
                        0 if limit is None else limit.burst,
                    )
                    for signal in CUMULATIVE_SIGNALS
                )
                planned_rows.extend((m.id, code) for code in sorted(plant.planned_reasons(m)))
                state_rows.extend((m.id, k, v) for k, v in plant.state_map_for(m).items())
                product_rows.extend(
                    (m.id, name, round(p.ideal_cycle_time_s * 1e6))
                    for name, p in m.products.items()
                )
        machine_type = pl.Enum([m[0] for m in machines])
        return cls(
            machine_type=machine_type,
            machines=pl.DataFrame(
                machines,
                schema={
                    "machine": machine_type,
                    "line": pl.String,
                    "ict_us": pl.Int64,
                    "small_ms": pl.Int64,
                    "startup_ms": pl.Int64,
                },
                orient="row",
            ),
            state_map=pl.DataFrame(
                state_rows,
                schema={"machine": machine_type, "source": pl.String, "mapped": pl.String},
                orient="row",
            ),
            products=pl.DataFrame(
                product_rows,
                schema={"machine": machine_type, "product": pl.String, "p_ict_us": pl.Int64},
                orient="row",
            ),
            counters=pl.DataFrame(
                counter_rows,
                schema={
                    "machine": machine_type,
                    "signal": SIGNAL_TYPE,
                    "cmax": pl.Int64,
                    "rate_per_s": pl.Float64,
                    "burst": pl.Int64,
                },
                orient="row",
            ),
            line_machines={li.id: tuple(m.id for m in li.machines) for li in plant.lines},
            declared_counters={
                m.id: frozenset(m.counters)
                for li in plant.lines
                for m in li.machines
                if m.counters is not None
            },
            planned_reasons=pl.DataFrame(
                planned_rows, schema={"machine": machine_type, "reason": pl.String}, orient="row"
            ),
            lookback_ms=max((max(m[3], m[4]) for m in machines), default=0),
        )


@dataclass(frozen=True)
class Prepared:
    samples: pl.DataFrame
    rejected: pl.DataFrame
    bad_quality: int
    other_signals: int


def _num_as_text(num: pl.Expr) -> pl.Expr:
    # PackML state numbers and PLC enums arrive as numbers; map keys are their text. A
    # whole float beyond 64-bit integers keeps its float text: a null here would make the
    # reason for rejecting it null, and the reading pass as a sample.
    whole = pl.when(num == num.round()).then(num.cast(pl.Int64, strict=False).cast(pl.String))
    return pl.coalesce(whole, num.cast(pl.String))


def _quoted(text: pl.Expr) -> pl.Expr:
    # `format` is null when an argument is: a reason must never be (the event would pass).
    return pl.coalesce(pl.format("'{}'", text), pl.lit("(none)"))


def _as_text(whole: pl.Expr, real: pl.Expr) -> pl.Expr:
    """The reading as text (`source`): the text value, else the integer, else the float
    (a whole float without its `.0`)."""
    return pl.coalesce(pl.col("value_str"), whole.cast(pl.String), _num_as_text(real))


def prepare(events: pl.DataFrame, index: PlantIndex) -> Prepared:
    """Validate and normalise a batch of `EVENT_SCHEMA` events for the core; the samples
    keep the events' order (the core judges each against the watermark at its arrival).

    Most telemetry is other tags (analog signals), so the rows are sorted out first, with
    one Enum cast per column: a cast gives null where the name is not a configured machine
    or a KPI signal, so it is the membership test and the conversion in one hash lookup,
    and the kept rows are gathered with small integer columns instead of strings. Null
    names and quality fall out as they would under `is_in`/`==` (three-valued logic): no
    counts, no rejection.
    """
    named_machine = pl.col("machine").is_not_null()
    named_signal = pl.col("signal").is_not_null()
    usable = (pl.col("quality") != "bad").fill_null(False)
    machine = pl.col("machine").cast(index.machine_type, strict=False).alias("machine")
    signal = pl.col("signal").cast(SIGNAL_TYPE, strict=False).alias("signal")
    flags = events.select(
        (pl.col("quality") == "bad").alias("_bad"),
        (usable & named_machine).alias("_usable"),
        named_signal.alias("_named"),
        machine,
        signal,
    )
    known, kpi = pl.col("machine").is_not_null(), pl.col("signal").is_not_null()
    keep, unknown_rows = flags.select(
        (pl.col("_usable") & known & kpi).alias("keep"),
        (pl.col("_usable") & ~known).alias("unknown"),
    ).get_columns()
    bad_quality, other_signals = flags.select(
        pl.col("_bad").sum().alias("bad"),
        (pl.col("_usable") & known & ~kpi & pl.col("_named")).sum().alias("other"),
    ).row(0)
    unknown = events.filter(unknown_rows)
    values = [c for c in ("value_num", "value_int", "value_str") if c in events.columns]
    events = (
        events.select("ts", *values, "reason")
        .with_columns(flags.get_column("machine"), flags.get_column("signal"))
        .filter(keep)
    )

    # Values keep their source type (README "Telemetry events"): text is never read as a
    # number; integers stay exact (`value_int`), floats are `value_num`.
    whole = pl.col("value_int") if "value_int" in events.columns else pl.lit(None, pl.Int64)
    real = pl.col("value_num")
    # The reading as text is what states and products are; a counter needs it only to
    # say why it is rejected. Numbers to text is the costly part, and a column of nulls
    # converts for free: only state and product rows convert here.
    text_rows = pl.col("signal").is_in(("state", "product"))
    events = events.with_columns(
        _as_text(pl.when(text_rows).then(whole), pl.when(text_rows).then(real)).alias("source")
    )
    if index.state_map.height:
        events = events.join(
            index.state_map, on=["machine", "source"], how="left", maintain_order="left"
        )
    else:
        events = events.with_columns(pl.lit(None, pl.String).alias("mapped"))
    # A counter reading is an integer; a float counter (OPC-UA Double) must be whole.
    integral = (real == real.round()) & (real.abs() <= MAX_COUNTER)
    # Each derived value once, as a column: the checks and the samples both read it.
    events = events.with_columns(
        pl.coalesce(
            pl.col("mapped"),
            pl.when(pl.col("source").is_in(sorted(STATES))).then(pl.col("source")),
        ).alias("_state"),
        pl.coalesce(real, whole.cast(pl.Float64)).alias("_num"),
        pl.coalesce(whole, pl.when(integral).then(real.cast(pl.Int64, strict=False))).alias(
            "_count"
        ),
        # A correction: the code in `reason` (or in the value), its number in the value.
        pl.coalesce(pl.col("reason"), pl.col("value_str")).alias("_code"),
        pl.col("signal").is_in(CUMULATIVE_SIGNALS).alias("_counter"),
    )
    state, num, count, code = pl.col("_state"), pl.col("_num"), pl.col("_count"), pl.col("_code")
    is_counter = pl.col("_counter")
    is_reason = pl.col("signal") == "reason"
    # Each check, in the order its reason wins; the reasons are written for the rows that
    # fail one (few), not for every row.
    checks = [
        (
            (pl.col("signal") == "state") & state.is_null(),
            pl.format(
                "state value {} is not a LinePulse state; map it in state_map",
                _quoted(pl.col("source")),
            ),
        ),
        (
            is_counter & num.is_null(),
            pl.format(
                "{} must be a number, got {}",
                pl.col("signal").cast(pl.String),
                _quoted(pl.col("value_str")),
            ),
        ),
        (
            is_counter & (count.is_null() | (count < 0)),
            pl.format(
                "{} must be a non-negative integer, got {}",
                pl.col("signal").cast(pl.String),
                _as_text(whole, real),
            ),
        ),
        (
            (pl.col("signal") == "ideal_cycle_time_s") & (num.is_null() | (num <= 0)),
            pl.lit("ideal_cycle_time_s must be a number > 0"),
        ),
        (
            is_reason & (code.is_null() | (code == "")),
            pl.lit("a reason event needs the reason code in `reason`"),
        ),
    ]
    events = events.with_columns(pl.any_horizontal(c for c, _ in checks).alias("_faulty"))
    problem = pl.coalesce(pl.when(check).then(why) for check, why in checks)  # the first
    rejected = pl.concat(
        [
            unknown.select(
                "ts",
                "machine",
                "signal",
                pl.format("unknown machine '{}'", "machine").alias("reason"),
            ),
            events.filter(pl.col("_faulty")).select(
                "ts",
                pl.col("machine").cast(pl.String),
                pl.col("signal").cast(pl.String),
                problem.alias("reason"),
            ),
        ]
    )
    good = events.filter(~pl.col("_faulty")).select(
        "machine",
        "ts",
        "signal",
        pl.when(is_counter).then(count).alias("count"),
        pl.when((pl.col("signal") == "product") | is_counter)
        .then(None)
        .when(is_reason)
        .then(pl.when(pl.col("value_str").is_null()).then(num).otherwise(0.0))
        .otherwise(num)
        .alias("num"),
        pl.when(pl.col("signal") == "state")
        .then(state)
        .when(pl.col("signal") == "product")
        .then(pl.col("source"))
        .when(is_reason)
        .then(code)
        .alias("text"),
        pl.when(pl.col("signal") == "state").then(pl.col("reason")).alias("reason"),
    )
    return Prepared(
        samples=good.cast(sample_schema(index.machine_type)),
        rejected=rejected.cast(REJECTED_SCHEMA),
        bad_quality=int(bad_quality or 0),
        other_signals=int(other_signals or 0),
    )
