"""Peers, side by side in one run on one generated workload.

    python -m bench.peers            # 100 machines; replay 1,000,000 events, stream 500,000
    python -m bench.peers --quick    # replay 200,000 events, stream 100,000: under 2 minutes

One workload: bench/generate.py's Parquet file (10 signals per machine per second). Then:

1. **Stream**, through one real Kafka broker (bench/harness.py's `Broker`, free loopback
   ports): the first `--stream-events` events of that file as one JSON event per record,
   keyed by machine, then, each in its own process and one after the other, on that same
   topic: the Quix Streams peer (bench/stream_peer_quix.py), the Bytewax peer
   (bench/peer_bytewax.py), and the LinePulse KPI worker (`linepulse kpi`; last, since it
   forwards records to their line's home partition on the same topic).
2. **Replay**, on the whole file: `linepulse replay --window W` and the DuckDB-SQL peer
   (bench/peer_duckdb_sql.py), each in its own process; then the SQL peer's records are
   checked against LinePulse's for the same (machine, window).

Events/s: for LinePulse and Quix, from their consumer group turning Stable to its
committed offsets reaching the end of every partition (bench/throughput.py's measure; both
commit every second, so the end is known to within about a second). Bytewax commits
nothing to Kafka: it reports from its first event read to the end of its dataflow (end
of input reached, every window closed and written). For the replay, from spawn to exit.
Peak RSS: for the stream, the kernel's high-water mark of the process, and the sampled
resident set of its process tree when it has children (every 50 ms); for the replay, the
high-water mark from `wait4` (bench/replay.py's measure). Everything is printed; nothing
is asserted; the exit code is 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl
from aiokafka.admin import NewTopic

from bench import harness, throughput
from bench import replay as file_bench
from bench.generate import SIGNALS_PER_MACHINE, file_names, generate
from bench.peer_duckdb_sql import COLUMNS, WINDOW_MS
from bench.throughput import Rows
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config

DEFAULT_MACHINES: Final = 100  # few enough that 1-minute windows close within the data
DEFAULT_EVENTS: Final = 1_000_000
QUICK_EVENTS: Final = 200_000
QUICK_STREAM_EVENTS: Final = 100_000
TOLERANCE: Final = 1e-6  # absolute, on seconds and ratios

WHAT: Final = {
    "linepulse-kpi": "all KPIs; 1m,15m,1h,shift,day; lines; calendar; restatements",
    "quix": "5 sums per machine-minute (samples, parts, rejects, run, down)",
    "bytewax": "5 sums per machine-minute (samples, parts, rejects, run, down)",
    "linepulse-replay": "all KPIs, {window} records of machines and lines, calendar",
    "duckdb": "state times, counts, A x P x Q per machine-{window}; no calendar",
}
SUMMARY: Final = [
    "What each computes (the peers do less than LinePulse):",
    "  LinePulse kpi worker: every KPI of a record (planned/run/down/unknown time, stops, "
    "counts, availability, performance, quality, OEE, MTBF/MTTR, losses...) for machines and "
    "lines in 1m, 15m, 1h, shift and day windows on the plant's shift calendar; open-window "
    "updates, final records, restatements of closed windows by late data; checkpoints.",
    "  Quix Streams / Bytewax: per machine and tumbling 1-minute event-time window (10 s "
    "grace): KPI samples, parts and rejects (positive counter steps; a step down is a reset), "
    "time in running and in down/idle/changeover (not split at window boundaries); no "
    "calendar, no planned time, no OEE, no lines, no other windows, no restatements.",
    "  linepulse replay: the same core as the worker, over the file, final records only.",
    "  DuckDB SQL: one query: per machine and tumbling window, time in each state (LEAD()), "
    "counts from counter steps (LAG()), availability x performance x quality; the whole "
    "window is planned time (no calendar); no lines, stops, losses or late data.",
]


# -- the stream ----------------------------------------------------------------------------


async def run_bytewax(
    args: argparse.Namespace, kafka: throughput.Kafka, plant: PlantConfig, out: Path
) -> throughput.Throughput:
    """Run the Bytewax peer to the end of its input; time it from its own report."""
    output = f"bytewax-out-{plant.kafka.group}"
    partitions = plant.kafka.telemetry.partitions
    await kafka.admin.create_topics([NewTopic(output, partitions, 1)])
    what = f"Bytewax {harness.version('bytewax')}, JSON per record"
    cmd = [sys.executable, "-m", "bench.peer_bytewax", "--broker", kafka.bootstrap]
    cmd += ["--input", plant.kafka.telemetry.name, "--output", output]
    print(f"measuring: {what} ...", flush=True)
    meter = harness.CpuMeter()
    spawned = time.time()
    child = harness.Child("bytewax", cmd, out / "peer-bytewax.log")
    limit = throughput.timeout_for(args, args.json_events)
    code: int | None = None
    try:
        while child.alive() and time.perf_counter() - child.started < limit:
            child.sample()
            await asyncio.sleep(throughput.POLL_S)
    finally:
        code = child.stop()
    report = _bytewax_report(child)
    others = meter.others_cores(child.cpu_s)
    if report is None or code != 0:
        reason = f"exited with code {code}" if code is not None else "did not finish"
        caught = throughput.Caught(
            False,
            time.perf_counter() - child.started,
            None,
            child.peak_mib,
            child.cpu_s,
            0.0,
            others,
            f"{reason} within {limit:.0f} s; no report (see {child.log})",
        )
        row = throughput.Throughput(what, args.json_events, caught)
    else:
        caught = throughput.Caught(
            True,
            report["done"] - spawned,
            report["first_event"] - spawned,
            child.peak_mib,
            child.cpu_s,
            0.0,
            others,
        )
        row = throughput.Throughput(what, args.json_events, caught)
        row.notes.append(
            f"  it read {report['events']:,} records ({args.json_events:,} produced); "
            f"{report['late']:,} late; last record read "
            f"{report['done'] - report['last_event']:.2f} s before the end of its dataflow"
        )
    row.notes = throughput.log_notes(what, child, code) + row.notes
    windows = await kafka.count(output)
    row.notes.append(f"  {windows:,} window results on its output topic")
    return row


def _bytewax_report(child: harness.Child) -> dict[str, Any] | None:
    for line in reversed(child.log_lines()):
        if line.startswith("bytewax peer: "):
            report: dict[str, Any] = orjson.loads(line.removeprefix("bytewax peer: "))
            if report.get("first_event") is not None:
                return report
    return None


async def measure_stream(
    args: argparse.Namespace, frame: pl.DataFrame, bootstrap: str, tmp: Path, out: Path
) -> Rows:
    run = Rows()
    config = out / "plant-peers.yaml"
    tag = uuid.uuid4().hex[:8]
    config.write_text(
        throughput.plant_text(args.machines, throughput.kafka_block(tag, "peers", args.partitions))
    )
    plant = load_config(config)
    kafka = throughput.Kafka(bootstrap)
    await kafka.start()
    try:
        await ensure_topics(bootstrap, plant.kafka)
        started = time.perf_counter()
        await throughput.produce_json(bootstrap, plant.kafka.telemetry.name, frame, args.partitions)
        print(
            f"produced: {frame.height:,} events as JSON records in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        print(harness.busy_note(), flush=True)
        await throughput.run_peer(args, kafka, plant, tmp, out, run)
        run.rows.append(await run_bytewax(args, kafka, plant, out))
        row, minutes = await throughput.run_worker(
            "LinePulse kpi worker, JSON per record",
            args.json_events,
            kafka,
            plant,
            config,
            tmp / "state-linepulse",
            out / "worker-json",
            throughput.timeout_for(args, args.json_events),
        )
        run.rows.append(row)
        run.json = row
        for peer, topic in (("Quix", "quix-out-"), ("Bytewax", "bytewax-out-")):
            for r in run.rows:
                if r.what.startswith(peer):
                    r.notes += await throughput.peer_check(
                        kafka, f"{topic}{plant.kafka.group}", minutes
                    )
    finally:
        await kafka.close()
    return run


def run_stream(args: argparse.Namespace, frame: pl.DataFrame, out: Path) -> Rows:
    """Start a broker, measure, always stop it (Ctrl-C and SIGTERM included)."""
    with harness.broker_session("bench.peers", "linepulse-peers-") as (broker, tmp):
        run = asyncio.run(measure_stream(args, frame, broker.bootstrap, tmp, out))
    return run


# -- the replay ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How the SQL peer's records compare with LinePulse's machine records."""

    both: int
    only_linepulse: int
    only_sql: int
    agree: int
    by_field: dict[str, int]  # field -> (machine, window) records where it disagrees
    examples: list[str]


