"""Synthetic plant telemetry for the replay benchmark: a plant YAML and an events file.

`generate(out_dir, machines, events, seed, fmt)` writes a plant of `machines` machines
(lines of 50) and `events` telemetry events: 10 signals per machine per second, all
machines interleaved in time order, from 2026-11-02T05:00:00Z (06:00 in Berlin, the start
of the early shift). N events are N / (10 * machines) seconds of data; a last, partial
second is cut at exactly N events.

The ten signals of each machine and second, in this order:

- `state`: a per-machine Markov chain sampled every second: mostly "running", sometimes
  "down" (with a `reason`: jam, material_shortage, electrical), "idle", rarely
  "changeover". The chain is drawn as episodes with geometric holding times, which is
  the same as a per-second chain with a fixed probability of leaving each state.
- `total_count`: cumulative, +0..3 per second while running, from a random baseline
  around 1e6.
- `reject_count`: cumulative, +1 in about 2% of the running seconds that made parts.
- seven analog tags: temperature, speed, pressure, vibration, current, voltage, humidity.

Everything is vectorised in Polars (no NumPy needed): the random numbers are hashes of a
row index with a per-purpose seed, so a (machines, events, seed) triple always gives the
same file with the same Polars version. Files are named by their parameters and reused
when they exist.

    python -m bench.generate --machines 1000 --events 10000000 --format parquet --out bench/out
"""

from __future__ import annotations

import argparse
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

# Bump when the generated data changes, so cached files from an older generator are not reused.
GENERATOR_VERSION: Final = 1
FORMATS: Final = ("parquet", "jsonl")
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "out"
START: Final = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
MACHINES_PER_LINE: Final = 50
IDEAL_CYCLE_TIME_S: Final = 0.5
COUNTER_MAX: Final = 2_147_483_647
DOWN_REASONS: Final = ("jam", "material_shortage", "electrical")
ANALOG: Final = ("temperature", "speed", "pressure", "vibration", "current", "voltage", "humidity")
SIGNALS: Final = ("state", "total_count", "reject_count", *ANALOG)
SIGNALS_PER_MACHINE: Final = len(SIGNALS)
SHIFTS: Final = (  # name, start, end, (break start, break end): local time
    ("early", "06:00", "14:00", ("10:00", "10:30")),
    ("late", "14:00", "22:00", ("18:00", "18:30")),
    ("night", "22:00", "06:00", ("02:00", "02:30")),
)

# The chain: mean seconds spent in each state before leaving it (geometric holding time),
# and where a machine goes when it stops running. Every other state returns to running.
MEAN_HOLD_S: Final = {"running": 600.0, "down": 120.0, "idle": 90.0, "changeover": 900.0}
STOP_STATES: Final = (("down", 0.60), ("idle", 0.35), ("changeover", 0.05))

# Analog tags: (mean, noise amplitude, decimals); speed follows the state.
ANALOG_SHAPE: Final = {
    "temperature": (65.0, 4.0, 2),
    "speed": (120.0, 6.0, 1),
    "pressure": (5.5, 0.4, 3),
    "vibration": (2.2, 0.8, 3),
    "current": (14.0, 2.5, 2),
    "voltage": (400.0, 6.0, 1),
    "humidity": (45.0, 8.0, 1),
}


def file_names(machines: int, events: int, seed: int, fmt: str) -> tuple[str, str]:
    """The config and events file names for these parameters (the cache key)."""
    stem = f"m{machines}-e{events}-s{seed}-v{GENERATOR_VERSION}"
    return f"plant-{stem}.yaml", f"events-{stem}.{fmt}"


