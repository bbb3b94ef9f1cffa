"""The incremental KPI core: `step(core, state, events) -> (state, output)`.

Pure: no I/O, no clock. Time is event time; the watermark is the highest event time
seen (`high`) less the allowed lateness. The replay, the streaming worker and the demo
all call `step`, and any split of the input into batches gives the same final records.

How it stays exact and cheap:

1. Events become per-(machine, minute) sums ("atoms"): ms per state, stops, parts and
   ideal time per counter, all integers. Every window boundary is a whole minute.
2. A batch dirties each machine from its earliest new event (or from the previous
   `high`, where the last state's tail grows); those minutes are recomputed from the
   retained samples, and the difference new - old is added to per-window sums. Sums are
   linear, so a late event restates exactly the windows it touches.
3. A window is final once the watermark passes its end; a later event within the
   restatement horizon restates it with a higher `revision`; an event before the horizon
   is too late: rejected with that reason and counted, never silently dropped.

Samples are retained back to the horizon (plus the last one before it per signal, the
baseline), atoms and window sums until their windows can no longer change.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

import polars as pl

from linepulse.calendar import MINUTE_MS, Calendar
from linepulse.config import PlantConfig, WindowKind
from linepulse.costs import PRICED, Pricing
from linepulse.production import LOSS_KEYS
from linepulse.records import RECORD_FIELDS, record_fields
from services.kpi.core.counters import (
    COUNT_COLUMNS,
    JUMP_SCHEMA,
    PRODUCT_COUNT_COLUMNS,
    counter_minutes,
)
from services.kpi.core.lines import LINE_FIELDS, LineShape, MachineWindow, line_fields
from services.kpi.core.oee import SUM_COLUMNS, kpi_fields, machine_counts
from services.kpi.core.samples import (
    CUMULATIVE_SIGNALS,
    REJECTED_SCHEMA,
    REWORK,
    PlantIndex,
    prepare,
    sample_schema,
)
from services.kpi.core.states import (
    ATOM_STATE_COLUMNS,
    STATE_ORDER,
    STOP_COLUMNS,
    segments,
    state_minutes,
)
from services.kpi.core.windows import floor_minute, minute_grid, minutes_between, window_keys

# Count only inside calendar planned time.
TIME_COLUMNS = [*ATOM_STATE_COLUMNS.values(), *STOP_COLUMNS]
ATOM_COLUMNS = [*TIME_COLUMNS, *COUNT_COLUMNS]
# Per (machine, minute, product): running time (small stops in) and the T/G/R columns.
PRODUCT_COLUMNS = ["run_ms", *PRODUCT_COUNT_COLUMNS]
_INT_ATOMS: dict[str, pl.DataType] = {c: pl.Int64() for c in ATOM_COLUMNS}
_INT_PRODUCT: dict[str, pl.DataType] = {c: pl.Int64() for c in PRODUCT_COLUMNS}
WINDOW_KEY = ["machine", "line", "window", "start", "end", "shift"]
# What names a record (`RecordKey`): a line's record has machine null.
RECORD_KEY = ["line", "machine", "window", "start"]


@dataclass(frozen=True)
class Schemas:
    """Frame schemas of the state; `machine` is the plant's Enum of machine ids."""

    samples: pl.Schema
    atoms: pl.Schema
    reasons: pl.Schema
    acc: pl.Schema
    racc: pl.Schema
    patoms: pl.Schema
    pacc: pl.Schema

    @classmethod
    def build(cls, machine: pl.DataType) -> Schemas:
        keys: dict[str, pl.DataType] = {
            "machine": machine,
            "line": pl.String(),
            "window": pl.String(),
            "start": pl.Int64(),
            "end": pl.Int64(),
            "shift": pl.String(),
        }
        return cls(
            samples=sample_schema(machine),
            atoms=pl.Schema({"machine": machine, "minute": pl.Int64(), **_INT_ATOMS}),
            reasons=pl.Schema(
                {"machine": machine, "minute": pl.Int64(), "reason": pl.String(), "ms": pl.Int64()}
            ),
            acc=pl.Schema({**keys, **_INT_ATOMS}),
            racc=pl.Schema({**keys, "reason": pl.String(), "ms": pl.Int64()}),
            patoms=pl.Schema(
                {"machine": machine, "minute": pl.Int64(), "product": pl.String(), **_INT_PRODUCT}
            ),
            pacc=pl.Schema({**keys, "product": pl.String(), **_INT_PRODUCT}),
        )


RecordKey = tuple[str, str | None, str, int]  # (line, machine or None, window, start)


@dataclass(frozen=True)
class Emitted:
    """What was last said of a record; `tick` is the epoch (`CoreState.epoch`) of the
    late data that last restated it."""

    revision: int
    final: bool
    end: int
    values: tuple[Any, ...]
    tick: int | None = None


@dataclass(frozen=True)
class Core:
    """What the core needs from the config, built once: pure and immutable in use."""

    plant: PlantConfig
    index: PlantIndex
    calendar: Calendar
    windows: tuple[WindowKind, ...]
    lateness_ms: int
    horizon_ms: int
    schemas: Schemas
    line_shapes: dict[str, LineShape]
    # The config's rates (docs/costs.md): records carry their losses in money; None
    # where the config sets none.
    pricing: Pricing | None

    @classmethod
    def from_config(cls, plant: PlantConfig, windows: tuple[WindowKind, ...] | None = None) -> Core:
        index = PlantIndex.build(plant)
        return cls(
            plant=plant,
            index=index,
            schemas=Schemas.build(index.machine_type),
            calendar=Calendar(plant),
            windows=windows or plant.kpi.windows,
            # A stop straddling a window's end may still turn from small to long: the
            # window closes once the longest small stop has passed as well.
            lateness_ms=round(plant.kpi.lateness_s * 1000) + _max_small_ms(index),
            horizon_ms=round(plant.kpi.restate_horizon_s * 1000),
            line_shapes={line.id: LineShape.of(line) for line in plant.lines},
            pricing=pricing if (pricing := Pricing(plant)).configured else None,
        )


