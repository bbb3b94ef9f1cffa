"""Which window of each kind a minute belongs to, and whether the minute is planned.

Every window boundary (clock windows in the plant's timezone, shifts, breaks, production
days) falls on a whole UTC minute, because configured times are HH:MM and zone offsets
are whole minutes. So one table keyed by (line, minute) maps the per-minute sums of the
core onto every window kind exactly.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from linepulse.calendar import DAY_MS, MINUTE_MS, Calendar
from linepulse.config import WindowKind

CLOCK_WINDOWS_MS: dict[str, int] = {"1m": MINUTE_MS, "15m": 15 * MINUTE_MS, "1h": 60 * MINUTE_MS}


def floor_minute(ms: int) -> int:
    return ms - ms % MINUTE_MS


def _offset_ms(minute: pl.Expr, zone: str) -> pl.Expr:
    local = minute.cast(pl.Datetime("ms", "UTC")).dt.convert_time_zone(zone)
    return (local.dt.base_utc_offset() + local.dt.dst_offset()).dt.total_milliseconds()


GRID_MEMO_ROWS = 500_000


def minute_grid(
    calendar: Calendar, keys: pl.DataFrame, kinds: tuple[WindowKind, ...]
) -> pl.DataFrame:
    """For unique (line, minute) rows: `planned` and `<kind>_start`/`_end` per kind.

    `shift_start`/`shift_end`/`shift_name` are null for a minute outside every shift.
    A pure function of the calendar, so rows are memoised: a stream asks for the same few
    minutes step after step.
    """
    keys = keys.select("line", "minute").unique()
    if keys.is_empty():
        return _empty_grid(kinds)
    memo_key = ("grid", kinds)
    known: pl.DataFrame | None = calendar.memo.get(memo_key)
    missing = keys if known is None else keys.join(known, on=["line", "minute"], how="anti")
    if missing.height:
        fresh = _compute_grid(calendar, missing, kinds)
        known = fresh if known is None else pl.concat([known, fresh])
        if known.height > GRID_MEMO_ROWS:
            known = fresh
        calendar.memo[memo_key] = known
    assert known is not None  # noqa: S101 - set above
    return known.join(keys, on=["line", "minute"], how="semi")


def _compute_grid(
    calendar: Calendar, keys: pl.DataFrame, kinds: tuple[WindowKind, ...]
) -> pl.DataFrame:
    zone = calendar.plant.timezone
    grid = keys.with_columns(_offset_ms(pl.col("minute"), zone).alias("_off"))
    local = pl.col("minute") + pl.col("_off")
    for kind in kinds:
        if kind in CLOCK_WINDOWS_MS:
            size = CLOCK_WINDOWS_MS[kind]
            start = local - local % size - pl.col("_off")
            grid = grid.with_columns(
                start.alias(f"{kind}_start"), (start + size).alias(f"{kind}_end")
            )
    if "day" in kinds:
        grid = grid.with_columns(((local - calendar.day_start_ms) // DAY_MS).alias("_dayno"))
        epoch = date(1970, 1, 1)
        days = grid.get_column("_dayno").unique().to_list()
        bounds = [calendar.day_bounds(epoch + timedelta(days=int(n))) for n in days]
        table = pl.DataFrame(
            {
                "_dayno": days,
                "day_start": [b[0] for b in bounds],
                "day_end": [b[1] for b in bounds],
            },
            schema={"_dayno": pl.Int64, "day_start": pl.Int64, "day_end": pl.Int64},
        )
        grid = grid.join(table, on="_dayno", how="left").drop("_dayno")

    # Shifts and breaks: interval lookups per line.
    lo, hi = int(grid["minute"].min()), int(grid["minute"].max()) + MINUTE_MS  # type: ignore[arg-type]
    span_rows: list[tuple[str, int, int, str]] = []
    planned_rows: list[tuple[str, int, int]] = []
    for line in grid.get_column("line").unique().to_list():
        for span in calendar.spans(line, lo, hi):
            span_rows.append((line, span.start, span.end, span.name))
            planned_rows.extend((line, a, b) for a, b in span.planned())
    spans = pl.DataFrame(
        span_rows,
        schema={
            "line": pl.String,
            "shift_start": pl.Int64,
            "shift_end": pl.Int64,
            "shift_name": pl.String,
        },
        orient="row",
    ).sort("shift_start")
    planned = pl.DataFrame(
        planned_rows, schema={"line": pl.String, "_pa": pl.Int64, "_pb": pl.Int64}, orient="row"
    ).sort("_pa")
    grid = grid.sort("minute")
    grid = grid.join_asof(
        spans, left_on="minute", right_on="shift_start", by="line", check_sortedness=False
    )
    inside = pl.col("minute") < pl.col("shift_end")
    grid = grid.with_columns(
        pl.when(inside).then(pl.col(c)).otherwise(None).alias(c)
        for c in ("shift_start", "shift_end", "shift_name")
    )
    grid = grid.join_asof(
        planned, left_on="minute", right_on="_pa", by="line", check_sortedness=False
    )
    grid = grid.with_columns(
        (pl.col("_pb").is_not_null() & (pl.col("minute") < pl.col("_pb"))).alias("planned")
    ).drop("_pa", "_pb", "_off")
    if "shift" not in kinds:
        grid = grid.drop("shift_start", "shift_end", "shift_name")
    return grid


def _empty_grid(kinds: tuple[WindowKind, ...]) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {
        "line": pl.String(),
        "minute": pl.Int64(),
        "planned": pl.Boolean(),
    }
    for kind in kinds:
        schema[f"{kind}_start"] = pl.Int64()
        schema[f"{kind}_end"] = pl.Int64()
    if "shift" in kinds:
        schema["shift_name"] = pl.String()
    return pl.DataFrame(schema=schema)


def window_keys(grid: pl.DataFrame, kinds: tuple[WindowKind, ...]) -> pl.DataFrame:
    """Unique (line, window, start, end, shift) of the windows the grid's minutes touch."""
    parts = []
    for kind in kinds:
        shift = pl.col("shift_name") if kind == "shift" else pl.lit(None, pl.String)
        parts.append(
            grid.filter(pl.col(f"{kind}_start").is_not_null())
            .select(
                "line",
                pl.lit(kind).alias("window"),
                pl.col(f"{kind}_start").alias("start"),
                pl.col(f"{kind}_end").alias("end"),
                shift.alias("shift"),
            )
            .unique()
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=WINDOW_KEY_SCHEMA)


WINDOW_KEY_SCHEMA = pl.Schema(
    {"line": pl.String, "window": pl.String, "start": pl.Int64, "end": pl.Int64, "shift": pl.String}
)


def minutes_between(line_lo: pl.DataFrame, end: int) -> pl.DataFrame:
    """Every minute from each line's `lo` up to `end` inclusive, as (line, minute) rows."""
    return (
        line_lo.select(
            "line",
            pl.int_ranges(
                pl.col("lo") - pl.col("lo") % MINUTE_MS, pl.lit(floor_minute(end) + 1), MINUTE_MS
            ).alias("minute"),
        )
        .explode("minute")
        .drop_nulls("minute")
    )