def generate(out_dir: Path, machines: int, events: int, seed: int, fmt: str) -> tuple[Path, Path]:
    """Write (or reuse) the plant YAML and the events file; return their paths."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if machines < 1 or events < 1:
        raise ValueError("machines and events must be positive")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_name, events_name = file_names(machines, events, seed, fmt)
    config_path, events_path = out_dir / config_name, out_dir / events_name
    if not config_path.exists():
        _write_atomically(config_path, lambda tmp: tmp.write_text(plant_yaml(machines), "utf-8"))
    if not events_path.exists():
        frame = event_frame(machines, events, seed)
        if fmt == "parquet":
            _write_atomically(events_path, lambda tmp: frame.write_parquet(tmp))
        else:
            _write_atomically(events_path, lambda tmp: _write_jsonl(frame, tmp))
    return config_path, events_path


def _write_atomically(path: Path, write: Any) -> None:
    # A run killed half-way must not leave a truncated file that the cache then trusts.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def machine_id(index: int) -> str:
    return f"m{index + 1:04d}"


def plant_yaml(machines: int) -> str:
    """The plant: site "bench" in Berlin, three 8-hour shifts, lines of 50 machines."""
    out = [
        f"# Generated by bench/generate.py (v{GENERATOR_VERSION}): {machines} machines,",
        f"# lines of {MACHINES_PER_LINE}, three 8-hour shifts with one 30-minute break each.",
        "site: bench",
        "timezone: Europe/Berlin",
        "shifts:",
    ]
    for name, start, end, (break_start, break_end) in SHIFTS:
        out += [
            f"  - name: {name}",
            f'    start: "{start}"',
            f'    end: "{end}"',
            f'    breaks: [{{start: "{break_start}", end: "{break_end}"}}]',
        ]
    out.append("lines:")
    for first in range(0, machines, MACHINES_PER_LINE):
        out += [f"  - id: line-{first // MACHINES_PER_LINE + 1:02d}", "    machines:"]
        for i in range(first, min(first + MACHINES_PER_LINE, machines)):
            out.append(
                f"      - {{id: {machine_id(i)}, ideal_cycle_time_s: {IDEAL_CYCLE_TIME_S}, "
                f"counter_max: {COUNTER_MAX}}}"
            )
    return "\n".join(out) + "\n"


# -- random numbers as hashes ------------------------------------------------------------


def _uniform(index: pl.Expr, seed: int, stream: int) -> pl.Expr:
    """A uniform float in [0, 1) per row, from the row's index; one stream per purpose."""
    bits = index.hash(seed * 1_000 + stream) % (1 << 53)
    return bits.cast(pl.Float64) / float(1 << 53)


def _noise(index: pl.Expr, seed: int, stream: int) -> pl.Expr:
    """Roughly normal noise (mean 0, sd 1): the sum of three uniforms, rescaled."""
    total = sum((_uniform(index, seed, stream * 10 + k) for k in range(3)), pl.lit(0.0))
    return (total - 1.5) * 2.0


def _geometric(u: pl.Expr, mean: pl.Expr) -> pl.Expr:
    """Holding time in whole seconds (>= 1) with the given mean: inverse CDF of u."""
    leave = 1.0 / mean
    return ((1.0 - u).log() / (1.0 - leave).log()).floor().cast(pl.Int64) + 1


# -- events ------------------------------------------------------------------------------


def _episodes(machines: int, seconds: int, seed: int) -> pl.DataFrame:
    """Per machine, the chain's episodes (state, reason, start second) covering `seconds`."""
    mean_cycle = MEAN_HOLD_S["running"] + min(v for k, v in MEAN_HOLD_S.items() if k != "running")
    per_machine = max(8, math.ceil(4 * seconds / mean_cycle) + 8)
    while True:
        episodes = _draw_episodes(machines, per_machine, seed)
        ends = episodes.group_by("machine").agg(pl.col("end").max())
        covered: int = ends.select(pl.col("end").min()).item()
        if covered >= seconds:
            return episodes.filter(pl.col("start") < seconds)
        per_machine *= 2


def _draw_episodes(machines: int, per_machine: int, seed: int) -> pl.DataFrame:
    row = pl.int_range(0, pl.len(), dtype=pl.UInt64)
    stop_u = _uniform(row, seed, 2)
    stop_state = pl.lit(STOP_STATES[-1][0])
    threshold = 0.0
    choices = []
    for name, share in STOP_STATES[:-1]:
        threshold += share
        choices.append((threshold, name))
    for threshold, name in reversed(choices):
        stop_state = pl.when(stop_u < threshold).then(pl.lit(name)).otherwise(stop_state)
    # Each machine starts running or stopped at random, then alternates.
    first_running = _uniform(pl.col("machine").cast(pl.UInt64), seed, 3) < 0.85
    running = (pl.col("k") % 2 == 0) == first_running
    state = pl.when(running).then(pl.lit("running")).otherwise(stop_state)
    mean = pl.col("state").replace_strict(MEAN_HOLD_S, return_dtype=pl.Float64)
    reason_pick = (_uniform(row, seed, 4) * len(DOWN_REASONS)).floor().cast(pl.Int64)
    reason = pl.lit(list(DOWN_REASONS)).list.get(reason_pick)
    frame = (
        pl.DataFrame({"machine": pl.int_range(0, machines, eager=True, dtype=pl.Int32)})
        .with_columns(k=pl.int_ranges(0, per_machine, dtype=pl.Int32))
        .explode("k")
        .with_columns(state=state)
        .with_columns(
            hold=_geometric(_uniform(row, seed, 1), mean),
            reason=pl.when(pl.col("state") == "down").then(reason),
        )
    )
    # A machine that starts stopped is somewhere inside that stop: shorten the first hold.
    first_cut = (_uniform(row, seed, 5) * pl.col("hold")).floor().cast(pl.Int64)
    frame = frame.with_columns(
        hold=pl.when(pl.col("k") == 0).then(pl.col("hold") - first_cut).otherwise("hold")
    )
    return frame.with_columns(end=pl.col("hold").cum_sum().over("machine")).with_columns(
        start=pl.col("end") - pl.col("hold")
    )