def _max_small_ms(index: PlantIndex) -> int:
    return int(index.machines.get_column("small_ms").max() or 0)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CoreStats:
    """Cumulative counts since `initial_state()`: what came in and what became of it."""

    events: int = 0
    used: int = 0
    other_signals: int = 0
    bad_quality: int = 0
    rejected: int = 0
    late: int = 0
    too_late: int = 0
    implausible: int = 0  # counter increments not counted (README "Counters")


@dataclass(frozen=True)
class CoreState:
    """Everything the core remembers between batches (checkpointed with its offsets).

    Samples are kept in two parts: `recent` (at or after `cut`, the watermark's minute at
    the last step) and `older`; `older_last` is the last of `older` per (machine, signal).
    In-order batches only read `recent` and `older_last` (the baselines), so a step costs
    what the batch and the lateness hold, not the whole restatement horizon.
    """

    recent: pl.DataFrame
    older: pl.DataFrame
    older_last: pl.DataFrame
    atoms: pl.DataFrame
    reasons: pl.DataFrame
    acc: pl.DataFrame
    racc: pl.DataFrame
    patoms: pl.DataFrame
    pacc: pl.DataFrame
    first_seen: dict[str, int] = field(default_factory=dict)
    counters_seen: dict[str, frozenset[str]] = field(default_factory=dict)
    emitted: dict[RecordKey, Emitted] = field(default_factory=dict)
    # The lines whose records this state makes (None: every configured line); each of
    # their machines has a record for every window from `first`, the earliest event time
    # accepted, so a silent machine shows as unknown time instead of vanishing.
    lines: frozenset[str] | None = None
    first: int | None = None
    # Restating epochs so far: one opens with each event that raises `high` and with each
    # reason correction; late events restate a window once per epoch they arrive in.
    epoch: int = 0
    high: int | None = None
    cut: int | None = None
    older_min: int | None = None
    stats: CoreStats = field(default_factory=CoreStats)

    @property
    def samples(self) -> pl.DataFrame:
        """All retained samples (older, then recent)."""
        return pl.concat([self.older, self.recent])


@dataclass(frozen=True)
class StepOutput:
    records: list[dict[str, Any]]
    rejected: pl.DataFrame  # ts, machine, signal, reason
    late: int  # accepted events behind the watermark (they may restate windows)
    too_late: int  # events behind the restatement horizon, rejected
    sealed_before: int | None  # windows ending at or before this can no longer change
    states: pl.DataFrame  # the batch's usable state samples: machine, ts, state (mapped)
    jumps: pl.DataFrame = field(default_factory=JUMP_SCHEMA.to_frame)  # implausible counts


def initial_state(core: Core, lines: frozenset[str] | None = None) -> CoreState:
    """A state that has seen nothing; `lines` limits its records to those lines (a
    worker's partition computes the lines whose home it is)."""
    schemas = core.schemas
    return CoreState(
        lines=lines,
        recent=schemas.samples.to_frame(),
        older=schemas.samples.to_frame(),
        older_last=schemas.samples.to_frame(),
        atoms=schemas.atoms.to_frame(),
        reasons=schemas.reasons.to_frame(),
        acc=schemas.acc.to_frame(),
        racc=schemas.racc.to_frame(),
        patoms=schemas.patoms.to_frame(),
        pacc=schemas.pacc.to_frame(),
    )


def _horizon_floor(core: Core, high: int | None) -> int | None:
    if high is None:
        return None
    return floor_minute(high - core.lateness_ms - core.horizon_ms)


