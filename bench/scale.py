"""Scaling benchmark: 1, 2, 3, 4 `linepulse kpi` workers in one consumer group.

    python -m bench.scale              # 4,000,000 events, N = 1, 2, 3, 4: 2-6 minutes
    python -m bench.scale --quick      # 1,500,000 events: 1-3 minutes
    python -m bench.scale --workers 1,2 --events 2000000

It starts its own broker (bench/harness.py's `Broker`), generates one workload (the stream
benchmark's plant of 1,000 machines, 6 signals a machine a second) and encodes it once as
Arrow records of 5,000 samples on each line's home partition, as LinePulse's own ingesters
write them. Then, for each N: a fresh telemetry topic of `--partitions` partitions, a
fresh consumer group and a fresh shared state folder; N worker processes started at once;
and once the group is Stable with all N of them, the workload is sent and timed until the
group's committed offsets reach the end offsets of every partition. A worker flushes its
KPI records and waits for their acknowledgements before it commits, so at that moment
every record of those events is on the kpi topic.

Why send after the group has formed: the deployment's broker config sets
`group.initial.rebalance.delay.ms=0`, so a group rebalances as each worker joins, and on a
busy machine the first worker to start could take most of a pre-produced topic on its own
before the others arrive. Sending once all are in times the work, not the start-up. The
records are encoded beforehand and sent in 1 MiB produce batches, so sending takes a small
part of each run (the report shows how much). Offsets are committed at checkpoints, every
second here, so a run ends up to about a second late: keep runs to tens of seconds.

Lines are the unit of parallelism: each line has one home partition, murmur2 of its id, so
a plant of few lines spreads unevenly. The default plant has lines of 10 machines (100
lines), which spreads 1,000 machines over 8 partitions within 6 to 18 lines each; the
report prints the spread. Prints figures, asserts nothing, exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import yaml
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bench import harness, throughput
from bench.harness import Child, CpuMeter, busy_note
from bench.throughput import (
    SIGNALS,
    ArrowRecord,
    Kafka,
    arrow_records,
    as_events,
    kafka_block,
    plant_text,
    read_all,
    send_arrow,
    worker_cmd,
    workload,
)
from linepulse.bus.partitions import machine_homes
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config

DEFAULT_EVENTS: Final = 4_000_000
QUICK_EVENTS: Final = 1_500_000
DEFAULT_WORKERS: Final = (1, 2, 3, 4)
PARTITIONS: Final = 8
PER_LINE: Final = 10  # machines a line (bench/generate.py's plant has 50)
POLL_S: Final = 0.1
SAME_COST: Final = 0.15  # CPU an event may differ by between N and still be 'the same'
BUSY_CORES: Final = 0.25  # other processes' use that makes wall-clock rates noise
BATCH_BYTES: Final = 1024 * 1024  # ~30 Arrow records a request: sending keeps ahead


# -- the plant and its topics --------------------------------------------------------------


def regroup(text: str, per_line: int) -> str:
    """The stream benchmark's plant with its machines in lines of `per_line`, in order.

    The probe line of the stream benchmark is dropped: nothing is produced for it.
    """
    plant: dict[str, Any] = yaml.safe_load(text)
    machines = [
        m
        for line in plant["lines"]
        if line["id"] != throughput.PROBE_LINE
        for m in line["machines"]
    ]
    plant["lines"] = [
        {"id": f"line-{i // per_line + 1:03d}", "machines": machines[i : i + per_line]}
        for i in range(0, len(machines), per_line)
    ]
    return yaml.safe_dump(plant, sort_keys=False)


def run_config(machines: int, per_line: int, partitions: int, tag: str, name: str) -> str:
    """One run's plant, with its own topics and consumer group."""
    return regroup(plant_text(machines, kafka_block(tag, name, partitions)), per_line)


def spread(plant: PlantConfig, partitions: int) -> dict[int, int]:
    """Machines homed on each partition (0 for a partition that holds no line)."""
    counts = Counter(machine_homes(plant, partitions).values())
    return {p: counts.get(p, 0) for p in range(partitions)}


# -- one run -------------------------------------------------------------------------------


@dataclass
class Worker:
    """What one worker process did, from its log and /proc."""

    events: int | None  # from its summary line; None if it did not write one
    peak_mib: float
    cpu_s: float  # CPU seconds from the first record sent to every offset committed


