"""Trace: where a batch's time goes, from producing it to the KPI being visible in the API.

    python -m bench.trace                    # 20,000 events/s for 45 s, worker and API apart
    python -m bench.trace --together         # `linepulse kpi --api`: both in one process
    python -m bench.trace --seconds 30 --profile-steps 0

It starts its own broker (bench/harness.py), pre-produces a warm-up of bench.stream's
workload (bench/throughput.py: 1,000 machines, 6 signals a second, Arrow records on each
line's home partition), starts a `linepulse kpi` worker and waits until it has caught up,
then a `linepulse api` beside it (as bench.stream wires them; `--together` runs
`linepulse kpi --api` instead). Both run with `LINEPULSE_TRACE` set
(services/kpi/trace.py): one JSON line per batch with wall-clock stamps after each stage,
and one per send of the probe's 1m record. Then it produces a steady load as bench.stream's
latency run does: a batch every 100 ms, each carrying one `total_count` sample of the probe
machine, and polls `GET /v1/kpis/current` for the probe every 10 ms.

Each batch's probe sample is followed through every stage by joining the traces: its
telemetry offset -> the worker batch that fetched it (decoded, stepped, records built) ->
the first probe record on the `kpi` topic that includes it (appended to a produce batch,
acknowledged, at which offset) -> the materializer batch that fetched that offset (JSON
decoded, upserted) -> the first API answer that includes it. The stages add up to the
end-to-end latency; the table gives p50 and p99 of each and its share of the total. Below
it, the same stamps over every batch of the run (not only the probe's), and a profile of
the core's `step` (cProfile, in this process) for batches of the size the worker stepped.

Everything is printed, nothing asserted. Artefacts (configs, logs, traces, per-batch
stages as CSV, results.json) go to bench/out/trace-.../.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import math
import os
import pstats
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import polars as pl
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from bench import harness
from bench.harness import Child, busy_note, stop_load, write_lines
from bench.stream import (
    API_READY_TIMEOUT_S,
    LATENCY_RATE,
    SEEN_GRACE_S,
    TICK_S,
    Api,
    Probe,
    poll_api,
    probe_rows,
    read_topic,
    start_api,
)
from bench.throughput import (
    PARTITIONS,
    PROBE_LINE,
    PROBE_MACHINE,
    SIGNALS,
    Kafka,
    as_events,
    kafka_block,
    plant_text,
    produce_arrow,
    spawn_caught_up,
    wait_caught_up,
    worker_cmd,
    workload,
)
from linepulse.bus.partitions import machine_homes
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config
from linepulse.runtime import free_loopback_ports
from linepulse.wire import ARROW, encode_arrow
from services.kpi.core.engine import Core, initial_state, step
from services.kpi.trace import TRACE_ENV, TRACE_KEY_ENV

DEFAULT_SECONDS: Final = 45.0
DEFAULT_WARMUP: Final = 2_000_000  # events before the load: windows of every kind open
DEFAULT_PROFILE_STEPS: Final = 10
PROFILE_TOP: Final = 18

# The stages of a probe batch, in order: each ends at the stamp named, and starts at the
# previous one's end (the first at the moment the bench started producing the batch).
STAGES: Final = (
    ("produce -> fetched by the worker", "fetched"),
    ("decode (+ forward)", "decoded"),
    ("core step (all partitions of the poll)", "stepped"),
    ("emit: records serialised, keyed", "built"),
    ("publish: wait for the open-window cadence", "appended"),
    ("send -> ack (kpi topic)", "acked"),
    ("kpi topic -> fetched by the materializer", "mat_fetched"),
    ("materializer: JSON decode", "mat_decoded"),
    ("materializer: upsert into DuckDB", "upserted"),
    ("upserted -> visible to an API query", "visible"),
)


# -- the load ------------------------------------------------------------------------------


@dataclass
class Load:
    """What the bench produced: per probe batch, where its sample went and when."""

    probe: Probe
    sample_at: dict[int, tuple[int, int]] = field(default_factory=dict)  # tick: partition, offset
    acked: dict[int, float] = field(default_factory=dict)  # tick: perf s the producer's ack came
    started_wall: float = 0.0
    ended_wall: float = 0.0
    events: int = 0


def perf_of_wall() -> Callable[[float], float]:
    """Wall-clock seconds (the traces' stamps) to this process's perf_counter seconds."""
    offset = time.time() - time.perf_counter()
    return lambda wall: wall - offset


async def steady_load(
    kafka: Kafka, plant: PlantConfig, live: pl.DataFrame, seconds: float, api: Api
) -> Load:
    """A batch every TICK_S on each line's home, the probe's sample in its home's record,
    as bench.stream's latency run; until every batch is visible in the API (or the grace)."""
    telemetry, kpi = plant.kafka.telemetry.name, plant.kafka.kpi.name
    per_tick = round(LATENCY_RATE * TICK_S)
    ticks = min(math.ceil(seconds / TICK_S), live.height // per_tick)
    probe_home = machine_homes(plant, plant.kafka.telemetry.partitions)[PROBE_MACHINE]
    data_ms_per_tick = per_tick * 1000 // (len(SIGNALS) * (len(plant.machines()) - 1))
    load = Load(Probe(live.item(0, "ts"), ticks, data_ms_per_tick), events=ticks * per_tick)
    probe = load.probe
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        enable_idempotence=True,
        linger_ms=0,
        max_request_size=8 * 1024 * 1024,
    )
    client = httpx.AsyncClient(base_url=api.url, timeout=5.0)
    await consumer.start()
    await producer.start()
    tps = await kafka.partitions(kpi)
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    readers = [
        asyncio.create_task(read_topic(consumer, probe)),
        asyncio.create_task(poll_api(client, probe)),
    ]
    probes: dict[int, asyncio.Future[RecordMetadata]] = {}
    sends: list[asyncio.Future[RecordMetadata]] = []

    def on_ack(tick: int) -> Callable[[asyncio.Future[RecordMetadata]], None]:
        def acked(_: asyncio.Future[RecordMetadata]) -> None:
            load.acked.setdefault(tick, time.perf_counter())

        return acked

    try:
        load.started_wall = time.time()
        started = time.perf_counter() + 0.2
        for i in range(ticks):
            delay = started + i * TICK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            probe.produced.append(time.perf_counter())
            parts = live.slice(i * per_tick, per_tick).partition_by("_home", as_dict=True)
            sample = probe_rows(i, probe.ts[i])
            own = parts.pop((probe_home,), None)
            parts[(probe_home,)] = sample if own is None else pl.concat([own.drop("_home"), sample])
            for (home,), frame in parts.items():
                sent = await producer.send(
                    telemetry,
                    encode_arrow(frame.drop("_home", strict=False)),
                    key=frame.item(0, "machine").encode(),
                    partition=int(home),
                    headers=[("content-type", ARROW.encode())],
                )
                sends.append(sent)
                if home == probe_home:
                    probes[i] = sent
                    sent.add_done_callback(on_ack(i))
        await asyncio.gather(*sends)
        for i, sent in probes.items():
            meta = sent.result()
            load.sample_at[i] = (meta.partition, meta.offset)
        deadline = time.perf_counter() + SEEN_GRACE_S
        # The API poller marks the batches it sees; it has no event to wait on.
        while time.perf_counter() < deadline and len(probe.seen.get("api", {})) < ticks:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        load.ended_wall = time.time()
        await stop_load(readers, client, producer, consumer)
    return load


# -- the traces ----------------------------------------------------------------------------


def read_trace(folder: Path, role: str) -> list[dict[str, Any]]:
    """Every line the processes of `role` wrote, in file order."""
    lines: list[dict[str, Any]] = []
    for path in sorted(folder.glob(f"{role}-*.jsonl")):
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return lines


def batch_of(batches: list[dict[str, Any]], where: str, offset: int) -> dict[str, Any] | None:
    """The first batch that read `offset` of `where` (a later one would be a re-read)."""
    for batch in batches:
        part = batch["parts"].get(where)
        if part is not None and "first" in part and part["first"] <= offset <= part["last"]:
            return batch
    return None


def probe_chains(
    load: Load, worker: list[dict[str, Any]], materializer: list[dict[str, Any]], kpi: str
) -> tuple[dict[int, dict[str, float]], list[str]]:
    """Per probe batch, the perf_counter second each stage ended (the stage names of
    STAGES, plus `produced`); batches with a missing link are left out and counted."""
    to_perf = perf_of_wall()
    probe = load.probe
    batches = [b for b in worker if b.get("kind") == "batch"]
    mat_batches = [b for b in materializer if b.get("kind") == "batch"]
    # The first kpi record that includes each probe batch: replayed in the order the
    # worker appended them, through the same rule the API view uses (Probe.reflect).
    first_record: dict[int, dict[str, Any]] = {}
    records = sorted((r for r in worker if r.get("kind") == "record"), key=lambda r: r["appended"])
    for line in records:
        before = set(probe.seen.get("appended", {}))
        probe.reflect("appended", line["record"], to_perf(line["appended"]))
        for tick in set(probe.seen["appended"]) - before:
            first_record[tick] = line
    chains: dict[int, dict[str, float]] = {}
    missing: dict[str, int] = {}

    def lost(link: str) -> None:
        missing[link] = missing.get(link, 0) + 1

    api_seen = probe.seen.get("api", {})
    for tick, produced in enumerate(probe.produced):
        at = load.sample_at.get(tick)
        batch = None if at is None else batch_of(batches, str(at[0]), at[1])
        if at is None or batch is None:
            lost("worker batch")
            continue
        record = first_record.get(tick)
        if record is None:
            lost("kpi record")
            continue
        mat = batch_of(mat_batches, f"{kpi}[{record['partition']}]", record["offset"])
        if mat is None:
            lost("materializer batch")
            continue
        if tick not in api_seen:
            lost("API answer")
            continue
        part = batch["parts"][str(at[0])]
        chains[tick] = {
            "produced": produced,
            "fetched": to_perf(batch["fetched"]),
            "decoded": to_perf(part["decoded"]),
            "stepped": to_perf(batch["stepped"]),
            "built": to_perf(part["built"]),
            "appended": to_perf(record["appended"]),
            "acked": to_perf(record["acked"]),
            "mat_fetched": to_perf(mat["fetched"]),
            "mat_decoded": to_perf(mat["decoded"]),
            "upserted": to_perf(mat["upserted"]),
            "visible": produced + api_seen[tick],
            "producer_ack": load.acked.get(tick, math.nan),
        }
    notes = [f"{n} probe batch(es) without a {link}" for link, n in missing.items()]
    return chains, notes


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(math.ceil(q * len(ordered)) - 1, 0))]