COMPARED: Final = [c for c in COLUMNS if c not in ("machine", "window_start_ms")]


def agreement(records: Path, sql: Path, window: str, tolerance: float) -> Agreement:
    """Join on (machine, window start); a field agrees within `tolerance` (absolute), or
    when both are null."""
    keys = ["machine", "window_start_ms"]
    linepulse = (
        pl.scan_ndjson(records, infer_schema_length=None)
        .filter(pl.col("window") == window, pl.col("machine").is_not_null())
        .select(
            "machine",
            pl.col("window_start")
            .str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
            .dt.epoch("ms")
            .alias("window_start_ms"),
            *[pl.col(c).cast(pl.Float64) for c in COMPARED],
        )
        .collect()
    )
    peer = pl.read_parquet(sql).select(*keys, *[pl.col(c).cast(pl.Float64) for c in COMPARED])
    joined = linepulse.join(peer, on=keys, how="inner", suffix="_sql")
    same = {
        c: (pl.col(c).is_null() & pl.col(f"{c}_sql").is_null())
        | ((pl.col(c) - pl.col(f"{c}_sql")).abs() <= tolerance).fill_null(False)
        for c in COMPARED
    }
    flags = joined.select(*keys, **same)
    by_field = {c: int((~flags[c]).sum()) for c in COMPARED}
    agree = int(flags.select(pl.all_horizontal(COMPARED).sum()).item())
    examples = []
    for c, n in by_field.items():
        if n:
            bad = joined.filter(~same[c]).row(0, named=True)
            examples.append(
                f"{c}: {bad['machine']} window {bad['window_start_ms']}: LinePulse {bad[c]!r}, "
                f"SQL {bad[f'{c}_sql']!r}"
            )
    return Agreement(
        both=joined.height,
        only_linepulse=linepulse.join(peer, on=keys, how="anti").height,
        only_sql=peer.join(linepulse, on=keys, how="anti").height,
        agree=agree,
        by_field=by_field,
        examples=examples[:5],
    )


