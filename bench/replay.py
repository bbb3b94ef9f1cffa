"""Replay benchmark: `linepulse replay` on a generated plant, beside what Polars alone takes.

    python -m bench.replay                      # 1,000 machines, 10,000,000 events, Parquet
    python -m bench.replay --quick              # 1,000,000 events
    python -m bench.replay --jsonl-events 1000000   # also a JSON-lines replay of 1M events

Each figure comes from its own child process, timed from start to exit (interpreter start
and imports included, for the floor as for the replay), with the child's peak resident
set size from `wait4` (the kernel's high-water mark, not a sample). The floor is
`pl.read_parquet(path).sort("ts")` on the same file: reading and ordering the events
and nothing else. The goal lines are printed, never asserted: the exit code is 0 whatever
the figures are, unless the benchmark itself cannot run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import harness
from bench.generate import file_names, generate
from bench.harness import LINEPULSE, busy_note, machine_lines, mark

GOAL_EVENTS_PER_S: Final = 1_000_000
GOAL_X_FLOOR: Final = 3.0
GOAL_PEAK_MIB: Final = 2048
GOAL_AT_EVENTS: Final = 10_000_000
QUICK_EVENTS: Final = 1_000_000
DEFAULT_WINDOWS: Final = "shift,day,1h,15m"
WINDOW_KINDS: Final = ("1m", "15m", "1h", "shift", "day")
SHOWN_REJECTS: Final = 5

# The measuring helper, run as `python -c _MEASURE TIMEOUT STDOUT STDERR CMD...`: it runs
# CMD once, with its output to the two files, and prints wall seconds from spawn to exit,
# the peak RSS (`ru_maxrss` from `wait4`), the exit code and 1 if it killed CMD on timeout.
_MEASURE: Final = """\
import os, subprocess, sys, threading, time
timeout, out_path, err_path, *cmd = sys.argv[1:]
with open(out_path, "wb") as out, open(err_path, "wb") as err:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
killed = threading.Event()
def kill():
    killed.set()
    proc.kill()
timer = threading.Timer(float(timeout), kill) if float(timeout) > 0 else None
if timer:
    timer.start()
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - started
if timer:
    timer.cancel()
proc.returncode = os.waitstatus_to_exitcode(status)
print(seconds, usage.ru_maxrss, proc.returncode, int(killed.is_set()))
"""

# The floors, run as `python -c`: import Polars, read the whole file, sort it by time.
# They print the rows read and the seconds spent importing, reading and sorting.
_FLOOR_PARQUET: Final = """\
import sys, time
t0 = time.perf_counter()
import polars as pl
t1 = time.perf_counter()
frame = pl.read_parquet(sys.argv[1])
t2 = time.perf_counter()
frame = frame.sort("ts")
t3 = time.perf_counter()
print(frame.height, t1 - t0, t2 - t1, t3 - t2)
"""
# JSON lines carry numbers and words in `value`: read every column as text (as the
# decoders accept it) rather than let Polars guess from the first lines.
_FLOOR_JSONL: Final = """\
import sys, time
t0 = time.perf_counter()
import polars as pl
t1 = time.perf_counter()
schema = dict.fromkeys(["ts", "machine", "signal", "value", "reason"], pl.String)
frame = pl.read_ndjson(sys.argv[1], schema=schema)
t2 = time.perf_counter()
frame = frame.sort("ts")
t3 = time.perf_counter()
print(frame.height, t1 - t0, t2 - t1, t3 - t2)
"""


@dataclass(frozen=True)
class Run:
    """One child process: wall seconds from spawn to exit, peak RSS, how it ended."""

    seconds: float
    peak_mib: float
    returncode: int
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class Row:
    what: str
    events: int
    run: Run
    floor: Run | None  # what `x floor` compares against

    @property
    def events_per_s(self) -> float:
        return self.events / self.run.seconds if self.run.seconds > 0 else float("inf")

    @property
    def x_floor(self) -> float | None:
        if self.floor is None or not self.floor.ok or self.floor.seconds <= 0:
            return None
        return self.run.seconds / self.floor.seconds


def measure(cmd: list[str], out_dir: Path, name: str, timeout: float | None) -> Run:
    """Run `cmd` in a child of a fresh, small helper process; return its time and peak RSS.

    The helper runs `cmd`, times it and reads its peak RSS with `wait4`. `wait4` gives the
    usage of exactly that child, so measurements do not add up the way the cumulative
    RUSAGE_CHILDREN would. The helper is needed because Linux carries the parent's RSS
    high-water mark into a child's `ru_maxrss` across fork + exec. Spawned straight from
    this process, which may have just generated 10M events, every child would report at
    least this process's peak. The helper's own peak (about 10 MiB) is below that of any
    Python process measured.
    """
    stdout_path, stderr_path = out_dir / f"{name}.stdout", out_dir / f"{name}.stderr"
    helper = [sys.executable, "-c", _MEASURE, str(timeout or 0), str(stdout_path)]
    done = subprocess.run(
        [*helper, str(stderr_path), *cmd], capture_output=True, text=True, check=False
    )
    try:
        seconds, maxrss, returncode, killed = done.stdout.split()
    except ValueError:
        raise RuntimeError(f"the measuring helper failed: {done.stderr.strip()}") from None
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = int(maxrss) / (2**20 if sys.platform == "darwin" else 2**10)
    return Run(
        seconds=float(seconds),
        peak_mib=peak,
        returncode=int(returncode),
        timed_out=killed == "1",
        stdout=stdout_path.read_text("utf-8", "replace"),
        stderr=stderr_path.read_text("utf-8", "replace"),
    )


def warm(path: Path) -> None:
    """Read the file once so that every measurement starts with it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def floor(events: Path, out_dir: Path, timeout: float | None) -> Run:
    script = _FLOOR_PARQUET if events.suffix == ".parquet" else _FLOOR_JSONL
    return measure(
        [sys.executable, "-c", script, str(events)], out_dir, f"floor-{_tag(events)}", timeout
    )