@dataclass
class Result:
    workers: int
    ok: bool
    reason: str = ""
    join_s: float | None = None  # spawn -> the group Stable with every worker
    seconds: float = 0.0  # first record sent -> every offset committed
    produce_s: float = 0.0  # first record sent -> every record acknowledged
    events: int = 0
    left_stable: int = 0  # polls during the measurement that saw the group not Stable
    assignment: list[list[int]] = field(default_factory=list)  # each member's partitions
    per_worker: list[Worker] = field(default_factory=list)
    others_cores: float = 0.0
    kpi_records: int = 0
    kpi_finals: int = 0
    kpi_bytes: int = 0  # JSON values, keys and Kafka's overhead not included
    kpi_by_window: dict[str, int] = field(default_factory=dict)  # records per window kind
    dead_letters: int = 0

    @property
    def rate(self) -> float | None:
        return None if not self.ok or self.seconds <= 0 else self.events / self.seconds

    @property
    def cores(self) -> float | None:
        s = self.seconds
        return None if s <= 0 else sum(w.cpu_s for w in self.per_worker) / s

    @property
    def per_cpu_s(self) -> float | None:
        """Events per CPU second of the workers: what a worker takes with a core to itself,
        and a figure other processes on the machine barely move (they take cores, not
        the work an event costs)."""
        cpu = sum(w.cpu_s for w in self.per_worker)
        return None if not self.ok or cpu <= 0 else self.events / cpu


async def group_members(kafka: Kafka, group: str) -> tuple[str, list[list[int]]]:
    """The group's state and each member's partitions; ("", []) while it is not known."""
    try:
        for response in await kafka.admin.describe_consumer_groups([group]):
            for described in response.groups:
                members = []
                for member in described[5]:
                    raw = member[4]
                    decoded = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
                    topics = [] if decoded is None else decoded.assignment
                    members.append(sorted(p for _, ps in topics for p in ps))
                return str(described[2]), members
    except Exception:  # not known yet is "no members yet"
        return "", []
    return "", []


async def run_workers(
    kafka: Kafka,
    n: int,
    plant: PlantConfig,
    config: Path,
    records: list[ArrowRecord],
    events: int,
    state: Path,
    out: Path,
    limit: float,
) -> Result:
    """N workers at once; once their group is Stable with all of them, send the workload
    and wait for the group's offsets to reach the ends; stop them."""
    topic, group = plant.kafka.telemetry.name, plant.kafka.group
    tps = await kafka.partitions(topic)
    result = Result(n, ok=False, events=events)
    children = [
        Child(f"n{n}-w{i}", worker_cmd(config, kafka.bootstrap, state), out / f"n{n}-w{i}.log")
        for i in range(n)
    ]
    spawned = min(c.started for c in children)
    cpu_before = [0.0] * n
    lines = ["seconds_since_spawn,state,members,committed,end"]
    meter: CpuMeter | None = None
    sending: asyncio.Task[float] | None = None
    first_sent = 0.0
    try:
        while True:
            now = time.perf_counter()
            since = now - spawned
            for child in children:
                child.sample()
            dead = [c for c in children if not c.alive()]
            if dead:
                result.reason = f"{dead[0].name} exited with code {dead[0].proc.returncode}"
                break
            group_state, assignment = await group_members(kafka, group)
            members = len(assignment)
            stable = group_state == "Stable" and members == n
            committed = await kafka.committed(group)
            ends = await kafka.ends(tps)
            done, end = sum(committed.get(tp, 0) for tp in tps), sum(ends.values())
            lines.append(f"{since:.3f},{group_state},{members},{done},{end}")
            if sending is None and stable:
                # Everyone is in: from here on, only the work is timed.
                result.join_s, result.assignment = since, assignment
                cpu_before = [c.cpu_s or 0.0 for c in children]
                meter = CpuMeter()
                first_sent = time.perf_counter()
                sending = asyncio.create_task(_timed_send(kafka.bootstrap, topic, records))
            elif sending is not None:
                result.left_stable += not stable
                if sending.done():
                    result.produce_s = sending.result()  # or raises the producer's error
                    if all(committed.get(tp, 0) >= ends[tp] for tp in tps):
                        result.ok, result.seconds = True, now - first_sent
                        break
            if since > limit:
                result.reason = f"not done after {limit:.0f} s ({done:,} of {end:,} records)"
                break
            await asyncio.sleep(POLL_S)
    finally:
        if sending is not None and not sending.done():
            sending.cancel()
        for child in children:
            child.sample()
        used = [(c.cpu_s or 0.0) - b for c, b in zip(children, cpu_before, strict=True)]
        if meter is not None:
            result.others_cores = meter.others_cores(sum(used))
        for child in children:  # all at once: one leaving alone hands the rest its partitions
            if child.alive():
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            child.stop()
        (out / f"n{n}-progress.csv").write_text("\n".join(lines) + "\n")
    result.per_worker = [
        Worker(_events_read(c.log_lines()), peak_mib=c.peak_mib, cpu_s=u)
        for c, u in zip(children, used, strict=True)
    ]
    kpi = [value for _, value in await read_all(kafka, plant.kafka.kpi.name)]
    result.kpi_records = len(kpi)
    result.kpi_finals = sum(bool(r.get("final")) for r in kpi)
    result.kpi_bytes = sum(len(orjson.dumps(r)) for r in kpi)
    result.kpi_by_window = dict(Counter(str(r.get("window")) for r in kpi))
    result.dead_letters = await kafka.count(plant.kafka.dlq.name)
    return result


