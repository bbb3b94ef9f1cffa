"""Stream benchmark: one `linepulse kpi` worker from Kafka, beside a Quix Streams peer.

    python -m bench.stream                 # 5,000,000 Arrow events, 1,000,000 JSON, 30 s latency
    python -m bench.stream --quick         # 1,000,000 Arrow, 300,000 JSON, 10 s latency
    python -m bench.stream --skip-peer     # without the Quix Streams application

It starts its own broker (deploy/kafka/kafka.sh, free loopback ports, data in a temporary
folder) and always stops it, also on Ctrl-C or SIGTERM. The plant is bench/generate.py's
(1,000 machines in lines of 50, 1 s samples) plus one probe machine on a line of its own;
each machine sends 6 signals a second: state, total_count, reject_count and three analog
tags (temperature, speed, pressure). Measured, one after the other:

1. **Quix Streams peer** (`bench/stream_peer_quix.py`, a subprocess): the JSON workload
   (one event per record, keyed by machine) through per-machine tumbling 1-minute windows.
2. **LinePulse, JSON per record**: the same topic through a `linepulse kpi` subprocess. It
   forwards each event that is not on its line's home partition to that home, so this
   runs after the peer, which would otherwise read the forwarded Arrow records too.
3. **LinePulse, Arrow batches**: events pre-produced as Arrow IPC records of 5,000 samples
   on each line's home partition (as LinePulse's own ingesters write them), through a
   fresh `linepulse kpi` subprocess.
4. **Latency**: with that worker caught up and a `linepulse api` process (materializer and
   HTTP API) started and ready beside it, 20,000 events/s as Arrow batches every 100 ms;
   each batch also advances the probe machine's total_count. The latency of a batch is the
   time from producing it to the first answer of `GET /v1/kpis/current?machine=probe-1&
   window=1m` (polled every 10 ms) whose 1-minute `total_count` includes it; the same is
   measured on the `kpi` topic itself. Without `linepulse api`, on the topic alone.

Throughput is timed from the subprocess's spawn, and from its consumer group turning
Stable (partitions assigned), to the moment its group's committed offsets reach the end
offsets of every partition (polled every 50 ms); the worker commits after each
checkpoint, every `kafka.checkpoint_interval_s`. The sustained figure (from assignment)
is the one the goals are judged on. Peak RSS is the kernel's high-water mark (VmHWM) of
the subprocess. Everything is printed, nothing asserted: the exit code is 0 whatever the
figures are, unless the benchmark itself cannot run. Run artefacts (configs, logs,
per-poll progress, per-batch latencies, results.json) go to bench/out/stream-.../.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import harness
from bench.generate import MACHINES_PER_LINE
from bench.harness import (
    LINEPULSE,
    Child,
    CpuMeter,
    busy_note,
    cores,
    mark,
    stop_load,
    version,
    write_lines,
)
from bench.throughput import (
    ARROW_BATCH,
    LATENESS_S,
    PARTITIONS,
    POLL_S,
    PROBE_LINE,
    PROBE_MACHINE,
    SIGNALS,
    WINDOWS,
    WORKER_LOG_LEVEL,
    Kafka,
    Rows,
    Throughput,
    as_events,
    count_note,
    cpu_text,
    kafka_block,
    kpi_topic_notes,
    log_notes,
    peer_check,
    plant_text,
    produce_arrow,
    produce_json,
    rate_text,
    run_peer,
    run_worker,
    spawn_caught_up,
    timeout_for,
    window_ms,
    workload,
)
from linepulse.bus.partitions import machine_homes
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config
from linepulse.events import EVENT_SCHEMA, Row
from linepulse.runtime import free_loopback_ports
from linepulse.wire import ARROW, encode_arrow

DEFAULT_EVENTS: Final = 5_000_000
QUICK_EVENTS: Final = 1_000_000
DEFAULT_JSON_EVENTS: Final = 1_000_000
QUICK_JSON_EVENTS: Final = 300_000
LATENCY_RATE: Final = 20_000  # events/s
LATENCY_SECONDS: Final = 30.0
QUICK_LATENCY_SECONDS: Final = 10.0
TICK_S: Final = 0.1  # one Arrow batch per home partition every 100 ms
PROBE_BASE: Final = 1_000_000


GOAL_ARROW: Final = 200_000
GOAL_JSON: Final = 50_000
GOAL_P99_S: Final = 1.0

SEEN_GRACE_S: Final = 15.0  # after the last batch, how long to wait for it to be visible
API_POLL_S: Final = 0.01
API_READY_TIMEOUT_S: Final = 300.0


# -- the workload --------------------------------------------------------------------------


def probe_rows(tick: int, ts: int) -> pl.DataFrame:
    """The probe's sample for one latency batch: total_count = PROBE_BASE + tick."""
    rows: list[Row] = [
        (ts, PROBE_MACHINE, "total_count", None, PROBE_BASE + tick, None, None, "good")
    ]
    if tick == 0:
        rows.insert(0, (ts, PROBE_MACHINE, "state", None, None, "running", None, "good"))
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