def stage_table(chains: dict[int, dict[str, float]]) -> list[str]:
    """p50, p99 and the share of the end-to-end time of each stage of the probe batches."""
    if not chains:
        return ["no probe batch was followed through every stage"]
    ticks = sorted(chains)
    total = [chains[t]["visible"] - chains[t]["produced"] for t in ticks]
    header = f"{'stage':<44} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'share':>6}"
    out = [header, "-" * len(header)]
    before = "produced"
    for name, end in STAGES:
        spent = [chains[t][end] - chains[t][before] for t in ticks]
        share = sum(spent) / sum(total) if sum(total) > 0 else 0.0
        out.append(
            f"{name:<44} {quantile(spent, 0.5) * 1000:>8.1f} {quantile(spent, 0.99) * 1000:>8.1f} "
            f"{statistics.fmean(spent) * 1000:>8.1f} {share:>6.1%}"
        )
        before = end
    out.append("-" * len(header))
    out.append(
        f"{'end to end: produce -> visible in the API':<44} {quantile(total, 0.5) * 1000:>8.1f} "
        f"{quantile(total, 0.99) * 1000:>8.1f} {statistics.fmean(total) * 1000:>8.1f} "
        f"{1:>6.0%}"
    )
    acks = [chains[t]["producer_ack"] - chains[t]["produced"] for t in ticks]
    acks = [a for a in acks if not math.isnan(a)]
    if acks:
        out.append(
            f"(of the first stage: the bench's encode + send -> broker ack p50 "
            f"{quantile(acks, 0.5) * 1000:.1f} ms, p99 {quantile(acks, 0.99) * 1000:.1f} ms)"
        )
    return out


