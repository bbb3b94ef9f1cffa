"""From telemetry events to the samples the KPI core uses, with reasons for the rest.

The core keeps four kinds of signal: `state` (mapped to a LinePulse state through the
config's state maps), the cumulative counters, `product` and `ideal_cycle_time_s`.
Other tags (temperature, speed) are valid telemetry but carry no KPI. `bad`-quality
samples are ignored (DESIGN.md); events for machines not in the config, or with values
the config cannot interpret, are rejected with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from linepulse.config import COUNTER_SIGNALS, STATES, PlantConfig

# One row per usable sample. `num` holds counter readings and ideal cycle times, `text`
# the LinePulse state or the product name.
SAMPLE_SCHEMA = pl.Schema(
    {
        "machine": pl.String,
        "ts": pl.Int64,
        "signal": pl.String,
        "num": pl.Float64,
        "text": pl.String,
        "reason": pl.String,
    }
)
REJECTED_SCHEMA = pl.Schema(
    {"ts": pl.Int64, "machine": pl.String, "signal": pl.String, "reason": pl.String}
)
KPI_SIGNALS = ("state", *COUNTER_SIGNALS, "product", "ideal_cycle_time_s")


@dataclass(frozen=True)
class PlantIndex:
    """The config, flattened into lookup frames once, for vectorised joins."""

    machines: pl.DataFrame  # machine, line, ict_us
    state_map: pl.DataFrame  # machine, source, mapped
    products: pl.DataFrame  # machine, product, p_ict_us
    counter_max: pl.DataFrame  # machine, signal, cmax
    line_machines: dict[str, tuple[str, ...]]

    @classmethod
    def build(cls, plant: PlantConfig) -> PlantIndex:
        machines: list[tuple[str, str, int | None]] = []
        state_rows: list[tuple[str, str, str]] = []
        product_rows: list[tuple[str, str, int]] = []
        max_rows: list[tuple[str, str, float]] = []
        for line in plant.lines:
            for m in line.machines:
                ict = None if m.ideal_cycle_time_s is None else round(m.ideal_cycle_time_s * 1e6)
                machines.append((m.id, line.id, ict))
                state_rows.extend((m.id, k, v) for k, v in plant.state_map_for(m).items())
                product_rows.extend(
                    (m.id, name, round(p.ideal_cycle_time_s * 1e6))
                    for name, p in m.products.items()
                )
                max_rows.extend((m.id, sig, float(mx)) for sig, mx in m.counter_max.items())
        return cls(
            machines=pl.DataFrame(
                machines,
                schema={"machine": pl.String, "line": pl.String, "ict_us": pl.Int64},
                orient="row",
            ),
            state_map=pl.DataFrame(
                state_rows,
                schema={"machine": pl.String, "source": pl.String, "mapped": pl.String},
                orient="row",
            ),
            products=pl.DataFrame(
                product_rows,
                schema={"machine": pl.String, "product": pl.String, "p_ict_us": pl.Int64},
                orient="row",
            ),
            counter_max=pl.DataFrame(
                max_rows,
                schema={"machine": pl.String, "signal": pl.String, "cmax": pl.Float64},
                orient="row",
            ),
            line_machines={li.id: tuple(m.id for m in li.machines) for li in plant.lines},
        )


@dataclass(frozen=True)
class Prepared:
    samples: pl.DataFrame
    rejected: pl.DataFrame
    bad_quality: int
    other_signals: int


def _num_as_text(num: pl.Expr) -> pl.Expr:
    # PackML state numbers and PLC enums arrive as numbers; map keys are their text.
    return (
        pl.when(num == num.round())
        .then(num.cast(pl.Int64, strict=False).cast(pl.String))
        .otherwise(num.cast(pl.String))
    )


def prepare(events: pl.DataFrame, index: PlantIndex) -> Prepared:
    """Validate and normalise a batch of `EVENT_SCHEMA` events for the core."""
    quality_bad = pl.col("quality") == "bad"
    bad_quality = int(events.select(quality_bad.sum()).item() or 0)
    events = events.filter(~quality_bad)
    events = events.join(index.machines.select("machine", "line"), on="machine", how="left")
    unknown = events.filter(pl.col("line").is_null())
    events = events.filter(pl.col("line").is_not_null())
    kpi = pl.col("signal").is_in(KPI_SIGNALS)
    other_signals = int(events.select((~kpi).sum()).item() or 0)
    events = events.filter(kpi)

    source = pl.coalesce(pl.col("value_str"), _num_as_text(pl.col("value_num")))
    events = events.with_columns(source.alias("source")).join(
        index.state_map, on=["machine", "source"], how="left"
    )
    state = pl.coalesce(
        pl.col("mapped"),
        pl.when(pl.col("source").is_in(sorted(STATES))).then(pl.col("source")),
    )
    num = pl.col("value_num")
    is_counter = pl.col("signal").is_in(COUNTER_SIGNALS)
    problem = (
        pl.when((pl.col("signal") == "state") & state.is_null())
        .then(pl.format("state value '{}' is not a LinePulse state; map it in state_map", "source"))
        .when(is_counter & num.is_null())
        .then(pl.format("{} must be a number, got '{}'", "signal", "value_str"))
        .when(is_counter & ((num < 0) | (num != num.round())))
        .then(pl.format("{} must be a non-negative integer, got {}", "signal", num))
        .when((pl.col("signal") == "ideal_cycle_time_s") & (num.is_null() | (num <= 0)))
        .then(pl.lit("ideal_cycle_time_s must be a number > 0"))
        .otherwise(pl.lit(None, pl.String))
    )
    events = events.with_columns(problem.alias("_problem"))
    rejected = pl.concat(
        [
            unknown.select(
                "ts",
                "machine",
                "signal",
                pl.format("unknown machine '{}'", "machine").alias("reason"),
            ),
            events.filter(pl.col("_problem").is_not_null()).select(
                "ts", "machine", "signal", pl.col("_problem").alias("reason")
            ),
        ]
    )
    good = events.filter(pl.col("_problem").is_null()).select(
        "machine",
        "ts",
        "signal",
        pl.when(pl.col("signal") == "product").then(None).otherwise(num).alias("num"),
        pl.when(pl.col("signal") == "state")
        .then(state)
        .when(pl.col("signal") == "product")
        .then(pl.col("source"))
        .alias("text"),
        pl.when(pl.col("signal") == "state").then(pl.col("reason")).alias("reason"),
    )
    return Prepared(
        samples=good.cast(SAMPLE_SCHEMA),
        rejected=rejected.cast(REJECTED_SCHEMA),
        bad_quality=bad_quality,
        other_signals=other_signals,
    )