async def _timed_send(bootstrap: str, topic: str, records: list[ArrowRecord]) -> float:
    """Seconds from the first record sent to the last acknowledged."""
    started = time.perf_counter()
    await send_arrow(bootstrap, topic, records, batch_bytes=BATCH_BYTES)
    return time.perf_counter() - started


SUMMARY = re.compile(r"kpi worker stopped: \d+ batches, (\d+) events")


def _events_read(lines: list[str]) -> int | None:
    """Events the worker read, from its summary line (None if it did not write one)."""
    for line in reversed(lines):
        found = SUMMARY.search(line)
        if found:
            return int(found[1])
    return None


# -- the report ----------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: list[Result]) -> list[str]:
    base = next((r.rate for r in results if r.workers == 1 and r.rate), None)
    header = (
        f"{'workers':>7} {'partitions':>10} {'seconds':>8} {'events/s':>10} {'x N=1':>6} "
        f"{'per worker/s':>12} {'cores used':>10} {'events/CPU s':>12} {'CPU s/worker':>16} "
        f"{'peak RSS MiB/worker':>20}"
    )
    out = [header, "-" * len(header)]
    for r in results:
        if not r.ok:
            out.append(f"{r.workers:>7}  FAILED: {r.reason}")
            continue
        rate = r.rate
        split = "/".join(str(len(a)) for a in r.assignment)
        cpu = "/".join(f"{w.cpu_s:.1f}" for w in r.per_worker)
        rss = "/".join(f"{w.peak_mib:.0f}" for w in r.per_worker)
        out.append(
            f"{r.workers:>7} {split:>10} {r.seconds:>8.2f} {_f(rate, ',.0f'):>10} "
            f"{_f(None if rate is None or not base else rate / base, '.2f'):>6} "
            f"{_f(None if rate is None else rate / r.workers, ',.0f'):>12} "
            f"{_f(r.cores, '.2f'):>10} {_f(r.per_cpu_s, ',.0f'):>12} {cpu:>16} {rss:>20}"
        )
    return out