def replay(
    config: Path, events: Path, windows: list[str], out_dir: Path, timeout: float | None
) -> tuple[Run, Path]:
    records = out_dir / f"records-{_tag(events)}.jsonl"
    records.unlink(missing_ok=True)  # never count the records of an earlier run
    cmd = [*LINEPULSE, "replay", "--config", str(config)]
    cmd += [str(events), "--no-progress", "--output", str(records)]
    for kind in windows:
        cmd += ["--window", kind]
    return measure(cmd, out_dir, f"replay-{_tag(events)}", timeout), records


def _tag(events: Path) -> str:
    """`events-m1000-e1000000-s42-v1-parquet`: names this input's output files."""
    return f"{events.stem}-{events.suffix.lstrip('.')}"


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            lines += chunk.count(b"\n")
    return lines


# -- report ------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    header = f"{'what':<22} {'events':>12} {'seconds':>9} {'events/s':>12} {'peak RSS MiB':>13} "
    header += f"{'x floor':>8}"
    out = [header, "-" * len(header)]
    for row in rows:
        run = row.run
        if not run.ok:
            status = (
                f"timed out after {run.seconds:.1f} s"
                if run.timed_out
                else (f"FAILED (exit {run.returncode}) after {run.seconds:.1f} s")
            )
            out.append(f"{row.what:<22} {row.events:>12,} {status}")
            continue
        ratio = row.x_floor
        out.append(
            f"{row.what:<22} {row.events:>12,} {run.seconds:>9.2f} {row.events_per_s:>12,.0f} "
            f"{run.peak_mib:>13,.0f} {'' if ratio is None else f'{ratio:.2f}x':>8}"
        )
    return out


def goal_lines(row: Row) -> list[str]:
    run = row.run
    where = f"{row.events:,} Parquet events"
    if row.events != GOAL_AT_EVENTS:
        where += f"; the goal is stated for {GOAL_AT_EVENTS:,}"
    lines = [
        f"goal: >= {GOAL_EVENTS_PER_S:,} events/s, <= {GOAL_X_FLOOR:g}x floor, "
        f"<= {GOAL_PEAK_MIB} MiB at {GOAL_AT_EVENTS // 1_000_000}M events (measured at {where}):"
    ]
    if not run.ok:
        return [*lines, "  MISS  the replay did not finish (see above)"]

    rate, ratio = row.events_per_s, row.x_floor
    lines.append(
        f"  {mark(rate >= GOAL_EVENTS_PER_S)}  events/s     {rate:>12,.0f}  "
        f"(goal >= {GOAL_EVENTS_PER_S:,})"
    )
    if ratio is None:
        lines.append("  MISS  x floor            n/a  (the floor did not run)")
    else:
        lines.append(
            f"  {mark(ratio <= GOAL_X_FLOOR)}  x floor      {ratio:>11.2f}x  "
            f"(goal <= {GOAL_X_FLOOR:g}x)"
        )
    lines.append(
        f"  {mark(run.peak_mib <= GOAL_PEAK_MIB)}  peak RSS MiB {run.peak_mib:>12,.0f}  "
        f"(goal <= {GOAL_PEAK_MIB})"
    )
    return lines


def floor_note(name: str, run: Run) -> str:
    """The floor's own split: interpreter start + `import polars`, read, sort."""
    try:
        rows, imported, read, ordered = run.stdout.split()
        start = run.seconds - float(read) - float(ordered)
        return (
            f"{name}: {int(rows):,} rows; read {float(read):.2f} s + sort {float(ordered):.2f} s; "
            f"python start + import polars {start:.2f} s (of which import {float(imported):.2f} s)"
        )
    except ValueError:
        return f"{name}: did not report its split; stderr: {run.stderr.strip()[-500:]}"