def step(
    core: Core,
    state: CoreState,
    events: pl.DataFrame,
    *,
    flush: bool = False,
    open_records: bool | AbstractSet[WindowKind] = True,
) -> tuple[CoreState, StepOutput]:
    """Apply a batch of `EVENT_SCHEMA` events; with `flush`, close every open window.

    Returns the new state and the records that changed: open windows whose values moved,
    windows that became final, and restatements of final windows (revision + 1). Open
    windows of the kinds in `open_records` only (True: every kind; False: none, as for a
    replay that writes final records only). A kind left out costs nothing here, and the
    first step that asks for it again gives every open window of it that changed since
    it was last given (every open window is a candidate of every step), so a streaming
    worker asks for each kind only as often as it publishes it.
    """
    open_kinds = frozenset(
        core.windows if open_records is True else () if open_records is False else open_records
    )
    prep = prepare(events, core.index)  # samples in arrival order
    high0 = state.high
    water0 = None if high0 is None else high0 - core.lateness_ms
    floor0 = _horizon_floor(core, high0)
    judged = _judge(core, prep.samples, high0, state.first, state.epoch)
    too_late_rows = judged.filter(pl.col("_too_late"))
    accepted = judged.filter(~pl.col("_too_late"))
    late_rows = accepted.filter(pl.col("_late"))
    late = late_rows.height
    new = accepted.select(core.schemas.samples.names())
    epoch1 = int(accepted.get_column("_epoch").max() or state.epoch)  # type: ignore[arg-type]
    rejected = pl.concat([prep.rejected, _too_late(too_late_rows)])
    high1 = high0
    first1 = state.first
    if new.height:
        batch_high = int(new.get_column("ts").max())  # type: ignore[arg-type]
        high1 = batch_high if high0 is None else max(high0, batch_high)
        batch_first = int(new.get_column("ts").min())  # type: ignore[arg-type]
        first1 = batch_first if first1 is None else min(first1, batch_first)
    stats = CoreStats(
        events=state.stats.events + events.height,
        used=state.stats.used + new.height,
        other_signals=state.stats.other_signals + prep.other_signals,
        bad_quality=state.stats.bad_quality + prep.bad_quality,
        rejected=state.stats.rejected + rejected.height,
        late=state.stats.late + late,
        too_late=state.stats.too_late + too_late_rows.height,
        implausible=state.stats.implausible,
    )
    if high1 is None or (new.is_empty() and high1 == high0 and not flush and not open_kinds):
        output = StepOutput([], rejected, late, too_late_rows.height, floor0, _states(new))
        return replace(state, stats=stats), output

    first_seen = dict(state.first_seen)
    counters_seen = dict(state.counters_seen)
    # Machines whose learned counter set grew (a machine's first counters too: its windows
    # closed while it was silent read differently now).
    regrouped: dict[str, frozenset[str]] = {}
    declared = core.index.declared_counters
    for machine, ts_min, signals in (
        new.group_by("machine").agg(pl.col("ts").min(), pl.col("signal").unique()).iter_rows()
    ):
        first_seen[machine] = min(first_seen.get(machine, ts_min), ts_min)
        before = counters_seen.get(machine, frozenset())
        if machine in declared:
            counters_seen[machine] = declared[machine]
            continue
        grown = before | frozenset(s for s in signals if s in CUMULATIVE_SIGNALS)
        if grown != before:
            regrouped[machine] = before
        counters_seen[machine] = grown

    dirty = _dirty(core, new, state.first_seen, high0, high1)
    lowest = dirty.get_column("from").min()
    # Small-stop and start-up classes read states up to `lookback` before `from`.
    reach = None if lowest is None else lowest - core.index.lookback_ms  # type: ignore[operator]
    reaches_older = state.cut is not None and reach is not None and reach < state.cut
    # Only data older than the last cut needs the older samples; otherwise baselines do.
    work = pl.concat([state.older if reaches_older else state.older_last, state.recent, new])
    atoms, reasons, patoms, delta, rdelta, pdelta, jumps = _recompute(
        core, state, work, dirty, high1
    )
    if jumps.height:  # reported once: by the batch that brings the sample showing it
        jumps = jumps.join(
            new.select(pl.col("machine").cast(pl.String), "ts", pl.col("signal").cast(pl.String)),
            on=["machine", "ts", "signal"],
            how="semi",
        ).unique(maintain_order=True)
    stats = replace(stats, implausible=stats.implausible + jumps.height)
    acc, racc, pacc, touched = _apply_deltas(core, state, delta, rdelta, pdelta)
    influencers = late_rows.select("machine", "_arr", "_epoch", _reach(core))
    if regrouped:
        # Counts combine differently now: every window of theirs may read differently,
        # from the event that brought the new counter on.
        again = acc.filter(pl.col("machine").is_in(sorted(regrouped))).select(WINDOW_KEY)
        touched = pl.concat([touched, again]).unique()
        influencers = pl.concat([influencers, _regrouping(accepted, regrouped)])

    water1 = high1 - core.lateness_ms
    restated = _restated(core, influencers)
    candidates = _candidates(
        core, state, first1, water0, floor0, high1, touched, restated.select(WINDOW_KEY[1:])
    )
    records, emitted = _emit(
        core,
        state,
        acc,
        racc,
        pacc,
        candidates,
        counters_seen,
        high1,
        water1,
        flush,
        open_kinds,
        _ticks(restated),
    )

    floor1 = _horizon_floor(core, high1)
    assert floor1 is not None  # noqa: S101 - high1 is set
    # Keep twice the lookback in `recent`: a batch's `from` moves back by it, and the
    # states read for its classes by it again.
    cut1 = floor_minute(water1 - 2 * core.index.lookback_ms)
    recent = pl.concat([state.recent, new])
    moved = recent.filter(pl.col("ts") < cut1)
    recent = recent.filter(pl.col("ts") >= cut1)
    older, older_last, older_min = state.older, state.older_last, state.older_min
    if moved.height:
        older = pl.concat([older, moved])
        older_last = _last_per_signal(pl.concat([older_last, moved]))
        moved_min = int(moved.get_column("ts").min())  # type: ignore[arg-type]
        older_min = moved_min if older_min is None else min(older_min, moved_min)
    if older_min is not None and older_min < floor1 - EVICT_EVERY_MS:
        older = _evict_samples(older, floor1)  # amortised: once per EVICT_EVERY_MS of time
        older_min = int(older.get_column("ts").min()) if older.height else None  # type: ignore[arg-type]
    # What can still change: minutes from the horizon on, windows ending after it.
    kept_minutes, kept_windows = pl.col("minute") >= floor1, pl.col("end") > floor1
    atoms, reasons, acc, racc, patoms, pacc = pl.collect_all(
        [
            atoms.lazy().filter(kept_minutes),
            reasons.lazy().filter(kept_minutes),
            acc.lazy().filter(kept_windows),
            racc.lazy().filter(kept_windows),
            patoms.lazy().filter(kept_minutes),
            pacc.lazy().filter(kept_windows),
        ],
        engine="in-memory",
    )
    new_state = CoreState(
        recent=recent,
        older=older,
        older_last=older_last,
        atoms=atoms,
        reasons=reasons,
        acc=acc,
        racc=racc,
        patoms=patoms,
        pacc=pacc,
        first_seen=first_seen,
        counters_seen=counters_seen,
        emitted={k: v for k, v in emitted.items() if v.end > floor1},
        lines=state.lines,
        first=first1,
        epoch=epoch1,
        high=high1,
        cut=cut1,
        older_min=older_min,
        stats=stats,
    )
    output = StepOutput(records, rejected, late, too_late_rows.height, floor1, _states(new), jumps)
    return new_state, output


def _states(samples: pl.DataFrame) -> pl.DataFrame:
    return (
        samples.filter(pl.col("signal") == "state")
        .select(pl.col("machine").cast(pl.String), "ts", pl.col("text").alias("state"), "reason")
        .sort("ts", "machine", "state", "reason", nulls_last=True)
    )