def chain_csv(chains: dict[int, dict[str, float]]) -> list[str]:
    columns = ["produced", *(end for _, end in STAGES)]
    lines = ["batch," + ",".join(f"{c}_s" for c in columns)]
    for tick in sorted(chains):
        base = chains[tick]["produced"]
        lines.append(f"{tick}," + ",".join(f"{chains[tick][c] - base:.4f}" for c in columns))
    return lines


def spans(rows: Iterator[float]) -> str:
    values = list(rows)
    if not values:
        return "n/a"
    return (
        f"p50 {quantile(values, 0.5) * 1000:7.1f}  p99 {quantile(values, 0.99) * 1000:7.1f}  "
        f"mean {statistics.fmean(values) * 1000:7.1f} ms  (n={len(values):,})"
    )


def batch_lines(
    load: Load, worker: list[dict[str, Any]], materializer: list[dict[str, Any]], kpi: str
) -> list[str]:
    """The stages over every batch stamped during the load, not only the probe's."""
    within = [
        b
        for b in worker
        if b.get("kind") == "batch" and load.started_wall <= b["fetched"] <= load.ended_wall
    ]
    parts = [(b, p) for b in within for p in b["parts"].values() if "decoded" in p]
    sends = [
        s
        for s in worker
        if s.get("kind") == "send" and s["topic"] == kpi and load.started_wall <= s["sent"]
    ]
    mats = [
        b
        for b in materializer
        if b.get("kind") == "batch"
        and "upserted" in b  # a batch of statuses only has no KPI records to upsert
        and load.started_wall <= b["fetched"] <= load.ended_wall
    ]
    mat_kpi = [(b, p) for b in mats for w, p in b["parts"].items() if w.startswith(f"{kpi}[")]
    fetched = sorted(b["fetched"] for b in within)
    gaps = [b - a for a, b in itertools.pairwise(fetched)]
    newest = (b["fetched"] - p["ts_max"] / 1000 for b, p in parts)  # Kafka timestamps: ms
    oldest = (b["fetched"] - p["ts_min"] / 1000 for b, p in parts)
    return [
        f"worker: {len(within):,} polls with records during the load, "
        f"{sum(p['records'] for _, p in parts):,} telemetry records in them",
        f"  poll to poll                    {spans(iter(gaps))}",
        f"  newest record produced -> fetched {spans(newest)}",
        f"  oldest record produced -> fetched {spans(oldest)}",
        f"  decode, a partition             {spans(p['decoded'] - b['fetched'] for b, p in parts)}",
        f"  core step, a poll               {spans(b['stepped'] - _decoded(b) for b in within)}",
        f"  emit after the step, a poll     {spans(_built(b) - b['stepped'] for b in within)}",
        f"  kpi send -> ack                 {spans(s['acked'] - s['sent'] for s in sends)} "
        f"({sum(s['records'] for s in sends):,} records in {len(sends):,} produce batches)",
        f"materializer: {len(mats):,} batches during the load",
        f"  kpi record appended -> fetched  "
        f"{spans(b['fetched'] - p['ts_max'] / 1000 for b, p in mat_kpi)}",
        f"  JSON decode, a batch            {spans(b['decoded'] - b['fetched'] for b in mats)}",
        f"  upsert, a batch                 {spans(b['upserted'] - b['decoded'] for b in mats)}",
    ]