def event_frame(machines: int, events: int, seed: int) -> pl.DataFrame:
    """Exactly `events` rows: ts (Datetime ms UTC), machine, signal, value (text), reason."""
    per_second = machines * SIGNALS_PER_MACHINE
    seconds = -(-events // per_second)
    episodes = _episodes(machines, seconds, seed)
    # One row per machine and second, in machine order first (for the cumulative counters).
    second = pl.int_ranges("start", pl.min_horizontal("end", pl.lit(seconds)), dtype=pl.Int32)
    wide = (
        episodes.select("machine", "state", "reason", second=second)
        .explode("second")
        .sort("machine", "second")
    )
    row = pl.int_range(0, pl.len(), dtype=pl.UInt64)
    is_running = pl.col("state") == "running"
    parts = (
        pl.when(is_running).then((_uniform(row, seed, 10) * 4).floor().cast(pl.Int64)).otherwise(0)
    )
    reject = pl.when(is_running & (pl.col("parts") > 0) & (_uniform(row, seed, 11) < 0.02))
    baseline = 900_000 + (_uniform(pl.col("machine").cast(pl.UInt64), seed, 12) * 200_000)
    wide = wide.with_columns(parts=parts).with_columns(rejects=reject.then(1).otherwise(0))
    wide = wide.with_columns(
        total=baseline.floor().cast(pl.Int64) + pl.col("parts").cum_sum().over("machine"),
        rejected=(baseline / 100).floor().cast(pl.Int64)
        + pl.col("rejects").cum_sum().over("machine"),
    )
    analog = []
    for stream, (name, (mean, spread, decimals)) in enumerate(ANALOG_SHAPE.items(), start=20):
        reading = mean + _noise(row, seed, stream) * spread
        if name == "speed":
            reading = pl.when(is_running).then(reading).otherwise(reading * 0.01)
        analog.append(reading.round(decimals).cast(pl.String))
    ts = pl.lit(START) + pl.duration(seconds=pl.col("second"))
    frame = (
        wide.sort("second", "machine")
        .select(
            ts=ts.dt.cast_time_unit("ms").dt.convert_time_zone("UTC"),
            machine=pl.format("m{}", (pl.col("machine") + 1).cast(pl.String).str.zfill(4)),
            signal=pl.lit(list(SIGNALS)),
            value=pl.concat_list(
                pl.col("state"),
                pl.col("total").cast(pl.String),
                pl.col("rejected").cast(pl.String),
                *analog,
            ),
            reason=pl.concat_list(
                pl.col("reason"), *[pl.lit(None, pl.String)] * (SIGNALS_PER_MACHINE - 1)
            ),
        )
        .explode("signal", "value", "reason")
    )
    return frame.head(events)


def json_lines(frame: pl.DataFrame) -> pl.Series:
    """One JSON event per row, as a third-party producer writes it: ts as RFC 3339 with Z,
    numbers as numbers, states as text."""
    text = pl.col("value")
    value = pl.when(pl.col("signal") == "state").then(pl.concat_str(pl.lit('"'), text, pl.lit('"')))
    reason = pl.when(pl.col("reason").is_not_null()).then(
        pl.concat_str(pl.lit(',"reason":"'), pl.col("reason"), pl.lit('"'))
    )
    line = pl.concat_str(
        pl.lit('{"ts":"'),
        pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        pl.lit('","machine":"'),
        pl.col("machine"),
        pl.lit('","signal":"'),
        pl.col("signal"),
        pl.lit('","value":'),
        value.otherwise(text),
        reason.otherwise(pl.lit("")),
        pl.lit("}"),
    )
    return frame.select(line=line).to_series()


def _write_jsonl(frame: pl.DataFrame, path: Path) -> None:
    # A one-column CSV without header or quoting is exactly the lines themselves.
    json_lines(frame).to_frame().write_csv(path, include_header=False, quote_style="never")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate",
        description="Write (or reuse) a synthetic plant config and telemetry events file.",
    )
    parser.add_argument("--machines", type=int, default=1000, help="default: 1000")
    parser.add_argument("--events", type=int, default=10_000_000, help="default: 10000000")
    parser.add_argument("--seed", type=int, default=42, help="default: 42")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="parquet")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    cached = (args.out / file_names(args.machines, args.events, args.seed, args.fmt)[1]).exists()
    started = time.perf_counter()
    config, events = generate(args.out, args.machines, args.events, args.seed, args.fmt)
    took = "reused (already generated)" if cached else f"{time.perf_counter() - started:.1f} s"
    print(f"config: {config}")
    print(f"events: {events} ({events.stat().st_size / 2**20:,.1f} MiB; {took})")


if __name__ == "__main__":
    main()