def notes(results: list[Result], cores: int) -> list[str]:
    out = []
    for r in results:
        if not r.ok:
            continue
        read = [w.events for w in r.per_worker]
        total = sum(e or 0 for e in read)
        check = "= produced" if total == r.events else f"{total - r.events:+,} against produced"
        out.append(
            f"N={r.workers}: events read per worker {', '.join(_f(e, ',') for e in read)} "
            f"(sum {total:,}, {check}); partitions "
            f"{'; '.join(','.join(map(str, a)) for a in r.assignment)}"
        )
        left = (
            "stayed Stable"
            if not r.left_stable
            else f"was seen rebalancing in {r.left_stable} poll(s): the figure includes it"
        )
        out.append(
            f"  group Stable with all {r.workers} {_f(r.join_s, '.1f')} s after spawn; then it "
            f"{left}; sending took {r.produce_s:.2f} s of the {r.seconds:.2f} s; other "
            f"processes used {r.others_cores:.2f} of {cores} cores"
        )
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(r.kpi_by_window.items()))
        out.append(
            f"  kpi topic {r.kpi_records:,} records ({r.kpi_finals:,} final; {kinds}), "
            f"{r.kpi_bytes / max(r.kpi_records, 1):,.0f} bytes a record; "
            f"{r.dead_letters:,} dead letters"
        )
    finals = {r.kpi_finals for r in results if r.ok}
    if len(finals) > 1:
        out.append(
            "final records differ between runs: a worker count changed what was computed "
            f"({sorted(finals)})"
        )
    elif finals:
        out.append(f"every run wrote the same number of final records ({finals.pop():,})")
    return out


def verdict(results: list[Result], cores: int) -> list[str]:
    rates = {r.workers: r.rate for r in results if r.rate}
    if 1 not in rates:
        return []
    out = [
        f"this machine has {cores} core(s): throughput can grow with workers up to {cores} and "
        f"then flattens (the workers share the cores; a worker also uses Polars threads, so "
        f"one worker alone may already use more than one core)"
    ]
    for n, rate in sorted(rates.items()):
        if n == 1:
            continue
        ideal = min(n, cores)
        out.append(
            f"  N={n}: {rate / rates[1]:.2f}x N=1 (at most {ideal}x on {cores} cores: "
            f"{rate / rates[1] / ideal:.0%} of that)"
        )
    costs = {r.workers: r.per_cpu_s or 0.0 for r in results if r.per_cpu_s}
    if 1 in costs and len(costs) > 1:
        # CPU an event costs at N, relative to N=1: above 1 means more workers, more work.
        extra = {n: costs[1] / c - 1 for n, c in costs.items() if n != 1}
        worst = max(extra, key=lambda n: abs(extra[n]))
        line = (
            f"  events per CPU second from {min(costs.values()):,.0f} to "
            f"{max(costs.values()):,.0f} across N; at N={worst} an event cost "
            f"{extra[worst]:+.0%} of N=1's CPU"
        )
        if abs(extra[worst]) <= SAME_COST:
            line += ": adding workers adds no work an event, throughput follows the cores"
        else:
            line += (
                f": more than {SAME_COST:.0%} apart; each worker's fixed costs (its polls, "
                "its partition steps, its first batches) weigh more in a short run: compare "
                "with a longer --events"
            )
        out.append(line)
    busy = max((r.others_cores for r in results if r.ok), default=0.0)
    if busy > BUSY_CORES:
        out.append(
            f"  other processes used up to {busy:.2f} of {cores} cores during the runs: the "
            "events/s column measured them as much as the workers (events/CPU s did not); "
            "run again on a quiet machine for the shape"
        )
    return out


# -- the plan: from the measured rate to a deployment ---------------------------------------

PLAN_MACHINES: Final = (1_000, 10_000, 100_000)
# Events a machine a second. Low: the equipment simulator's plant (examples/simulated-plant,
# 1 s ticks, only changed signals are sent): 2.3. High: bench/generate.py's plant, ten tags
# sent every second whether they changed or not.
PLAN_RATES: Final = (2.3, 10.0)
PLAN_PER_LINE: Final = 20  # machines a line in the plan (lines are the unit of parallelism)
PLAN_CPU: Final = 0.5  # target CPU use of a worker: room for restarts, rebalances, bursts
# Final records a scope (machine or line) a second: one a window length, per default kind.
FINALS_PER_SCOPE_S: Final = 1 / 60 + 1 / 900 + 1 / 3600 + 1 / 28_800 + 1 / 86_400
KINDS: Final = 5  # 1m, 15m, 1h, shift, day: one open record per scope and kind per interval
STATUS_PER_MACHINE_S: Final = 0.2  # `last_seen` republished every 5 s; state changes are rare


@dataclass(frozen=True)
class Plan:
    machines: int
    rate: float  # events a machine a second
    events_s: float
    workers: int
    partitions: int
    telemetry_mb_s: float  # Arrow, from the measured bytes an event
    kpi_records_s: float  # open-window updates + finals: what the API's store writes
    kpi_mb_s: float
    status_s: float