def _decoded(batch: dict[str, Any]) -> float:
    return max((p["decoded"] for p in batch["parts"].values() if "decoded" in p), default=0.0)


def _built(batch: dict[str, Any]) -> float:
    built: list[float] = [p["built"] for p in batch["parts"].values() if "built" in p]
    stepped: float = batch["stepped"]
    return max(built) if built else stepped


# -- the core step, profiled ---------------------------------------------------------------


def profile_step(
    plant: PlantConfig, events: pl.DataFrame, warmup: int, size: int, steps: int, out: Path
) -> list[str]:
    """cProfile `steps` core steps of `size` events of the busiest home partition, its
    state first brought up to date with the warm-up, as the worker's would be."""
    core = Core.from_config(plant)
    homes = machine_homes(plant, plant.kafka.telemetry.partitions)
    busiest = events.get_column("_home").mode().item(0)
    lines = {line.id for line in plant.lines if homes.get(line.machines[0].id) == busiest}
    mine = events.filter(pl.col("_home") == busiest).drop("_home")
    cut = events.head(warmup).filter(pl.col("_home") == busiest).height
    state = initial_state(core, frozenset(lines))
    for start in range(0, cut, 50_000):
        state, _ = step(core, state, mine.slice(start, min(50_000, cut - start)))
    batches = [mine.slice(cut + i * size, size) for i in range(steps)]
    batches = [b for b in batches if b.height]
    profiler = cProfile.Profile()
    took: list[float] = []
    for batch in batches:
        began = time.perf_counter()
        profiler.enable()
        state, _ = step(core, state, batch)
        profiler.disable()
        took.append(time.perf_counter() - began)
    if not batches:
        return ["profile: no events left after the warm-up"]
    profiler.dump_stats(out / "step.pstats")
    stats = pstats.Stats(profiler)
    entries: dict[Any, tuple[int, float, float]] = {
        func: (calls, own, cumulative)
        for func, (_, calls, own, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
    }
    n = len(batches)

    def name(func: tuple[str, int, str]) -> str:
        path, line, function = func
        here = Path(path)
        short = "/".join(here.parts[-2:]) if here.parts else path
        return f"{function} ({short}:{line})" if line else function

    def rows(order: int, keep: Callable[[tuple[str, int, str]], bool]) -> list[str]:
        ranked = sorted((f for f in entries if keep(f)), key=lambda f: -entries[f][order])
        return [
            f"  {entries[f][order] / n * 1000:8.1f} ms  {entries[f][0] / n:8.0f} calls  {name(f)}"
            for f in ranked[:PROFILE_TOP]
        ]

    polars_calls = sum(c for f, (c, _, _) in entries.items() if "polars" in f[0])
    out_lines = [
        f"core step profile (cProfile, {n} steps of {size:,} events of partition {busiest}, "
        f"{len(lines)} lines, after {cut:,} warm-up events): "
        f"{statistics.fmean(took) * 1000:.0f} ms a step under the profiler "
        f"(median {statistics.median(took) * 1000:.0f} ms); "
        f"{polars_calls / n:,.0f} calls into Polars' Python API a step",
        "by own time (native Polars work included in the call that started it), per step:",
        *rows(1, lambda f: True),
        "the engine's own functions by cumulative time, per step:",
        *rows(2, lambda f: "/services/kpi/core/" in f[0]),
    ]
    return out_lines


# -- main ----------------------------------------------------------------------------------


@dataclass
class Result:
    chains: dict[int, dict[str, float]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


async def start_together(
    kafka: Kafka, plant: PlantConfig, config: Path, tmp: Path, out: Path
) -> tuple[Child, Api] | str:
    """`linepulse kpi --api` on a free port, caught up with the telemetry and ready."""
    port = free_loopback_ports(1)[0]
    cmd = worker_cmd(config, kafka.bootstrap, tmp / "state")
    cmd += ["--api", "--host", "127.0.0.1", "--port", str(port), "--db", str(tmp / "api.duckdb")]
    print("starting: linepulse kpi --api ...", flush=True)
    child = Child("kpi-api", cmd, out / "kpi-api.log")
    limit = API_READY_TIMEOUT_S
    caught = await wait_caught_up(
        kafka, child, plant.kafka.group, plant.kafka.telemetry.name, limit, out / "progress.csv"
    )
    if not caught.ok:
        child.stop()
        return f"`linepulse kpi --api` did not catch up: {caught.reason}"
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while time.perf_counter() - child.started < limit and child.alive():
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return child, Api(child, url, time.perf_counter() - child.started)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    child.stop()
    return f"`linepulse kpi --api` was not ready (see {child.log})"


async def measure(args: argparse.Namespace, bootstrap: str, tmp: Path, out: Path) -> Result:
    result = Result()
    config = out / "plant.yaml"
    tag = uuid.uuid4().hex[:8]
    config.write_text(plant_text(args.machines, kafka_block(tag, "trace", args.partitions)))
    plant = load_config(config)
    homes = machine_homes(plant, args.partitions)
    per_tick = round(LATENCY_RATE * TICK_S)
    live_events = per_tick * math.ceil(args.seconds / TICK_S)
    frame = workload(args.machines, args.warmup + live_events, args.seed)
    events = as_events(frame, homes)
    del frame
    kafka = Kafka(bootstrap)
    await kafka.start()
    traces = out / "trace"
    shutil.rmtree(traces, ignore_errors=True)
    os.environ[TRACE_ENV] = str(traces)  # the children inherit it
    os.environ[TRACE_KEY_ENV] = f"{PROBE_LINE}/{PROBE_MACHINE}/1m/"
    children: list[Child] = []
    try:
        await ensure_topics(bootstrap, plant.kafka)
        if args.warmup:
            await produce_arrow(bootstrap, plant.kafka.telemetry.name, events.head(args.warmup))
        print(f"produced: {args.warmup:,} warm-up events", flush=True)
        api: Api | str
        if args.together:
            started = await start_together(kafka, plant, config, tmp, out)
            api = started if isinstance(started, str) else started[1]
            if not isinstance(started, str):
                children.append(started[0])
        else:
            child, caught = await spawn_caught_up(
                "linepulse kpi (catching up with the warm-up)",
                kafka,
                plant,
                config,
                tmp / "state",
                out / "worker",
                args.timeout or API_READY_TIMEOUT_S,
            )
            children.append(child)
            if not caught.ok:
                raise RuntimeError(f"the worker did not catch up: {caught.reason}")
            print("starting: linepulse api (materializer + HTTP) ...", flush=True)
            api = await start_api(config, bootstrap, tmp, out)
            if not isinstance(api, str):
                children.append(api.child)
        if isinstance(api, str):
            raise RuntimeError(api)
        print(busy_note(), flush=True)
        print(f"measuring: {LATENCY_RATE:,} events/s for {args.seconds:g} s ...", flush=True)
        load = await steady_load(kafka, plant, events.slice(args.warmup), args.seconds, api)
    finally:
        for child in children:
            child.stop()
        await kafka.close()
    worker = read_trace(traces, "worker")
    materializer = read_trace(traces, "materializer")
    kpi = plant.kafka.kpi.name
    result.chains, notes = probe_chains(load, worker, materializer, kpi)
    write_lines(out / "stages.csv", chain_csv(result.chains))
    batches = len(load.probe.produced)
    result.lines += [
        f"a probe batch through every stage ({len(result.chains)} of {batches} batches "
        f"followed; wall-clock stamps of the worker and the API, joined by offsets):",
        *stage_table(result.chains),
        *(f"  {note}" for note in notes),
        "",
        "every batch during the load (the traces' own stamps; Kafka timestamps for produced):",
        *batch_lines(load, worker, materializer, kpi),
    ]
    if args.profile_steps:
        polls = [b for b in worker if b.get("kind") == "batch"]
        gaps = [
            b["fetched"] - a["fetched"]
            for a, b in itertools.pairwise(polls)
            if load.started_wall <= a["fetched"] <= load.ended_wall
        ]
        interval = statistics.median(gaps) if gaps else TICK_S
        busiest = max(events.get_column("_home").value_counts().get_column("count").to_list())
        size = max(1, round(LATENCY_RATE * interval * busiest / events.height))
        print(f"profiling: {args.profile_steps} core steps of {size:,} events ...", flush=True)
        result.lines += [
            "",
            *profile_step(plant, events, args.warmup, size, args.profile_steps, out),
        ]
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.trace",
        description="Where a batch's time goes between producing it and the KPI being "
        "visible in the API: each stage's p50, p99 and share, under a steady load.",
    )
    parser.add_argument("--machines", type=int, default=1000, help="default: 1000")
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help=f"default: {PARTITIONS}")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"length of the load at {LATENCY_RATE:,} events/s (default: {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        metavar="EVENTS",
        help=f"events produced and caught up with before the load (default: {DEFAULT_WARMUP:,})",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="worker and API in one process (`linepulse kpi --api`), not two",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=DEFAULT_PROFILE_STEPS,
        metavar="N",
        help=f"core steps to profile after the run (default: {DEFAULT_PROFILE_STEPS}; 0: none)",
    )
    harness.add_common_arguments(parser, "give up on catching up after S s (default: 300)")
    args = parser.parse_args(argv)
    if args.machines < 1 or args.partitions < 1 or args.seconds <= 0:
        parser.error("--machines, --partitions and --seconds must be positive")
    if args.warmup < 0 or args.profile_steps < 0:
        parser.error("--warmup and --profile-steps must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    how = "together" if args.together else "apart"
    out: Path = args.out / f"trace-m{args.machines}-p{args.partitions}-{how}"
    out.mkdir(parents=True, exist_ok=True)
    for line in harness.machine_lines():
        print(line)
    print(
        f"plant: {args.machines:,} machines + 1 probe; {args.partitions} partitions; "
        f"{args.warmup:,} warm-up events, then {LATENCY_RATE:,} events/s for {args.seconds:g} s; "
        f"worker and API {how}",
        flush=True,
    )
    with harness.broker_session("bench.trace", "linepulse-trace-", out) as (broker, tmp):
        result = asyncio.run(measure(args, broker.bootstrap, tmp, out))
    print()
    for line in result.lines:
        print(line)
    chains = {str(tick): stamps for tick, stamps in result.chains.items()}
    harness.write_results(out, args, stages=chains, report=result.lines)


if __name__ == "__main__":
    main()