def _judge(
    core: Core, samples: pl.DataFrame, high0: int | None, first0: int | None, epoch0: int
) -> pl.DataFrame:
    """Each sample judged against the watermark at its arrival (docs/kpi.md).

    `_arr` is the highest event time of all samples before it in arrival order (this
    batch and earlier ones) or its own; it is `_late` behind `_arr` less the lateness, and
    `_too_late` before the restatement horizon's minute then (`_floor`); `_first` is the
    earliest event time accepted before it (for `_reach`), `_epoch` the restating epoch
    it arrives in (see `CoreState.epoch`). The judgement depends on the arrival order
    only, never on how the stream was cut into batches.
    """
    ts = pl.col("ts")
    arr = ts.cum_max() if high0 is None else pl.max_horizontal(ts.cum_max(), pl.lit(high0))
    previous = arr.shift(1) if high0 is None else arr.shift(1, fill_value=high0)
    floor = pl.col("_arr") - core.lateness_ms - core.horizon_ms
    # `prepare` keeps the batch's order (its filters and its left join do).
    judged = samples.with_columns(arr.alias("_arr"), (ts > previous).alias("_raises"))
    judged = judged.with_columns((floor - floor % MINUTE_MS).alias("_floor")).with_columns(
        (ts < pl.col("_floor")).alias("_too_late"),
        (ts < pl.col("_arr") - core.lateness_ms).alias("_late"),
    )
    # A rejected event neither moves the first event time nor opens an epoch.
    used = ~pl.col("_too_late")
    before = pl.when(used).then(ts).cum_min().forward_fill().shift(1)
    first = before if first0 is None else pl.min_horizontal(before, pl.lit(first0))
    opens = used & (pl.col("_raises").fill_null(True) | (pl.col("signal") == "reason"))
    return judged.with_columns(
        first.alias("_first"), (opens.cum_sum() + epoch0).alias("_epoch")
    ).drop("_raises")


def _reach(core: Core) -> pl.Expr:
    """`_lo` of judged samples: the windows ending after it are the ones they can restate
    (less the small-stop and start-up lookback, after the earliest event before it, after
    the horizon)."""
    lookback = pl.col("ts") - core.index.lookback_ms
    return pl.max_horizontal(lookback, pl.col("_first"), pl.col("_floor")).alias("_lo")