# -- latency -------------------------------------------------------------------------------


@dataclass
class Seen:
    """When each latency batch became visible at one place (the API, or the kpi topic)."""

    where: str
    latencies: list[float]  # seconds, one per batch seen
    unseen: int

    def quantile(self, q: float, part: slice = slice(None)) -> float | None:
        values = self.latencies[part]
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Latency:
    events: int
    batches: int
    seconds: float  # from the first batch to one tick after the last
    views: list[Seen]  # the first is the one the goal is judged on
    catch_up_s: float | None  # from the last batch to the group's offsets all committed
    peak_mib: float  # the worker's
    api_peak_mib: float | None
    others_cores: float  # CPU used meanwhile by processes that are not part of the benchmark
    notes: list[str] = field(default_factory=list)


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Probe:
    """The probe's batches: when each was produced, and when each became visible where."""

    def __init__(self, first_ts: int, ticks: int, data_ms_per_tick: int) -> None:
        # The probe moves with the plant's event time, strictly increasing, one sample a batch.
        self.ts = [first_ts + i * data_ms_per_tick for i in range(ticks)]
        self.window = [ts // 60_000 * 60_000 for ts in self.ts]
        self.produced: list[float] = []
        self.seen: dict[str, dict[int, float]] = {}

    def reflect(self, where: str, record: dict[str, Any], now: float) -> int:
        """Mark the batches a 1m record of the probe includes; return its window start.

        The probe's total_count goes up by one a batch, from PROBE_BASE at batch 0 (which
        only sets the baseline), and a window's total_count is the sum of the steps of its
        samples: so a record of window W with total_count c includes every batch of W up
        to (the last batch before W, or 0) + c.
        """
        seen = self.seen.setdefault(where, {})
        start = window_ms(record["window_start"])
        total = int(record.get("total_count") or 0)
        before = bisect.bisect_left(self.ts, start) - 1
        reflected = max(before, 0) + total
        first = bisect.bisect_left(self.window, start)
        for i in range(first, min(reflected, len(self.produced) - 1) + 1):
            if self.window[i] != start:
                break
            if i not in seen:
                seen[i] = now - self.produced[i]
        return start

    def pending_before(self, where: str, start: int) -> int | None:
        """The oldest window before `start` with a produced batch not yet seen."""
        seen = self.seen.get(where, {})
        for i in range(len(self.produced)):
            if self.window[i] >= start:
                return None
            if i not in seen:
                return self.window[i]
        return None

    def result(self, where: str, description: str) -> Seen:
        seen = self.seen.get(where, {})
        return Seen(description, [seen[i] for i in sorted(seen)], len(self.produced) - len(seen))


async def read_topic(consumer: AIOKafkaConsumer, probe: Probe) -> None:
    """Follow the kpi topic; every record of the probe's 1m windows marks its batches."""
    prefix = f"{PROBE_LINE}/{PROBE_MACHINE}/1m/".encode()
    while True:
        batch = await consumer.getmany(timeout_ms=100)
        now = time.perf_counter()
        for messages in batch.values():
            for message in messages:
                if message.key and message.key.startswith(prefix):
                    probe.reflect("topic", orjson.loads(message.value), now)


async def poll_api(client: httpx.AsyncClient, probe: Probe) -> None:
    """GET the probe's current 1m record every API_POLL_S; a window the current record
    has moved past while some of its batches were not seen is looked up in the history."""
    params = {"machine": PROBE_MACHINE, "window": "1m"}
    while True:
        asked = time.perf_counter()
        newest: int | None = None
        try:
            response = await client.get("/v1/kpis/current", params=params)
            now = time.perf_counter()
            if response.status_code == 200:
                for record in response.json():
                    if record.get("machine") == PROBE_MACHINE:
                        newest = probe.reflect("api", record, now)
            older = None if newest is None else probe.pending_before("api", newest)
            if newest is not None and older is not None:
                history = {**params, "from": _rfc3339(older), "to": _rfc3339(newest)}
                response = await client.get("/v1/kpis/history", params=history)
                now = time.perf_counter()
                if response.status_code == 200:
                    for record in response.json():
                        if record.get("machine") == PROBE_MACHINE:
                            probe.reflect("api", record, now)
        except httpx.HTTPError:
            pass  # counted as not seen if it never answers
        delay = asked + API_POLL_S - time.perf_counter()
        await asyncio.sleep(max(delay, 0.0))


async def latency_run(
    kafka: Kafka,
    plant: PlantConfig,
    live: pl.DataFrame,
    seconds: float,
    child: Child,
    api: Api | None,
    out: Path,
) -> Latency:
    """Steady Arrow batches every TICK_S; time each until the probe's 1m record shows it."""
    telemetry, kpi = plant.kafka.telemetry.name, plant.kafka.kpi.name
    per_tick = round(LATENCY_RATE * TICK_S)
    ticks = min(math.ceil(seconds / TICK_S), live.height // per_tick)
    probe_home = machine_homes(plant, plant.kafka.telemetry.partitions)[PROBE_MACHINE]
    data_ms_per_tick = per_tick * 1000 // (len(SIGNALS) * (len(plant.machines()) - 1))
    probe = Probe(live.item(0, "ts"), ticks, data_ms_per_tick)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        enable_idempotence=True,
        linger_ms=0,
        max_request_size=8 * 1024 * 1024,
    )
    client = httpx.AsyncClient(base_url=api.url if api else "http://127.0.0.1", timeout=5.0)
    await consumer.start()
    await producer.start()
    tps = await kafka.partitions(kpi)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve the end now, before the first batch
    children = [child] if api is None else [child, api.child]
    for c in children:
        c.sample()
    meter, cpu_before = CpuMeter(), sum(c.cpu_s or 0.0 for c in children)
    readers = [asyncio.create_task(read_topic(consumer, probe))]
    if api is not None:
        readers.append(asyncio.create_task(poll_api(client, probe)))
    sends = []
    last = time.perf_counter()
    caught_at: float | None = None
    try:
        started = time.perf_counter() + 0.2
        for i in range(ticks):
            delay = started + i * TICK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            probe.produced.append(time.perf_counter())
            rows = live.slice(i * per_tick, per_tick)
            parts = rows.partition_by("_home", as_dict=True)
            sample = probe_rows(i, probe.ts[i])
            if (probe_home,) in parts:
                parts[(probe_home,)] = pl.concat([parts[(probe_home,)].drop("_home"), sample])
            else:
                parts[(probe_home,)] = sample
            for (home,), frame in parts.items():
                sends.append(
                    await producer.send(
                        telemetry,
                        encode_arrow(frame),
                        key=frame.item(0, "machine").encode(),
                        partition=int(home),
                        headers=[("content-type", ARROW.encode())],
                    )
                )
        last = time.perf_counter()
        await asyncio.gather(*sends)
        wanted = ["topic", "api"] if api is not None else ["topic"]
        deadline = last + SEEN_GRACE_S
        inputs = await kafka.partitions(telemetry)
        while time.perf_counter() < deadline and (
            caught_at is None or any(len(probe.seen.get(w, {})) < ticks for w in wanted)
        ):
            child.sample()
            if api is not None:
                api.child.sample()
            if caught_at is None and await _all_committed(kafka, plant.kafka.group, inputs):
                caught_at = time.perf_counter()
            await asyncio.sleep(POLL_S)
    finally:
        await stop_load(readers, client, producer, consumer)
    for c in children:
        c.sample()
    others = meter.others_cores(sum(c.cpu_s or 0.0 for c in children) - cpu_before)
    duration = last - probe.produced[0] + TICK_S if probe.produced else 0.0
    if caught_at is not None:
        catch_up: float | None = caught_at - last
    else:
        catch_up = await _catch_up(kafka, child, plant, last)
    topic = probe.result("topic", f"the `{kpi}` topic (a consumer of all its partitions)")
    views = [topic]
    if api is not None:
        where = f"the API (GET {api.url}/v1/kpis/current?machine={PROBE_MACHINE}&window=1m"
        views.insert(0, probe.result("api", f"{where} every {API_POLL_S * 1000:.0f} ms)"))
    lines = ["batch,produced_s," + ",".join(f"{v}_latency_s" for v in probe.seen)]
    for i, at in enumerate(probe.produced):
        cells = [probe.seen[w].get(i) for w in probe.seen]
        lines.append(
            f"{i},{at - probe.produced[0]:.3f},"
            + ",".join("" if c is None else f"{c:.4f}" for c in cells)
        )
    write_lines(out / "latency.csv", lines)
    unseen = max(view.unseen for view in views)
    notes = []
    if unseen and catch_up is not None and catch_up < SEEN_GRACE_S:
        notes.append(
            f"  {unseen} batch(es) never became visible, though the worker had read and "
            f"committed every batch {catch_up:.1f} s after the last one: no KPI record "
            f"including them was published within {SEEN_GRACE_S:g} s (see latency.csv)"
        )
    return Latency(
        events=ticks * per_tick,
        batches=ticks,
        seconds=duration,
        views=views,
        catch_up_s=catch_up,
        peak_mib=child.peak_mib,
        api_peak_mib=None if api is None else api.child.peak_mib,
        others_cores=others,
        notes=notes,
    )


async def _all_committed(kafka: Kafka, group: str, tps: list[TopicPartition]) -> bool:
    committed = await kafka.committed(group)
    ends = await kafka.ends(tps)
    return all(committed.get(tp, 0) >= ends[tp] for tp in tps)


async def _catch_up(kafka: Kafka, child: Child, plant: PlantConfig, last: float) -> float | None:
    """Seconds from the last batch until the worker has committed everything (or None)."""
    tps = await kafka.partitions(plant.kafka.telemetry.name)
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        child.sample()
        if await _all_committed(kafka, plant.kafka.group, tps):
            return time.perf_counter() - last
        await asyncio.sleep(POLL_S)
    return None


@dataclass
class Api:
    """A `linepulse api` process (the materializer and the HTTP API) for the latency run."""

    child: Child
    url: str
    ready_s: float  # from spawn to /readyz answering 200


def api_available() -> bool:
    """Whether the query API exists yet (`linepulse api`, being built beside this)."""
    done = subprocess.run(
        [*LINEPULSE, "api", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=harness.ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.returncode == 0 and "--port" in done.stdout


async def start_api(config: Path, bootstrap: str, tmp: Path, out: Path) -> Api | str:
    """Start `linepulse api` on a free port; wait until /readyz says it has caught up with
    the kpi topic. Returns the reason instead when it cannot be used."""
    if not api_available():
        return "`linepulse api` does not exist in this checkout"
    port = free_loopback_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    cmd = [*LINEPULSE, "--log-level", "info", "api"]
    cmd += ["--config", str(config), "--kafka", bootstrap, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--db", str(tmp / "api.duckdb")]
    child = Child("api", cmd, out / "api.log")
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while time.perf_counter() - child.started < API_READY_TIMEOUT_S:
            if not child.alive():
                return f"`linepulse api` exited with code {child.stop()} (see {child.log})"
            child.sample()
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return Api(child, url, time.perf_counter() - child.started)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    child.stop()
    return f"`linepulse api` was not ready within {API_READY_TIMEOUT_S:g} s (see {child.log})"


# -- report --------------------------------------------------------------------------------


def table(rows: list[Throughput], latency: Latency | None) -> list[str]:
    header = f"{'what':<44} {'events':>10} {'seconds':>8} {'events/s':>10} {'peak RSS MiB':>13}"
    out = [header, "-" * len(header)]
    for row in rows:
        c = row.caught
        if not c.ok:
            out.append(f"{row.what:<44} {row.events:>10,}  FAILED: {c.reason}")
            continue
        sustained = row.sustained_s
        out.append(
            f"{row.what:<44} {row.events:>10,} "
            f"{'n/a' if sustained is None else f'{sustained:.2f}':>8} "
            f"{rate_text(row.sustained_rate):>10} {c.peak_mib:>13,.0f}"
        )
        out.append(
            f"{'  incl. start (spawn -> caught up)':<44} {row.events:>10,} "
            f"{c.seconds:>8.2f} {rate_text(row.spawn_rate):>10}"
        )
    if latency is not None:
        rate = latency.events / latency.seconds if latency.seconds > 0 else 0.0
        what = f"LinePulse, latency run (Arrow, {LATENCY_RATE:,}/s)"
        out.append(
            f"{what:<44} {latency.events:>10,} {latency.seconds:>8.2f} {rate:>10,.0f} "
            f"{latency.peak_mib:>13,.0f}"
        )
    return out


def goal_lines(
    arrow: Throughput | None, json: Throughput | None, latency: Latency | None
) -> list[str]:
    out = ["goals (sustained events/s: from partitions assigned to every offset committed):"]
    for row, goal in ((arrow, GOAL_ARROW), (json, GOAL_JSON)):
        if row is None:
            continue
        rate = row.sustained_rate
        value = "did not finish" if rate is None else f"{rate:>10,.0f} events/s"
        out.append(
            f"  {mark(rate is not None and rate >= goal)}  {row.what:<30} {value}  "
            f"(goal >= {goal:,}; measured at {row.events:,} events)"
        )
    if latency is not None:
        view = latency.views[0]
        p99 = view.quantile(0.99)
        value = "n/a" if p99 is None else f"{p99:.3f} s"
        passed = p99 is not None and p99 <= GOAL_P99_S and view.unseen == 0
        where = "the API" if view.where.startswith("the API") else "the kpi topic, not the API"
        out.append(
            f"  {mark(passed)}  latency p99 at {LATENCY_RATE:,} events/s   {value:>10}       "
            f"(goal <= {GOAL_P99_S:g} s; measured on {where})"
        )
    return out


def latency_lines(latency: Latency, open_interval: float, checkpoint_interval: float) -> list[str]:
    rate = latency.events / latency.seconds if latency.seconds > 0 else 0.0
    catch = "n/a" if latency.catch_up_s is None else f"{latency.catch_up_s:.2f} s"
    out = [
        f"latency: {latency.batches:,} batches every {TICK_S * 1000:.0f} ms, "
        f"{latency.events:,} events at {rate:,.0f} events/s achieved; from producing a batch "
        "to the probe's 1m KPI record including it being visible on"
    ]
    for view in latency.views:

        def fmt(q: float, view: Seen = view, part: slice = slice(None)) -> str:
            value = view.quantile(q, part)
            return "n/a" if value is None else f"{value:.3f} s"

        half = len(view.latencies) // 2

        worst = f"{max(view.latencies):.3f} s" if view.latencies else "n/a"
        best = f"{min(view.latencies):.3f} s" if view.latencies else "n/a"
        out += [
            f"  {view.where}:",
            f"    p50 {fmt(0.5)}, p90 {fmt(0.9)}, p99 {fmt(0.99)}, max {worst}, min {best}; "
            f"{view.unseen} batch(es) not visible within {SEEN_GRACE_S:g} s of the last",
            f"    p50 of the first half of the batches {fmt(0.5, part=slice(None, half))}, "
            f"of the second half {fmt(0.5, part=slice(half, None))} "
            "(if much higher: falling behind)",
        ]
    out += [
        f"  a changed 1m window's open record is published within its cadence "
        f"(kafka.open_deadline_s) = {open_interval:g} s, so a processed batch can wait that long;",
        f"  checkpoint (and offset commit) every kafka.checkpoint_interval_s = "
        f"{checkpoint_interval:g} s; all offsets committed {catch} after the last batch",
    ]
    out += latency.notes
    return out


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream",
        description="Events/s and latency of one `linepulse kpi` worker on a local Kafka, "
        "beside a Quix Streams application doing per-machine 1-minute windows.",
    )
    parser.add_argument("--machines", type=int, default=1000, help="default: 1000")
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help=f"Arrow events (default: {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--json-events",
        type=int,
        default=None,
        metavar="N",
        help=f"JSON events (default: {DEFAULT_JSON_EVENTS}; --quick: {QUICK_JSON_EVENTS})",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"latency run length (default: {LATENCY_SECONDS:g}; --quick: "
        f"{QUICK_LATENCY_SECONDS:g}; 0 skips it)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_EVENTS:,} Arrow and {QUICK_JSON_EVENTS:,} JSON events, "
        f"{QUICK_LATENCY_SECONDS:g} s latency",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=PARTITIONS,
        help=f"telemetry and kpi partitions, all on the one worker (default: {PARTITIONS}); "
        "each costs a core step per poll, so fewer means lower latency",
    )
    parser.add_argument("--skip-peer", action="store_true", help="no Quix Streams peer")
    parser.add_argument(
        "--worker-log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="the workers' (default: info; debug logs each poll's phases)",
    )
    harness.add_common_arguments(
        parser, "give up on a throughput run after S s (default: events / 10,000, at least 120)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.events = QUICK_EVENTS
    if args.json_events is None:
        args.json_events = QUICK_JSON_EVENTS if args.quick else DEFAULT_JSON_EVENTS
    if args.latency_seconds is None:
        args.latency_seconds = QUICK_LATENCY_SECONDS if args.quick else LATENCY_SECONDS
    if args.machines < 1 or args.partitions < 1:
        parser.error("--machines and --partitions must be positive")
    if args.events < 0 or args.json_events < 0 or args.latency_seconds < 0:
        parser.error("--events, --json-events, --latency-seconds must be >= 0")
    WORKER_LOG_LEVEL[0] = args.worker_log_level
    return args


@dataclass
class Run(Rows):
    """Everything the report needs."""

    arrow: Throughput | None = None
    latency: Latency | None = None


async def measure(args: argparse.Namespace, bootstrap: str, tmp: Path, out: Path, run: Run) -> None:
    tag = uuid.uuid4().hex[:8]
    arrow_cfg, json_cfg = out / "plant-arrow.yaml", out / "plant-json.yaml"
    arrow_cfg.write_text(plant_text(args.machines, kafka_block(tag, "arrow", args.partitions)))
    json_cfg.write_text(plant_text(args.machines, kafka_block(tag, "json", args.partitions)))
    arrow_plant, json_plant = load_config(arrow_cfg), load_config(json_cfg)
    homes = machine_homes(arrow_plant, args.partitions)
    used = sorted({homes[m] for m in homes})
    print(
        f"config: windows {','.join(WINDOWS)}; kpi.lateness_s {LATENESS_S}; telemetry "
        f"partitions {args.partitions} (line homes on {len(used)} of them: {used}); "
        f"kafka.checkpoint_interval_s {arrow_plant.kafka.checkpoint_interval_s:g}; "
        f"open-window cadence of 1m records {arrow_plant.kafka.open_cadence('1m'):g} s",
        flush=True,
    )

    per_tick = round(LATENCY_RATE * TICK_S)
    live_events = per_tick * math.ceil(args.latency_seconds / TICK_S)
    total = max(args.events + live_events, args.json_events)
    started = time.perf_counter()
    frame = workload(args.machines, total, args.seed)
    print(
        f"workload: {total:,} events generated in {time.perf_counter() - started:.1f} s "
        f"({len(SIGNALS) * args.machines:,} events per second of data: "
        f"{total / (len(SIGNALS) * args.machines) / 60:.1f} min of plant time)",
        flush=True,
    )

    kafka = Kafka(bootstrap)
    await kafka.start()
    try:
        await ensure_topics(bootstrap, arrow_plant.kafka)
        await ensure_topics(bootstrap, json_plant.kafka)
        events = as_events(frame, homes)
        if args.events:
            started = time.perf_counter()
            records = await produce_arrow(
                bootstrap, arrow_plant.kafka.telemetry.name, events.head(args.events)
            )
            took = time.perf_counter() - started
            size = _topic_bytes(tmp, arrow_plant.kafka.telemetry.name)
            print(
                f"produced: {args.events:,} events as {records:,} Arrow records in {took:.1f} s "
                f"({size / max(args.events, 1):.1f} bytes/event on disk)",
                flush=True,
            )
        if args.json_events:
            started = time.perf_counter()
            await produce_json(
                bootstrap,
                json_plant.kafka.telemetry.name,
                frame.head(args.json_events),
                args.partitions,
            )
            took = time.perf_counter() - started
            size = _topic_bytes(tmp, json_plant.kafka.telemetry.name)
            print(
                f"produced: {args.json_events:,} events as JSON records in {took:.1f} s "
                f"({size / max(args.json_events, 1):.1f} bytes/event on disk)",
                flush=True,
            )
        del frame
        print(busy_note(), flush=True)

        if args.json_events and not args.skip_peer:
            await run_peer(args, kafka, json_plant, tmp, out, run)
        if args.json_events:
            row, minutes = await run_worker(
                "LinePulse, JSON per record",
                args.json_events,
                kafka,
                json_plant,
                json_cfg,
                tmp / "state-json",
                out / "worker-json",
                timeout_for(args, args.json_events),
            )
            run.rows.append(row)
            run.json = row
            peer = next((r for r in run.rows if r.what.startswith("Quix")), None)
            if peer is not None:
                peer.notes += await peer_check(kafka, f"quix-out-{json_plant.kafka.group}", minutes)
        if args.events:
            await run_arrow(args, kafka, arrow_plant, arrow_cfg, events, tmp, out, run)
    finally:
        await kafka.close()


def _topic_bytes(tmp: Path, topic: str) -> int:
    logs = tmp / "kafka" / "kafka-logs"
    return sum(f.stat().st_size for f in logs.glob(f"{topic}-*/*.log"))


async def run_arrow(
    args: argparse.Namespace,
    kafka: Kafka,
    plant: PlantConfig,
    config: Path,
    events: pl.DataFrame,
    tmp: Path,
    out: Path,
    run: Run,
) -> None:
    what = "LinePulse, Arrow batches"
    limit_s = timeout_for(args, args.events)
    name, state_dir = out / "worker-arrow", tmp / "state-arrow"
    child, caught = await spawn_caught_up(what, kafka, plant, config, state_dir, name, limit_s)
    latency: Latency | None = None
    api: Api | None = None
    try:
        if caught.ok and args.latency_seconds > 0:
            print("starting: linepulse api (materializer + HTTP) ...", flush=True)
            started = await start_api(config, kafka.bootstrap, tmp, out)
            notes: list[str] = []
            if isinstance(started, str):
                notes.append(f"  no API: {started}; latency measured on the kpi topic only")
            else:
                api = started
                notes.append(
                    f"  `linepulse api` ready (caught up with the kpi topic) {api.ready_s:.1f} s "
                    f"after its spawn; it ran beside the worker during the latency run"
                )
            print(
                f"measuring: latency at {LATENCY_RATE:,} events/s for "
                f"{args.latency_seconds:g} s ...",
                flush=True,
            )
            live = events.slice(args.events)
            latency = await latency_run(kafka, plant, live, args.latency_seconds, child, api, out)
            latency.notes += notes
    finally:
        code = child.stop()
        if api is not None:
            api_code = api.child.stop()
            if latency is not None:
                latency.notes += log_notes("linepulse api", api.child, api_code)
                latency.notes.append(f"  linepulse api peak RSS {api.child.peak_mib:,.0f} MiB")
    row = Throughput(what, args.events, caught)
    produced = args.events
    if latency is not None:
        produced += latency.events + latency.batches + 1  # a probe sample a batch, one state
    row.notes = log_notes(what, child, code) + count_note(child, produced)
    row.notes += (await kpi_topic_notes(kafka, plant))[0]
    row.notes.append(
        f"  CPU until caught up {cpu_text(caught)}; longest time without commit progress "
        f"{caught.longest_gap_s:.2f} s"
    )
    run.rows.append(row)
    run.arrow = row
    run.latency = latency


def report(args: argparse.Namespace, run: Run, out: Path, open_s: float, ckpt_s: float) -> None:
    print()
    for line in table(run.rows, run.latency):
        print(line)
    print(
        "(seconds and events/s: from the group's partitions assigned to every offset "
        "committed; 'incl. start' from the subprocess's spawn)"
    )
    noise = ", ".join(f"{r.what}: {r.caught.others_cores:.2f}" for r in run.rows)
    if run.latency is not None:
        noise += f", latency run: {run.latency.others_cores:.2f}"
    print(f"(cores used by other processes during each run, of {cores()}: {noise})")
    print()
    for line in goal_lines(run.arrow, run.json, run.latency):
        print(line)
    peer = next((r for r in run.rows if r.what.startswith("Quix")), None)
    if peer is not None and peer.sustained_rate:
        for row in (run.json, run.arrow):
            if row is not None and row.sustained_rate:
                print(
                    f"  {row.what} / {peer.what}: {row.sustained_rate / peer.sustained_rate:.2f}x "
                    "the events/s"
                )
    print()
    if run.latency is not None:
        for line in latency_lines(run.latency, open_s, ckpt_s):
            print(line)
        print()
    for row in run.rows:
        for line in row.notes:
            print(line)
    for line in run.notes:
        print(line)
    harness.write_results(
        out,
        args,
        rows=[
            {
                **asdict(r),
                "sustained_events_per_s": r.sustained_rate,
                "spawn_events_per_s": r.spawn_rate,
            }
            for r in run.rows
        ],
        latency=None if run.latency is None else asdict(run.latency),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out / f"stream-m{args.machines}-e{args.events}-j{args.json_events}"
    out.mkdir(parents=True, exist_ok=True)
    for line in harness.machine_lines():
        print(line)
    print(
        f"kafka {harness.kafka_version()} (deploy/kafka, one broker, heap "
        f"{os.environ.get('KAFKA_HEAP', '512m')}); aiokafka {version('aiokafka')}; "
        f"quixstreams {version('quixstreams')} (confluent-kafka {version('confluent-kafka')})"
    )
    lines = -(-args.machines // MACHINES_PER_LINE)
    print(
        f"plant: {args.machines:,} machines in {lines} lines of {MACHINES_PER_LINE} + 1 probe "
        f"machine; signals {','.join(SIGNALS)} at 1 s; {args.events:,} Arrow events "
        f"({ARROW_BATCH:,} a record), {args.json_events:,} JSON events, latency "
        f"{args.latency_seconds:g} s at {LATENCY_RATE:,} events/s; seed {args.seed}",
        flush=True,
    )
    run = Run()
    with harness.broker_session("bench.stream", "linepulse-stream-", out) as (broker, tmp):
        asyncio.run(measure(args, broker.bootstrap, tmp, out, run))
        ckpt = load_config(out / "plant-arrow.yaml").kafka
        report(args, run, out, ckpt.open_cadence("1m"), ckpt.checkpoint_interval_s)


if __name__ == "__main__":
    main()