def plan(
    per_worker: float,
    arrow_bytes: float,
    kpi_bytes: float,
    open_interval_s: float = 1.0,
    machines: tuple[int, ...] = PLAN_MACHINES,
    rates: tuple[float, ...] = PLAN_RATES,
) -> list[Plan]:
    """Workers at `PLAN_CPU` of `per_worker` events/s each; partitions twice the workers
    (at least 8), so the workers can double without changing the partition count, which
    would move lines to other home partitions; open records at most once per
    `open_interval_s` per key (kafka.open_interval_s), every key touched each interval."""
    out = []
    for m in machines:
        scopes = m + -(-m // PLAN_PER_LINE)
        for rate in rates:
            events_s = m * rate
            workers = max(1, math.ceil(events_s / (per_worker * PLAN_CPU)))
            records = scopes * (KINDS / max(open_interval_s, 1e-9) + FINALS_PER_SCOPE_S)
            out.append(
                Plan(
                    machines=m,
                    rate=rate,
                    events_s=events_s,
                    workers=workers,
                    partitions=max(8, 2 * workers),
                    telemetry_mb_s=events_s * arrow_bytes / 1e6,
                    kpi_records_s=records,
                    kpi_mb_s=records * kpi_bytes / 1e6,
                    status_s=m * STATUS_PER_MACHINE_S,
                )
            )
    return out


def plan_lines(plans: list[Plan]) -> list[str]:
    header = (
        f"{'machines':>8} {'ev/machine/s':>12} {'events/s':>10} {'workers':>7} "
        f"{'partitions':>10} {'telemetry MB/s':>14} {'kpi records/s':>13} {'kpi MB/s':>8}"
    )
    out = [header, "-" * len(header)]
    for p in plans:
        out.append(
            f"{p.machines:>8,} {p.rate:>12g} {p.events_s:>10,.0f} {p.workers:>7,} "
            f"{p.partitions:>10,} {p.telemetry_mb_s:>14.2f} {p.kpi_records_s:>13,.0f} "
            f"{p.kpi_mb_s:>8.1f}"
        )
    return out


def planning_rate(results: list[Result]) -> tuple[float, str] | None:
    """Events/s one worker takes with a core of its own: the lowest events per CPU second
    of the runs. Wall-clock rates on a shared machine measure the other processes as much
    as the workers; CPU seconds an event do not depend on how many cores were free."""
    done = [r for r in results if r.per_cpu_s]
    if not done:
        return None
    low = min(done, key=lambda r: r.per_cpu_s or 0.0)
    return low.per_cpu_s or 0.0, f"the lowest events per CPU second, N={low.workers}"


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Events/s of 1..N `linepulse kpi` workers in one group on a local Kafka.",
    )
    parser.add_argument("--machines", type=int, default=1000, help="default: 1000")
    parser.add_argument(
        "--per-line", type=int, default=PER_LINE, help=f"machines a line (default: {PER_LINE})"
    )
    parser.add_argument(
        "--events", type=int, default=DEFAULT_EVENTS, help=f"default: {DEFAULT_EVENTS:,}"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help=f"default: {PARTITIONS}")
    parser.add_argument(
        "--workers",
        default=",".join(map(str, DEFAULT_WORKERS)),
        help="worker counts to run, in order (default: 1,2,3,4)",
    )
    harness.add_common_arguments(
        parser, "give up on a run after S s (default: events / 10,000, at least 120)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = QUICK_EVENTS
    try:
        args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--workers: a comma-separated list of numbers, got {args.workers!r}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers: every count must be >= 1")
    if min(args.machines, args.per_line, args.partitions, args.events) < 1:
        parser.error("--machines, --per-line, --partitions and --events must be positive")
    return args


async def measure(args: argparse.Namespace, bootstrap: str, out: Path) -> list[Result]:
    tag = uuid.uuid4().hex[:8]
    configs: dict[int, Path] = {}
    for i, n in enumerate(args.worker_counts):
        configs[n] = out / f"plant-n{n}.yaml"
        text = run_config(args.machines, args.per_line, args.partitions, tag, f"r{i}n{n}")
        configs[n].write_text(text)
    plants = {n: load_config(path) for n, path in configs.items()}
    first = plants[args.worker_counts[0]]
    lines = spread(first, args.partitions)
    print(
        f"plant: {args.machines:,} machines in {len(first.lines)} lines of {args.per_line}; "
        f"telemetry partitions {args.partitions}, machines homed on each: "
        f"{', '.join(f'{p}:{m}' for p, m in lines.items())}",
        flush=True,
    )
    started = time.perf_counter()
    homes = machine_homes(first, args.partitions)
    events = as_events(workload(args.machines, args.events, args.seed), homes)
    records = list(arrow_records(events))
    size = sum(len(value) for _, _, value in records)
    print(
        f"workload: {args.events:,} events ({args.events / (len(SIGNALS) * args.machines) / 60:.1f}"
        f" min of plant time at {len(SIGNALS) * args.machines:,} events/s) as {len(records):,} "
        f"Arrow records, {size / args.events:.1f} bytes/event, generated and encoded in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    del events
    args.arrow_bytes = size / args.events
    kafka = Kafka(bootstrap)
    await kafka.start()
    results: list[Result] = []
    try:
        limit = float(args.timeout) if args.timeout else max(120.0, args.events / 10_000)
        for n in args.worker_counts:
            await ensure_topics(bootstrap, plants[n].kafka)
            print(busy_note(), flush=True)
            print(f"measuring: {n} worker(s) ...", flush=True)
            state = Path(tempfile.mkdtemp(prefix=f"linepulse-scale-n{n}-"))
            try:
                result = await run_workers(
                    kafka, n, plants[n], configs[n], records, args.events, state, out, limit
                )
            finally:
                shutil.rmtree(state, ignore_errors=True)
            print(
                f"  {'done' if result.ok else 'FAILED: ' + result.reason}; "
                f"{_f(result.rate, ',.0f')} events/s",
                flush=True,
            )
            results.append(result)
    finally:
        await kafka.close()
    return results


def report(args: argparse.Namespace, results: list[Result], out: Path) -> None:
    cores = harness.cores()
    print()
    for line in table(results):
        print(line)
    print(
        "(seconds, events/s: from sending the first record, once the group is Stable with "
        "all N workers, to every offset committed; 'partitions': each worker's; 'cores "
        "used': all workers' CPU seconds / seconds; RSS: the kernel's high-water mark)"
    )
    print()
    for line in verdict(results, cores):
        print(line)
    print()
    for line in notes(results, cores):
        print(line)
    planned = planning_rate(results)
    kpi = next((r for r in results if r.ok and r.kpi_records), None)
    plans: list[Plan] = []
    if planned is not None and kpi is not None:
        rate, source = planned
        plans = plan(rate, args.arrow_bytes, kpi.kpi_bytes / kpi.kpi_records)
        print()
        print(
            f"plan: {rate:,.0f} events/s a worker with a core of its own ({source}); workers "
            f"at {PLAN_CPU:.0%} CPU; lines of {PLAN_PER_LINE}; Arrow {args.arrow_bytes:.1f} "
            f"bytes an event; kpi records {kpi.kpi_bytes / kpi.kpi_records:,.0f} bytes; open "
            f"records once a second per key (docs/scaling.md explains each column)"
        )
        for line in plan_lines(plans):
            print(line)
    harness.write_results(
        out,
        args,
        results=[
            {**asdict(r), "events_per_s": r.rate, "cores_used": r.cores, "per_cpu_s": r.per_cpu_s}
            for r in results
        ],
        plan=[asdict(p) for p in plans],
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out / f"scale-m{args.machines}-e{args.events}-p{args.partitions}"
    out.mkdir(parents=True, exist_ok=True)
    for line in harness.machine_lines():
        print(line)
    print(
        f"kafka {harness.kafka_version()}; workers {args.workers}; {args.events:,} events "
        f"as Arrow batches of {throughput.ARROW_BATCH:,}; windows {','.join(throughput.WINDOWS)}; "
        f"checkpoint every 1 s; seed {args.seed}",
        flush=True,
    )
    with harness.broker_session("bench.scale", "linepulse-scale-", out) as (broker, _):
        results = asyncio.run(measure(args, broker.bootstrap, out))
        report(args, results, out)


if __name__ == "__main__":
    main()