def _too_late(rows: pl.DataFrame) -> pl.DataFrame:
    if rows.is_empty():
        return REJECTED_SCHEMA.to_frame()
    horizon = pl.col("_floor").cast(pl.Datetime("ms", "UTC")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return rows.select(
        "ts",
        pl.col("machine").cast(pl.String),
        pl.col("signal").cast(pl.String),
        pl.format("too late: event time is before the restatement horizon {}", horizon).alias(
            "reason"
        ),
    )


def _regrouping(accepted: pl.DataFrame, regrouped: dict[str, frozenset[str]]) -> pl.DataFrame:
    """The first event of each machine that brought a counter it had not had before."""
    had = pl.DataFrame(
        [(m, signal) for m, before in regrouped.items() for signal in before],
        schema={"machine": accepted.schema["machine"], "signal": accepted.schema["signal"]},
        orient="row",
    )
    return (
        accepted.filter(
            pl.col("machine").is_in(sorted(regrouped)) & pl.col("signal").is_in(CUMULATIVE_SIGNALS)
        )
        .join(had, on=["machine", "signal"], how="anti", maintain_order="left")
        .group_by("machine", maintain_order=True)
        .first()
        .select("machine", "_arr", "_epoch", pl.col("_floor").alias("_lo"))
    )


def _restated(core: Core, influencers: pl.DataFrame) -> pl.DataFrame:
    """Windows that late data restates, with the epoch (`_epoch`) of each restating.

    An event restates every window of its machine and its line that was final at its
    arrival (the watermark then had passed its end) and ends after its `_lo`. Returns
    WINDOW_KEY (`machine` null for the line record) and `_epoch`, one row per restating.
    """
    acc = core.schemas.acc
    schema = pl.Schema({**{k: acc[k] for k in WINDOW_KEY}, "_epoch": pl.Int64()})
    if influencers.is_empty():
        return pl.DataFrame(schema=schema)
    lines = core.index.machines.select("machine", "line")
    final_by = pl.col("_arr") - core.lateness_ms  # windows ending by then were final
    by_machine = (
        influencers.join(lines, on="machine")
        .group_by("machine", "line", "_epoch")
        .agg(pl.col("_arr").max(), pl.col("_lo").min())
        .filter(pl.col("_lo") < final_by)
    )
    if by_machine.is_empty():
        return pl.DataFrame(schema=schema)
    span = by_machine.group_by("line").agg(pl.col("_lo").min().alias("lo"))
    keys = window_keys(
        minute_grid(
            core.calendar,
            minutes_between(span, int(by_machine.select(final_by.max()).item())),
            core.windows,
        ),
        core.windows,
    )
    inside = (pl.col("end") > pl.col("_lo")) & (pl.col("end") <= final_by)
    machine_rows = keys.join(by_machine, on="line").filter(inside)
    line_rows = machine_rows.with_columns(pl.lit(None, core.index.machine_type).alias("machine"))
    return pl.concat([machine_rows, line_rows]).select(*WINDOW_KEY, "_epoch").cast(schema).unique()


def _ticks(restated: pl.DataFrame) -> dict[RecordKey, list[int]]:
    """Per record, the distinct epochs of the late data restating it, ascending."""
    ticks: dict[RecordKey, list[int]] = {}
    rows = restated.select("line", "machine", "window", "start", "_epoch").sort("_epoch")
    for line, machine, kind, start, epoch in rows.iter_rows():
        ticks.setdefault((line, machine, kind, start), []).append(epoch)
    return ticks


def _dirty(
    core: Core, new: pl.DataFrame, seen_before: dict[str, int], high0: int | None, high1: int
) -> pl.DataFrame:
    """Per machine, the first minute whose sums the batch may change."""
    rows: dict[str, int] = {}
    back = core.index.lookback_ms  # a change reclassifies a small stop or start-up behind it
    if high0 is not None and high1 > high0:
        tail = floor_minute(high0 - back)  # the last state's tail grows from the previous high
        rows = dict.fromkeys(seen_before, tail)
    for machine, ts_min in new.group_by("machine").agg(pl.col("ts").min()).iter_rows():
        start = ts_min if high0 is None else min(ts_min, high0)
        rows[machine] = min(rows.get(machine, start), floor_minute(start - back))
    return pl.DataFrame(
        {"machine": list(rows), "from": list(rows.values())},
        schema={"machine": core.index.machine_type, "from": pl.Int64},
    )


def _recompute(
    core: Core, state: CoreState, samples: pl.DataFrame, dirty: pl.DataFrame, high: int
) -> tuple[
    pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame
]:
    """New atoms for the dirty minutes, the deltas (new - old) they make, and the
    implausible counter jumps among the dirty samples."""
    schemas = core.schemas
    state_atoms, new_reasons, state_products = state_minutes(samples, dirty, high, core.index)
    count_atoms, count_products, jumps = counter_minutes(samples, dirty, core.index, core.calendar)
    # One lazy plan per result, collected together (see `_apply_deltas`).
    new_atoms = (
        state_atoms.lazy()
        .join(count_atoms.lazy(), on=["machine", "minute"], how="full", coalesce=True)
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in ATOM_COLUMNS)
        .select(schemas.atoms.names())
    )
    new_reasons_plan = new_reasons.lazy().select(schemas.reasons.names()).cast(schemas.reasons)
    product_key = ["machine", "minute", "product"]
    new_products = (
        state_products.lazy()
        .join(count_products.lazy(), on=product_key, how="full", coalesce=True)
        .with_columns(pl.col(c).fill_null(0).cast(pl.Int64) for c in PRODUCT_COLUMNS)
        .select(schemas.patoms.names())
        .cast(schemas.patoms)
    )
    dirty_rows = pl.col("minute") >= pl.col("from")

    def split(frame: pl.DataFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
        joined = frame.lazy().join(dirty.lazy(), on="machine", how="left")
        hit = pl.col("from").is_not_null() & dirty_rows
        return joined.filter(~hit).drop("from"), joined.filter(hit).drop("from")

    kept_atoms, old_atoms = split(state.atoms)
    kept_reasons, old_reasons = split(state.reasons)
    kept_products, old_products = split(state.patoms)
    atoms, reasons, patoms, delta, rdelta, pdelta = pl.collect_all(
        [
            pl.concat([kept_atoms, new_atoms]),
            pl.concat([kept_reasons, new_reasons_plan]),
            pl.concat([kept_products, new_products]),
            pl.concat([new_atoms, old_atoms.with_columns(-pl.col(c) for c in ATOM_COLUMNS)]),
            pl.concat([new_reasons_plan, old_reasons.with_columns(-pl.col("ms"))]),
            pl.concat(
                [new_products, old_products.with_columns(-pl.col(c) for c in PRODUCT_COLUMNS)]
            ),
        ],
        engine="in-memory",
    )
    return atoms, reasons, patoms, delta, rdelta, pdelta, jumps


def _apply_deltas(
    core: Core,
    state: CoreState,
    delta: pl.DataFrame,
    rdelta: pl.DataFrame,
    pdelta: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Add minute deltas to the per-window sums; return the windows they touched.

    Built as lazy plans collected together: each eager operation on these small frames
    costs about as much as its work, so one plan per result is most of the saving."""
    lines = core.index.machines.lazy().select("machine", "line")
    delta, rdelta, pdelta = pl.collect_all(
        [frame.lazy().join(lines, on="machine") for frame in (delta, rdelta, pdelta)],
        engine="in-memory",
    )
    keys = pl.concat(
        [
            delta.select("line", "minute"),
            rdelta.select("line", "minute"),
            pdelta.select("line", "minute"),
        ]
    )
    grid = minute_grid(core.calendar, keys, core.windows).lazy()
    minutes = (
        delta.lazy()
        .join(grid, on=["line", "minute"])
        .with_columns(
            pl.when(pl.col("planned")).then(pl.col(c)).otherwise(0).alias(c) for c in TIME_COLUMNS
        )
    )
    reason_minutes = rdelta.lazy().join(grid, on=["line", "minute"]).filter(pl.col("planned"))
    product_minutes = (
        pdelta.lazy()
        .join(grid, on=["line", "minute"])
        .with_columns(
            pl.when(pl.col("planned")).then(pl.col("run_ms")).otherwise(0).alias("run_ms")
        )
    )
    parts, rparts, pparts = [], [], []
    for kind in core.windows:
        shift = pl.col("shift_name") if kind == "shift" else pl.lit(None, pl.String)
        key = [
            "machine",
            "line",
            pl.lit(kind).alias("window"),
            pl.col(f"{kind}_start").alias("start"),
            pl.col(f"{kind}_end").alias("end"),
            shift.alias("shift"),
        ]
        present = pl.col(f"{kind}_start").is_not_null()
        parts.append(minutes.filter(present).group_by(key).agg(pl.col(ATOM_COLUMNS).sum()))
        rparts.append(
            reason_minutes.filter(present).group_by([*key, "reason"]).agg(pl.col("ms").sum())
        )
        if pdelta.height:  # most plants have no product signal
            by_product = product_minutes.filter(present).group_by([*key, "product"])
            pparts.append(by_product.agg(pl.col(PRODUCT_COLUMNS).sum()))
    schemas = core.schemas
    window_delta = pl.concat(parts).cast(schemas.acc).select(schemas.acc.names())
    reason_delta = pl.concat(rparts).cast(schemas.racc).select(schemas.racc.names())
    product_delta = (
        pl.concat(pparts).cast(schemas.pacc).select(schemas.pacc.names())
        if pparts
        else schemas.pacc.to_frame().lazy()
    )
    acc = (
        pl.concat([state.acc.lazy(), window_delta])
        .group_by(WINDOW_KEY)
        .agg(pl.col(ATOM_COLUMNS).sum())
    )
    racc = (
        pl.concat([state.racc.lazy(), reason_delta])
        .group_by([*WINDOW_KEY, "reason"])
        .agg(pl.col("ms").sum())
        .filter(pl.col("ms") != 0)
    )
    pacc = state.pacc.lazy()
    if pparts:
        pacc = (
            pl.concat([pacc, product_delta])
            .group_by([*WINDOW_KEY, "product"])
            .agg(pl.col(PRODUCT_COLUMNS).sum())
            .filter(pl.any_horizontal(pl.col(PRODUCT_COLUMNS) != 0))
        )
    touched = pl.concat(
        [
            window_delta.select(WINDOW_KEY),
            reason_delta.select(WINDOW_KEY),
            product_delta.select(WINDOW_KEY),
        ]
    ).unique()
    acc_sums, racc_sums, pacc_sums, touched_windows = pl.collect_all(
        [acc, racc, pacc, touched], engine="in-memory"
    )
    return acc_sums, racc_sums, pacc_sums, touched_windows


def _candidates(
    core: Core,
    state: CoreState,
    first: int | None,
    water0: int | None,
    floor0: int | None,
    high1: int,
    touched: pl.DataFrame,
    restated: pl.DataFrame,
) -> pl.DataFrame:
    """Windows whose record may have changed: touched by deltas, restated by late data,
    or open before this step; for every machine of their line from the plant's first
    event on, so a silent machine counts as unknown time and line sums are whole."""
    assert first is not None  # noqa: S101 - set once any event was accepted
    # Windows before the watermark are new too where the first event moved earlier.
    fresh = water0 is None or state.first is None or first < state.first
    lo = first if fresh or water0 is None else max(first, water0)
    owned = state.lines if state.lines is not None else core.index.line_machines.keys()
    line_lo = pl.DataFrame(
        {"line": sorted(owned), "lo": [lo] * len(owned)}, schema={"line": pl.String, "lo": pl.Int64}
    )
    # The live windows change only when a bound crosses a minute: memoise them.
    memo_key = ("live", core.windows, tuple(sorted(owned)), floor_minute(lo), floor_minute(high1))
    live: pl.DataFrame | None = core.calendar.memo.get(memo_key)
    if live is None:
        grid = minute_grid(core.calendar, minutes_between(line_lo, high1), core.windows)
        live = window_keys(grid, core.windows)
        memo = core.calendar.memo
        for old in [k for k in list(memo) if isinstance(k, tuple) and k[0] == "live"]:
            memo.pop(old, None)  # workers step partitions in threads: tolerate a race
        core.calendar.memo[memo_key] = live
    line_windows = pl.concat([live, touched.drop("machine"), restated]).unique()
    if floor0 is not None:
        line_windows = line_windows.filter(pl.col("end") > floor0)
    return (
        line_windows.filter(pl.col("end") > first)
        .join(core.index.machines.select("machine", "line"), on="line")
        .select(WINDOW_KEY)
    )


def _emit(
    core: Core,
    state: CoreState,
    acc: pl.DataFrame,
    racc: pl.DataFrame,
    pacc: pl.DataFrame,
    candidates: pl.DataFrame,
    counters_seen: dict[str, frozenset[str]],
    high1: int,
    water1: int,
    flush: bool,
    open_kinds: frozenset[WindowKind],
    ticks: dict[RecordKey, list[int]],
) -> tuple[list[dict[str, Any]], dict[RecordKey, Emitted]]:
    """The records of `candidates` that changed, and what was said of each record now.

    The fields come from one Polars plan (sums, KPI fields, each record's reasons and
    products as lists), read out column by column: a record dict is made in Python only
    once, and the line fields read their machines' records of the same window (the sort
    puts a line's record after its machines').
    """
    if not flush and open_kinds != frozenset(core.windows):
        # Windows of the kinds left out are built only once final (as `_calendar_windows`
        # says: at the flush, or once the watermark reaches their end).
        asked = pl.col("window").is_in(sorted(open_kinds)) | (pl.col("end") <= water1)
        candidates = candidates.filter(asked)
    if candidates.is_empty():
        return [], dict(state.emitted)
    windows = _calendar_windows(core, candidates, high1, water1, flush)
    flags = _counter_flags(core, counters_seen)
    has = (pl.col("has_t"), pl.col("has_g"), pl.col("has_r"))
    rows = (
        candidates.lazy()
        .join(acc.lazy(), on=WINDOW_KEY, how="left", nulls_equal=True)
        .with_columns(pl.col(ATOM_COLUMNS).fill_null(0))
        .join(windows.lazy(), on=["line", "window", "start", "end"])
        .join(flags.lazy(), on="machine", how="left")
        .with_columns(pl.col("has_t", "has_g", "has_r", "has_w").fill_null(False))
        .with_columns(machine_counts(*has, pl.col("has_w")))
        .with_columns(pl.col("ideal_us").fill_null(0), pl.col("noideal").fill_null(0))
        # A line's times are its machines' summed, so its TEEP divides by their summed
        # calendar time, not by the window's length once.
        .with_columns(pl.col("calendar_ms").alias("machine_calendar_ms"))
    )
    line_key = ["line", "window", "start", "end", "shift", "final", "calendar_ms"]
    line_key += ["whole_cal_ms", "remaining_ms"]
    summed = [*SUM_COLUMNS, "machine_calendar_ms"]
    columns = [*WINDOW_KEY, *line_key[5:], *summed]
    machine_rows = rows.select(columns)
    line_rows = (
        rows.group_by(line_key)
        .agg(pl.col(summed).sum())
        .with_columns(pl.lit(None, core.index.machine_type).alias("machine"))
        .select(columns)
    )
    plan = pl.concat([machine_rows, line_rows])
    plan = plan.with_columns(kpi_fields()).join(
        _reason_lists(core, candidates, racc), on=RECORD_KEY, how="left", nulls_equal=True
    )
    products = _product_lists(core, candidates, pacc, flags)
    if products is not None:
        plan = plan.join(products, on=RECORD_KEY, how="left", nulls_equal=True)
    table = (
        plan.sort("start", "window", "line", "machine", nulls_last=True)
        .with_columns(
            pl.lit(core.plant.site).alias("site"),
            _rfc3339("start").alias("window_start"),
            _rfc3339("end").alias("window_end"),
            _losses().alias("losses"),
            (pl.col("remaining_ms") / 1000).alias("remaining_s"),
            (pl.col("down_ms") + pl.col("changeover_ms") + pl.col("small_ms")).alias("own_ms"),
        )
        .collect(engine="in-memory")
    )

    def column(name: str) -> list[Any]:
        return table.get_column(name).to_list()

    def optional(name: str) -> list[Any] | repeat[None]:
        return column(name) if name in table.columns else repeat(None)

    # Each row's record, field by field (those made per record below are None here), and
    # beside it what the line fields, the reasons, the products and the revision need.
    # (Not strict: the fields made per record, and products where none has any, are
    # `repeat(None)`.)
    fields = zip(
        *(repeat(None) if name in _PER_RECORD else column(name) for name in RECORD_FIELDS),
        strict=False,
    )
    aside = zip(
        *map(column, ["start", "end", "remaining_s", "whole_cal_ms", "own_ms"]),
        *map(column, ["_reasons", "_reason_s"]),
        *map(optional, ["_products", "_product_runs"]),
        strict=False,
    )
    seen: dict[tuple[str, str, int], dict[str, MachineWindow]] = {}
    # Per line window, each machine's loss cost per category (None: not priceable).
    priced: dict[tuple[str, str, int], dict[str, dict[str, float] | None]] = {}
    pricing = core.pricing
    currency = core.plant.costs.currency
    emitted = dict(state.emitted)
    out: list[dict[str, Any]] = []
    for row, (start, end, remaining_s, whole_cal_ms, own_ms, *lists) in zip(
        fields, aside, strict=True
    ):
        reasons, reason_s, products, runs = lists
        record = dict(zip(RECORD_FIELDS, row, strict=True))
        line, machine, kind = record["line"], record["machine"], record["window"]
        final = record["final"]
        by_reason = () if reasons is None else tuple(zip(reasons, reason_s, strict=True))
        by_product: dict[str, dict[str, Any]] = (
            {} if products is None else dict(zip(products, runs, strict=True))
        )
        product = max(by_product, key=lambda p: (by_product[p]["run_s"], p)) if by_product else None
        if pricing is not None:
            record["loss_cost"] = _loss_cost(
                pricing, currency, priced, record, product, (line, kind, start)
            )
        if machine is not None:
            seen.setdefault((line, kind, start), {})[machine] = MachineWindow(
                record["oee"], record["good_count"], own_ms / 1000, record["planned_s"]
            )
        else:
            record.update(
                line_fields(
                    core.line_shapes[line],
                    seen.get((line, kind, start), {}),
                    shift=record["shift"] if kind == "shift" else None,
                    final=final,
                    full_planned_s=whole_cal_ms / 1000,
                    remaining_s=0.0 if final else remaining_s,
                )
            )
        key: RecordKey = (line, machine, kind, start)
        losses = record["losses"]
        # What a revision compares, in the order checkpoints keep it (Emitted.values).
        compared = (
            *_summed_values(record),
            *(_NO_LOSSES if losses is None else losses.values()),
            by_reason,
            tuple((p, tuple(v.values())) for p, v in by_product.items()) if by_product else (),
            *_line_values(record),
        )
        previous = emitted.get(key)
        # A closed window gets a new revision per epoch of the late data that restates
        # it (however the stream was cut into batches), said even if unchanged.
        restatings = ticks.get(key, [])
        tick = restatings[-1] if restatings else None if previous is None else previous.tick
        bumps = len(restatings)
        if previous is not None and restatings and restatings[0] == previous.tick:
            bumps -= 1  # more late data of the restating already said
        if previous is None:
            revision = bumps
        elif not bumps and previous.values == compared and (previous.final or not final):
            continue  # nothing new to say
        else:
            revision = previous.revision + bumps
        emitted[key] = Emitted(revision, final, end, compared, tick)
        record["downtime_by_reason"] = dict(by_reason)
        record["revision"] = revision
        record["product"] = product
        record["by_product"] = by_product
        out.append(record)
    return out, emitted


def _loss_cost(
    pricing: Pricing,
    currency: str,
    priced: dict[tuple[str, str, int], dict[str, dict[str, float] | None]],
    record: dict[str, Any],
    product: str | None,
    window: tuple[str, str, int],
) -> dict[str, Any] | None:
    """A record's `loss_cost`: a machine's priced at its rates (and kept in `priced` for
    its line), a line's summed over the machines of the window priced before it (the
    plan's sort puts them first). Cost is derived from values the revision compares."""
    machines = priced.setdefault(window, {})
    machine = record["machine"]
    if machine is not None:
        categories = pricing.categories(machine, product, record["losses"], record["reject_count"])
        machines[machine] = categories
        unpriced: list[str] = []
    else:
        known = [c for c in machines.values() if c is not None]
        if not known:
            return None
        categories = {name: sum(c[name] for c in known) for name in PRICED}
        unpriced = sorted(m for m, c in machines.items() if c is None)
    if categories is None:
        return None
    return {
        "currency": currency,
        "total": sum(categories.values()),
        "by_category": categories,
        "unpriced_machines": unpriced,
    }


def _calendar_windows(
    core: Core, candidates: pl.DataFrame, high1: int, water1: int, flush: bool
) -> pl.DataFrame:
    """Calendar planned time per line window, up to `high` while the window is open."""
    windows = candidates.select("line", "window", "start", "end").unique()
    cal = []
    for line, kind, start, end in windows.iter_rows():
        final = flush or water1 >= end
        cutoff = end if final else min(end, high1)
        so_far = core.calendar.planned_ms(line, start, cutoff)
        whole = so_far if final or kind != "shift" else core.calendar.planned_ms(line, start, end)
        cal.append((so_far, final, max(cutoff - start, 0), whole, whole - so_far))
    return windows.hstack(
        pl.DataFrame(
            cal,
            schema={
                "cal_ms": pl.Int64,
                "final": pl.Boolean,
                "calendar_ms": pl.Int64,
                "whole_cal_ms": pl.Int64,
                "remaining_ms": pl.Int64,  # planned time ahead
            },
            orient="row",
        )
    )


def _counter_flags(core: Core, counters_seen: dict[str, frozenset[str]]) -> pl.DataFrame:
    """Which counters each machine has: what its counts are made of (`machine_counts`).
    A machine that sent nothing yet has the counters its config declares."""
    counters = {**core.index.declared_counters, **counters_seen}
    return pl.DataFrame(
        {
            "machine": list(counters),
            "has_t": ["total_count" in c for c in counters.values()],
            "has_g": ["good_count" in c for c in counters.values()],
            "has_r": ["reject_count" in c for c in counters.values()],
            "has_w": [REWORK in c for c in counters.values()],
        },
        schema={
            "machine": core.index.machine_type,
            "has_t": pl.Boolean,
            "has_g": pl.Boolean,
            "has_r": pl.Boolean,
            "has_w": pl.Boolean,
        },
    )


def _both_scopes(core: Core, rows: pl.LazyFrame, by: str, sums: list[str]) -> pl.LazyFrame:
    """`rows` summed per record and `by`: for each machine's record, and for its line's
    (machine null), whose sums are its machines'."""
    columns = [*RECORD_KEY, by, *sums]
    machines = rows.group_by([*RECORD_KEY, by]).agg(pl.col(sums).sum())
    lines = (
        rows.group_by(["line", "window", "start", by])
        .agg(pl.col(sums).sum())
        .with_columns(pl.lit(None, core.index.machine_type).alias("machine"))
    )
    return pl.concat([machines.select(columns), lines.select(columns)])


def _reason_lists(core: Core, candidates: pl.DataFrame, racc: pl.DataFrame) -> pl.LazyFrame:
    """Per record (`RECORD_KEY`): its downtime reasons, longest first and then by name
    (`_reasons`), and their seconds (`_reason_s`); none with no time."""
    rows = candidates.lazy().join(racc.lazy(), on=WINDOW_KEY, how="inner", nulls_equal=True)
    return (
        _both_scopes(core, rows, "reason", ["ms"])
        .filter(pl.col("ms") != 0)
        .group_by(RECORD_KEY)
        .agg(
            pl.col("reason").sort_by("ms", "reason", descending=[True, False]).alias("_reasons"),
            (pl.col("ms").sort_by("ms", "reason", descending=[True, False]) / 1000).alias(
                "_reason_s"
            ),
        )
    )


def _product_lists(
    core: Core, candidates: pl.DataFrame, pacc: pl.DataFrame, flags: pl.DataFrame
) -> pl.LazyFrame | None:
    """Per record (`RECORD_KEY`): its window split by product, by product name: the
    names (`_products`) and each one's run time, counts, P and Q (`_product_runs`, the
    record's `by_product` values); None where no window has a product."""
    if pacc.is_empty():
        return None
    rows = (
        candidates.lazy()
        .join(pacc.lazy(), on=WINDOW_KEY, how="inner", nulls_equal=True)
        .join(flags.lazy(), on="machine", how="left")
        .with_columns(pl.col("has_t", "has_g", "has_r").fill_null(False))
        .with_columns(machine_counts(pl.col("has_t"), pl.col("has_g"), pl.col("has_r")))
    )
    counts = ["total_count", "good_count", "reject_count"]
    sums = _both_scopes(core, rows, "product", ["run_ms", *counts, "ideal_us", "noideal"])
    run_ms, total = pl.col("run_ms"), pl.col("total_count")
    run = pl.struct(
        (run_ms / 1000).alias("run_s"),
        *counts,
        pl.when((run_ms > 0) & (pl.col("noideal") == 0))
        .then(pl.col("ideal_us") / 1e3 / run_ms)
        .alias("performance"),
        pl.when(total > 0).then(pl.col("good_count") / total).alias("quality"),
    )
    return sums.group_by(RECORD_KEY).agg(
        pl.col("product").sort_by("product").alias("_products"),
        run.sort_by("product").alias("_product_runs"),
    )


# The record's fields `_emit` makes per record in Python; the frame gives the others, by
# name (a field neither makes fails there, naming the column).
_PER_RECORD: Final = frozenset(
    record_fields(
        "downtime_by_reason", "revision", "product", "by_product", "loss_cost", *LINE_FIELDS
    )
)
# The fields `kpi_fields` computes from window sums, in record order.
SUMMED_FIELDS: Final = tuple(
    name for name in RECORD_FIELDS if name in {e.meta.output_name() for e in kpi_fields()}
)
_summed_values: Final = itemgetter(*SUMMED_FIELDS)
_line_values: Final = itemgetter(*LINE_FIELDS)
_NO_LOSSES: Final = (None,) * len(LOSS_KEYS)


def _losses() -> pl.Expr:
    """The record's `losses` object from `kpi_fields`' loss columns: null with them
    (where a part has no ideal cycle time)."""
    columns = [pl.col(f"loss_{key}").alias(key) for key in LOSS_KEYS]
    return pl.when(pl.col(f"loss_{LOSS_KEYS[0]}").is_not_null()).then(pl.struct(columns))


def _rfc3339(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Datetime("ms", "UTC")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


SAMPLE_ORDER = ["machine", "signal", "ts", "count", "num", "text", "reason"]
EVICT_EVERY_MS = 5 * 60_000


def _last_per_signal(samples: pl.DataFrame) -> pl.DataFrame:
    """The last sample per (machine, signal), in the core's sample order.

    Also kept: every correction (`reason` sample), and the first sample of the last
    state segment (where the state or reason last changed): a correction of a stop holds
    over the stop's repeated samples, so its start must outlive them.
    """
    fixes = pl.col("signal") == "reason"
    rest = samples.filter(~fixes)
    # Only rows at the latest time of their (machine, signal) can be last: sort just those.
    latest = rest.filter(pl.col("ts") == pl.col("ts").max().over("machine", "signal"))
    last = (
        latest.sort(SAMPLE_ORDER, nulls_last=True)
        .group_by("machine", "signal", maintain_order=True)
        .last()
        .select(samples.columns)
    )
    starts = (
        rest.filter(pl.col("signal") == "state")
        .sort(STATE_ORDER, nulls_last=True)
        .with_columns(segments().alias("_seg"))
        .filter(pl.col("_seg") == pl.col("_seg").max().over("machine"))
        .group_by("machine", maintain_order=True)
        .first()
        .select(samples.columns)
    )
    return pl.concat([starts, last, samples.filter(fixes)]).unique(maintain_order=True)


def _evict_samples(samples: pl.DataFrame, floor: int) -> pl.DataFrame:
    """Keep samples from `floor` on, plus the last before it per (machine, signal), and
    the corrections of the state samples kept."""
    old = pl.col("ts") < floor
    fixes = pl.col("signal") == "reason"
    kept = pl.concat([_last_per_signal(samples.filter(old & ~fixes)), samples.filter(~old)])
    states = kept.filter(pl.col("signal") == "state").select("machine", "ts")
    old_fixes = samples.filter(old & fixes).join(states, on=["machine", "ts"], how="semi")
    return pl.concat([old_fixes, kept])