def agreement_lines(a: Agreement, window: str, tolerance: float) -> list[str]:
    lines = [
        f"  check: {a.both:,} (machine, {window}) records in both; {a.agree:,} agree in every "
        f"field ({', '.join(COMPARED)}) within {tolerance:g}; {a.only_linepulse:,} only in "
        f"LinePulse's, {a.only_sql:,} only in the SQL peer's"
    ]
    wrong = {c: n for c, n in a.by_field.items() if n}
    if wrong:
        lines.append("  disagreeing: " + ", ".join(f"{c} in {n:,}" for c, n in wrong.items()))
        lines += [f"    e.g. {e}" for e in a.examples]
    lines.append(
        "  (expected differences, none of which this generated data has: planned time in "
        "breaks and outside shifts, since the SQL takes the whole window as planned; "
        "planned_stop; counter rollovers at counter_max, which the SQL takes as resets; "
        "bad-quality samples; late data and restatements; samples at equal timestamps)"
    )
    return lines


@dataclass(frozen=True)
class FileRow:
    what: str
    key: str
    run: file_bench.Run
    events: int


def run_replay(
    args: argparse.Namespace, config: Path, events: Path, out: Path
) -> tuple[list[FileRow], list[str]]:
    file_bench.warm(events)
    print(harness.busy_note(), flush=True)
    print("measuring: linepulse replay ...", flush=True)
    replay_run, records = file_bench.replay(config, events, [args.window], out, args.timeout)
    rows = [
        FileRow(
            f"linepulse replay --window {args.window}", "linepulse-replay", replay_run, args.events
        )
    ]
    notes = file_bench.replay_notes("linepulse replay", replay_run, records)
    print("measuring: DuckDB SQL peer ...", flush=True)
    sql_out = out / f"duckdb-sql-{events.stem}-{args.window}.parquet"
    sql_out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.peer_duckdb_sql", str(events), "--config", str(config)]
    cmd += ["--window", args.window, "--output", str(sql_out)]
    sql_run = file_bench.measure(cmd, out, f"duckdb-sql-{events.stem}", args.timeout)
    what = f"DuckDB {harness.version('duckdb')} SQL"
    rows.append(FileRow(what, "duckdb", sql_run, args.events))
    notes.append(f"DuckDB SQL peer: {sql_out}; stdout {sql_run.stdout.strip()!r}")
    if sql_run.stderr.strip():
        notes.append(f"  stderr | {sql_run.stderr.strip()[-500:]}")
    if replay_run.ok and sql_run.ok:
        found = agreement(records, sql_out, args.window, args.tolerance)
        notes += agreement_lines(found, args.window, args.tolerance)
    return rows, notes