def replay_notes(name: str, run: Run, records: Path) -> list[str]:
    """The replay's summary lines from stderr, and any rejected inputs it reported."""
    summary = [line for line in run.stderr.splitlines() if line.startswith("replay:")]
    other = [line for line in run.stderr.splitlines() if line and not line.startswith("replay:")]
    notes = [f"{name}: {count_lines(records):,} records in {records}"]
    notes += [f"  stderr | {line}" for line in summary] or ["  stderr | (no summary line)"]
    if other:
        notes.append(f"  {len(other):,} other stderr line(s), e.g.:")
        notes += [f"  stderr | {line}" for line in other[:SHOWN_REJECTS]]
    return notes


# -- main --------------------------------------------------------------------------------


def _windows(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in WINDOW_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"windows must be a comma-separated subset of {','.join(WINDOW_KINDS)}"
        )
    return kinds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description="Time `linepulse replay` on generated telemetry against a Polars floor.",
    )
    parser.add_argument("--machines", type=int, default=1000, help="default: 1000")
    parser.add_argument(
        "--events", type=int, default=GOAL_AT_EVENTS, help=f"default: {GOAL_AT_EVENTS}"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_EVENTS:,} events instead of --events"
    )
    parser.add_argument(
        "--windows",
        type=_windows,
        default=_windows(DEFAULT_WINDOWS),
        help=f"comma-separated window kinds to output (default: {DEFAULT_WINDOWS})",
    )
    parser.add_argument(
        "--jsonl-events",
        type=int,
        default=0,
        metavar="N",
        help="also replay N events from JSON lines (default: 0, none)",
    )
    harness.add_common_arguments(
        parser, "kill a measured child after S seconds (default: no limit)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = QUICK_EVENTS
    if args.machines < 1 or args.events < 1 or args.jsonl_events < 0:
        parser.error("--machines and --events must be positive, --jsonl-events >= 0")
    return args


def _generate(out: Path, machines: int, events: int, seed: int, fmt: str) -> tuple[Path, Path]:
    cached = (out / file_names(machines, events, seed, fmt)[1]).exists()
    started = time.perf_counter()
    config, path = generate(out, machines, events, seed, fmt)
    took = "cached" if cached else f"generated in {time.perf_counter() - started:.1f} s"
    print(f"input: {path.name} ({path.stat().st_size / 2**20:,.1f} MiB, {took})", flush=True)
    return config, path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out
    for line in machine_lines():
        print(line)
    seconds = -(-args.events // (10 * args.machines))
    print(
        f"plant: {args.machines:,} machines x 10 signals, 1 s samples; {args.events:,} events "
        f"= {seconds:,} s of data; windows {','.join(args.windows)}; seed {args.seed}",
        flush=True,
    )

    config, parquet = _generate(out, args.machines, args.events, args.seed, "parquet")
    jsonl = None
    if args.jsonl_events:
        jsonl = _generate(out, args.machines, args.jsonl_events, args.seed, "jsonl")

    rows: list[Row] = []
    notes: list[str] = []
    warm(parquet)
    print(busy_note(), flush=True)
    print("measuring: floor (parquet) ...", flush=True)
    floor_run = floor(parquet, out, args.timeout)
    rows.append(Row("floor (parquet)", args.events, floor_run, floor_run))
    notes.append(floor_note("floor (parquet)", floor_run))
    print("measuring: replay (parquet) ...", flush=True)
    replay_run, records = replay(config, parquet, args.windows, out, args.timeout)
    main_row = Row("replay (parquet)", args.events, replay_run, floor_run)
    rows.append(main_row)
    notes += replay_notes("replay (parquet)", replay_run, records)

    if jsonl is not None:
        jsonl_config, jsonl_events = jsonl
        warm(jsonl_events)
        print("measuring: floor (jsonl) ...", flush=True)
        jsonl_floor = floor(jsonl_events, out, args.timeout)
        rows.append(Row("floor (jsonl)", args.jsonl_events, jsonl_floor, jsonl_floor))
        notes.append(floor_note("floor (jsonl)", jsonl_floor))
        print("measuring: replay (jsonl) ...", flush=True)
        jsonl_run, jsonl_records = replay(
            jsonl_config, jsonl_events, args.windows, out, args.timeout
        )
        rows.append(Row("replay (jsonl)", args.jsonl_events, jsonl_run, jsonl_floor))
        notes += replay_notes("replay (jsonl)", jsonl_run, jsonl_records)

    print()
    for line in table(rows):
        print(line)
    print("(x floor: seconds / the floor's seconds for the same file format)")
    print()
    for line in goal_lines(main_row):
        print(line)
    print()
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