# -- the table -----------------------------------------------------------------------------

HEADER: Final = (
    f"{'system':<40} {'what it computes':<64} {'events':>10} {'events/s':>10} "
    f"{'peak RSS MiB':>12} {'x events/s':>10} {'x RSS':>6} {'CPU s':>6}"
)


def _line(
    system: str,
    what: str,
    events: int,
    rate: float | None,
    rss: float,
    base: tuple[float, float],
    cpu_s: float | None = None,
) -> str:
    if rate is None:
        return f"{system:<40} {what:<64} {events:>10,} {'FAILED':>10}"
    x_rate = f"{rate / base[0]:.2f}x" if base[0] else "n/a"
    x_rss = f"{rss / base[1]:.2f}x" if base[1] else "n/a"
    cpu = "" if cpu_s is None else f"{cpu_s:.1f}"
    return (
        f"{system:<40} {what:<64} {events:>10,} {rate:>10,.0f} {rss:>12,.0f} {x_rate:>10} "
        f"{x_rss:>6} {cpu:>6}"
    )


def stream_lines(run: Rows) -> list[str]:
    out = ["stream (Kafka, one JSON event per record, same topic and events for all):"]
    base_row = run.json
    base = (0.0, 0.0)
    if base_row is not None and base_row.sustained_rate:
        base = (base_row.sustained_rate, base_row.caught.peak_mib)
    order = sorted(run.rows, key=lambda r: not r.what.startswith("LinePulse"))
    for row in order:
        key = "linepulse-kpi" if row.what.startswith("LinePulse") else row.what.split()[0].lower()
        out.append(
            _line(
                row.what,
                WHAT.get(key, ""),
                row.events,
                row.sustained_rate,
                row.caught.peak_mib,
                base,
                row.caught.cpu_s,
            )
        )
        if not row.caught.ok:
            out.append(f"  {row.what}: {row.caught.reason}")
    return out


def replay_lines(rows: list[FileRow], window: str) -> list[str]:
    out = ["replay (the whole Parquet file, spawn to exit):"]
    base = (0.0, 0.0)
    if rows and rows[0].run.ok and rows[0].run.seconds > 0:
        base = (rows[0].events / rows[0].run.seconds, rows[0].run.peak_mib)
    for row in rows:
        rate = row.events / row.run.seconds if row.run.ok and row.run.seconds > 0 else None
        what = WHAT[row.key].format(window=window)
        out.append(_line(row.what, what, row.events, rate, row.run.peak_mib, base))
    return out


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="LinePulse beside Quix Streams, Bytewax and DuckDB SQL on one workload.",
    )
    parser.add_argument(
        "--machines", type=int, default=DEFAULT_MACHINES, help=f"default: {DEFAULT_MACHINES}"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help=f"events in the workload, all replayed (default: {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--stream-events",
        type=int,
        default=None,
        metavar="N",
        help="the first N events go through Kafka (default: half of --events)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} events, {QUICK_STREAM_EVENTS:,} through Kafka",
    )
    parser.add_argument(
        "--window", choices=sorted(WINDOW_MS), default="1m", help="replay window (default: 1m)"
    )
    parser.add_argument("--partitions", type=int, default=throughput.PARTITIONS, help="default: 6")
    parser.add_argument("--skip-stream", action="store_true", help="no Kafka runs")
    parser.add_argument("--skip-replay", action="store_true", help="no file runs")
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help=f"default: {TOLERANCE:g}"
    )
    harness.add_common_arguments(
        parser, "give up on a run after S s (default: stream events / 1,000, at least 300)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = QUICK_EVENTS
        args.stream_events = args.stream_events or QUICK_STREAM_EVENTS
    if args.stream_events is None:
        args.stream_events = args.events // 2
    if args.machines < 1 or args.events < 1 or args.partitions < 1:
        parser.error("--machines, --events and --partitions must be positive")
    if not 0 < args.stream_events <= args.events:
        parser.error("--stream-events must be between 1 and --events")
    args.json_events = args.stream_events  # the name bench/throughput.py's helpers read
    if args.timeout is None:  # the peers can be slow, and the machine busy: don't cut them
        args.timeout = max(300.0, args.stream_events / 1_000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out / f"peers-m{args.machines}-e{args.events}-s{args.stream_events}"
    out.mkdir(parents=True, exist_ok=True)
    for line in harness.machine_lines():
        print(line)
    print(
        f"kafka {harness.kafka_version()}; quixstreams {harness.version('quixstreams')}; "
        f"bytewax {harness.version('bytewax')}; confluent-kafka "
        f"{harness.version('confluent-kafka')}; duckdb {harness.version('duckdb')}"
    )
    per_second = SIGNALS_PER_MACHINE * args.machines
    print(
        f"workload: {args.machines:,} machines x {SIGNALS_PER_MACHINE} signals at 1 s; "
        f"{args.events:,} events ({math.ceil(args.events / per_second):,} s of plant time), "
        f"the first {args.stream_events:,} through Kafka "
        f"({math.ceil(args.stream_events / per_second):,} s); seed {args.seed}",
        flush=True,
    )
    cached = (args.out / file_names(args.machines, args.events, args.seed, "parquet")[1]).exists()
    started = time.perf_counter()
    config, events = generate(args.out, args.machines, args.events, args.seed, "parquet")
    took = "cached" if cached else f"generated in {time.perf_counter() - started:.1f} s"
    print(f"input: {events} ({took})", flush=True)

    stream_run: Rows | None = None
    replay_rows: list[FileRow] = []
    notes: list[str] = []
    try:
        if not args.skip_stream:
            frame = pl.read_parquet(events, n_rows=args.stream_events)
            stream_run = run_stream(args, frame, out)
            del frame
        if not args.skip_replay:
            replay_rows, notes = run_replay(args, config, events, out)
    except KeyboardInterrupt:
        print("bench.peers: interrupted; stopped what it started", file=sys.stderr, flush=True)
        sys.exit(130)

    print()
    print(HEADER)
    print("-" * len(HEADER))
    if stream_run is not None:
        for line in stream_lines(stream_run):
            print(line)
    if replay_rows:
        for line in replay_lines(replay_rows, args.window):
            print(line)
    print(
        "(x events/s, x RSS: against the LinePulse row of the same part. Stream events/s: "
        "LinePulse and Quix from the consumer group assigned to every offset committed "
        "(commits every 1 s); Bytewax, which commits nothing to Kafka, from its first record "
        "read to its dataflow's end. Replay: spawn to exit, imports included. CPU s: the "
        "stream process's CPU time from spawn to done, start-up included: steadier than "
        "events/s on a busy machine.)"
    )
    if stream_run is not None:
        noise = ", ".join(
            f"{r.what.split(',')[0]}: {r.caught.others_cores:.2f}" for r in stream_run.rows
        )
        print(
            f"(cores used by other processes during each stream run, of {harness.cores()}: {noise})"
        )
    print()
    for line in SUMMARY:
        print(line)
    print()
    if stream_run is not None:
        for row in stream_run.rows:
            for line in row.notes:
                print(line)
            if row.caught.ok and row.caught.assigned_s is not None:
                print(
                    f"  incl. start (spawn to done): {row.caught.seconds:.2f} s = "
                    f"{throughput.rate_text(row.spawn_rate)} events/s; "
                    f"CPU {throughput.cpu_text(row.caught)}"
                )
    for line in notes:
        print(line)
    print(f"artefacts: {out}")


if __name__ == "__main__":
    main()
