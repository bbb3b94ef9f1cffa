"""The Kafka throughput measurement bench.stream, bench.scale and bench.peers share.

A workload (bench/generate.py's plant, 6 signals a machine a second) produced to a topic
as LinePulse's ingesters write it (Arrow IPC records on each line's home partition) or as
any producer would (one JSON event a record, keyed by machine); then a consumer group
(a `linepulse kpi` worker, or a peer) timed from its spawn, and from its group turning
Stable, until its committed offsets reach the end of every partition.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from bench.generate import event_frame, json_lines, plant_yaml
from bench.harness import Child, CpuMeter, version, write_lines
from linepulse.config import PlantConfig
from linepulse.events import EVENT_SCHEMA
from linepulse.wire import ARROW, encode_arrow

ARROW_BATCH: Final = 5_000  # samples per Arrow record in the throughput run
PARTITIONS: Final = 6  # telemetry and kpi partitions (--partitions)
WINDOWS: Final = ("1m", "15m", "1h", "shift", "day")
LATENESS_S: Final = 10
SIGNALS: Final = ("state", "total_count", "reject_count", "temperature", "speed", "pressure")
PROBE_LINE: Final = "line-probe"
PROBE_MACHINE: Final = "probe-1"
POLL_S: Final = 0.05

WORKER_LOG_LEVEL = ["info"]  # --worker-log-level: debug logs each poll's phases


# -- the workload --------------------------------------------------------------------------


def workload(machines: int, rows: int, seed: int) -> pl.DataFrame:
    """`rows` events of bench/generate.py's plant, 6 signals a machine a second.

    Columns: ts (Datetime ms UTC), machine, signal, value (text), reason.
    """
    per_second = len(SIGNALS) * machines
    seconds = -(-rows // per_second) + 1
    generated = event_frame(machines, seconds * 10 * machines, seed)
    return generated.filter(pl.col("signal").is_in(SIGNALS)).head(rows)


def as_events(frame: pl.DataFrame, homes: dict[str, int]) -> pl.DataFrame:
    """The generated events as `EVENT_SCHEMA` rows, plus `_home`: the line's home partition."""
    is_state = pl.col("signal") == "state"
    is_count = pl.col("signal").is_in(("total_count", "reject_count"))
    events = frame.select(
        ts=pl.col("ts").dt.epoch("ms"),
        machine=pl.col("machine"),
        signal=pl.col("signal"),
        value_num=pl.when(~is_state & ~is_count).then(pl.col("value").cast(pl.Float64)),
        value_int=pl.when(is_count).then(pl.col("value").cast(pl.Int64)),
        value_str=pl.when(is_state).then(pl.col("value")),
        reason=pl.col("reason"),
        quality=pl.lit("good"),
    ).cast(EVENT_SCHEMA)
    return events.with_columns(_home=pl.col("machine").replace_strict(homes, return_dtype=pl.Int32))


def json_values(frame: pl.DataFrame) -> pl.Series:
    """One JSON event per row, as a third-party producer would write it (ts in RFC 3339)."""
    return json_lines(frame)


def plant_text(machines: int, kafka: dict[str, Any]) -> str:
    """bench/generate.py's plant, a probe line, the KPI settings and this run's topics."""
    text = plant_yaml(machines)
    text += (
        f"  - id: {PROBE_LINE}\n"
        "    machines:\n"
        f"      - {{id: {PROBE_MACHINE}, ideal_cycle_time_s: 0.5}}\n"
    )
    settings = {
        "kpi": {"lateness_s": LATENESS_S, "restate_horizon_s": 3600, "windows": list(WINDOWS)},
        "kafka": kafka,
    }
    return text + yaml.safe_dump(settings, sort_keys=False)


def kafka_block(tag: str, name: str, partitions: int = PARTITIONS) -> dict[str, Any]:
    """Topic and group names of this run's own. The run's clock stops when every offset
    is committed, which happens at a checkpoint: checkpoint every second (the default is
    5 s) so the figure measures processing, not the interval."""
    return {
        "checkpoint_interval_s": 1.0,
        "telemetry": {"name": f"telemetry-{name}-{tag}", "partitions": partitions},
        "kpi": {"name": f"kpi-{name}-{tag}", "partitions": partitions},
        "dlq": {"name": f"dlq-{name}-{tag}", "partitions": 1},
        "status": {"name": f"status-{name}-{tag}", "partitions": 1},
        "group": f"kpi-{name}-{tag}",
    }


# -- Kafka helpers -------------------------------------------------------------------------


class Kafka:
    """An admin client and a group-less consumer for offsets, owned by the benchmark."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="bench-offsets"
        )

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions; none if it does not exist (yet)."""
        try:
            described = await self.admin.describe_topics([topic])
        except KafkaError:
            return []
        numbers = sorted(
            int(p["partition"])
            for t in described
            if t.get("topic") == topic and t.get("error_code") == 0
            for p in t.get("partitions", [])
        )
        return [TopicPartition(topic, p) for p in numbers]

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(tps)
        return ends

    async def count(self, topic: str) -> int:
        tps = await self.partitions(topic)
        if not tps:
            return 0
        firsts = await self.consumer.beginning_offsets(tps)
        ends = await self.ends(tps)
        return sum(ends[tp] - firsts[tp] for tp in tps)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets; none while its coordinator is not known yet."""
        try:
            offsets = await self.admin.list_consumer_group_offsets(group)
        except KafkaError:  # e.g. the offsets topic is being created on first use
            return {}
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def stable(self, group: str) -> bool:
        """True once the group has members and has finished rebalancing."""
        try:
            responses = await self.admin.describe_consumer_groups([group])
            for response in responses:
                for described in response.groups:
                    state, members = described[2], described[5]
                    if state == "Stable" and members:
                        return True
        except Exception:  # not known yet is "not stable yet"
            return False
        return False


ArrowRecord = tuple[int, bytes, bytes]  # home partition, key, Arrow IPC value


def arrow_records(events: pl.DataFrame, size: int = ARROW_BATCH) -> Iterator[ArrowRecord]:
    """LinePulse's own way: Arrow IPC records of `size` samples on each line's home.
    Encoded apart from sending so that bench/scale.py can encode before its workers start."""
    for (home,), rows in events.partition_by("_home", as_dict=True).items():
        for start in range(0, rows.height, size):
            chunk = rows.slice(start, size)
            yield int(home), chunk.item(0, "machine").encode(), encode_arrow(chunk)


async def send_arrow(
    bootstrap: str, topic: str, records: Iterable[ArrowRecord], batch_bytes: int = 16384
) -> int:
    """Send Arrow records to their partitions; wait for every acknowledgement.
    `batch_bytes` is the producer's batch size (aiokafka's default: 16 KiB, which holds
    less than one record of 5,000 samples, so each record is a produce request)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        max_request_size=8 * 1024 * 1024,
        max_batch_size=batch_bytes,
        linger_ms=5,
    )
    await producer.start()
    count = 0
    try:
        sends = []
        for home, key, value in records:
            sends.append(
                await producer.send(
                    topic,
                    value,
                    key=key,
                    partition=home,
                    headers=[("content-type", ARROW.encode())],
                )
            )
            count += 1
        await asyncio.gather(*sends)
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def produce_arrow(
    bootstrap: str, topic: str, events: pl.DataFrame, size: int = ARROW_BATCH
) -> int:
    """Encode and send `events` as Arrow records on each line's home partition."""
    return await send_arrow(bootstrap, topic, arrow_records(events, size))


async def produce_json(bootstrap: str, topic: str, frame: pl.DataFrame, partitions: int) -> int:
    """Any producer's way: one JSON event per record, keyed by machine, placed by Kafka's
    default partitioner (murmur2 of the key), sent in batches of records."""
    homes = {m: (murmur2(m.encode()) & 0x7FFFFFFF) % partitions for m in frame["machine"].unique()}
    rows = frame.select(
        key=pl.col("machine"),
        value=json_values(frame),
        part=pl.col("machine").replace_strict(homes, return_dtype=pl.Int32),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=512 * 1024)
    await producer.start()
    try:
        sends = []
        for (part,), chunk in rows.partition_by("part", as_dict=True).items():
            batch = producer.create_batch()
            for key, value in zip(chunk["key"], chunk["value"], strict=True):
                record = (key.encode(), value.encode())
                if batch.append(key=record[0], value=record[1], timestamp=None) is None:
                    sends.append(await producer.send_batch(batch, topic, partition=int(part)))
                    batch = producer.create_batch()
                    batch.append(key=record[0], value=record[1], timestamp=None)
            sends.append(await producer.send_batch(batch, topic, partition=int(part)))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return frame.height


# -- throughput ----------------------------------------------------------------------------


@dataclass
class Caught:
    """How one consumer group got through a topic."""

    ok: bool
    seconds: float  # from spawn to every offset committed (or to giving up)
    assigned_s: float | None  # from spawn to the group being Stable
    peak_mib: float
    cpu_s: float | None
    longest_gap_s: float  # longest time without the committed offsets moving, once assigned
    others_cores: float  # CPU used meanwhile by processes that are not part of the benchmark
    reason: str = ""


@dataclass
class Throughput:
    what: str
    events: int
    caught: Caught
    notes: list[str] = field(default_factory=list)

    @property
    def sustained_s(self) -> float | None:
        c = self.caught
        return None if not c.ok or c.assigned_s is None else c.seconds - c.assigned_s

    @property
    def sustained_rate(self) -> float | None:
        s = self.sustained_s
        return None if s is None or s <= 0 else self.events / s

    @property
    def spawn_rate(self) -> float | None:
        c = self.caught
        return None if not c.ok or c.seconds <= 0 else self.events / c.seconds


async def wait_caught_up(
    kafka: Kafka, child: Child, group: str, topic: str, limit_s: float, progress: Path
) -> Caught:
    """Poll the group's committed offsets until they reach the end of every partition.

    The committed offsets are read before the end offsets: a worker flushes what it
    forwards before it commits, so records forwarded by a batch already count in the end
    offsets when that batch's commit is seen.
    """
    meter = CpuMeter()
    tps = await kafka.partitions(topic)
    assigned: float | None = None
    last_total, last_move, longest = -1, 0.0, 0.0
    lines = ["seconds_since_spawn,committed,end,peak_rss_mib"]

    def caught(ok: bool, since: float, reason: str = "") -> Caught:
        others = meter.others_cores(child.cpu_s)
        return Caught(ok, since, assigned, child.peak_mib, child.cpu_s, longest, others, reason)

    try:
        while True:
            now = time.perf_counter()
            since = now - child.started
            if not child.alive():
                return caught(False, since, f"exited with code {child.proc.returncode}")
            child.sample()
            if assigned is None and await kafka.stable(group):
                assigned, last_move = since, now
            committed = await kafka.committed(group)
            ends = await kafka.ends(tps)
            total, end = sum(committed.get(tp, 0) for tp in tps), sum(ends.values())
            lines.append(f"{since:.3f},{total},{end},{child.peak_mib:.1f}")
            if assigned is not None:
                longest = max(longest, now - last_move)
                if total != last_total:
                    last_total, last_move = total, now
            if end > 0 and all(committed.get(tp, 0) >= ends[tp] for tp in tps):
                return caught(True, since)
            if since > limit_s:
                reason = f"not caught up after {limit_s:.0f} s ({total:,} of {end:,})"
                return caught(False, since, reason)
            await asyncio.sleep(POLL_S)
    finally:
        write_lines(progress, lines)


def worker_cmd(config: Path, bootstrap: str, state_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.app",
        "--log-level",
        WORKER_LOG_LEVEL[0],
        "kpi",
        "--config",
        str(config),
        "--kafka",
        bootstrap,
        "--state-dir",
        str(state_dir),
    ]


def log_notes(name: str, child: Child, code: int | None) -> list[str]:
    """The worker's summary line, and its warnings and errors (the first few)."""
    lines = child.log_lines()
    notes = [f"{name}: log {child.log}" + ("" if code is None else f"; exit code {code}")]
    summary = [ln for ln in lines if "kpi worker stopped" in ln or "quix peer:" in ln]
    notes += [f"  | {ln.split(': ', 1)[-1]}" for ln in summary]
    bad = [
        ln
        for ln in lines
        if any(w in ln for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "[ERROR]"))
    ]
    if bad:
        notes.append(f"  {len(bad)} warning/error line(s) in the log, e.g.:")
        notes += [f"  | {ln[:240]}" for ln in bad[:5]]
    return notes


def count_note(child: Child, produced: int) -> list[str]:
    """Compare the events the worker says it read with those on the topic: a record
    delivered twice (e.g. on a fresh start) is processed twice."""
    text = "\n".join(child.log_lines())
    found = re.search(r"kpi worker stopped: \d+ batches, (\d+) events, (\d+) forwarded", text)
    if found is None:
        return []
    events, forwarded = int(found[1]), int(found[2])
    want = produced + forwarded
    if events == want:
        return [f"  the worker read {events:,} events: those produced plus those it forwarded"]
    return [
        f"  the worker read {events:,} events, {events - want:+,} against the {want:,} produced "
        "and forwarded: some records were delivered to it more than once"
    ]


async def read_all(kafka: Kafka, topic: str) -> list[tuple[bytes | None, Any]]:
    """Every record of a topic (key, JSON value), from the beginning to its end offsets."""
    tps = await kafka.partitions(topic)
    if not tps:
        return []
    ends = await kafka.ends(tps)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes | None, Any]] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            for tp, messages in batch.items():
                out += [(m.key, orjson.loads(m.value)) for m in messages]
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if not batch:
                break
    finally:
        await consumer.stop()
    return out


MinuteKey = tuple[str, int]  # machine, window start (epoch ms)


async def kpi_topic_notes(
    kafka: Kafka, plant: PlantConfig
) -> tuple[list[str], dict[MinuteKey, dict[str, Any]]]:
    """How many KPI records, finals and restatements the worker wrote, and dead letters;
    and its final 1-minute machine records, to compare with the peer's."""
    records = [value for _, value in await read_all(kafka, plant.kafka.kpi.name)]
    finals = sum(bool(r.get("final")) for r in records)
    restated = sum((r.get("revision") or 0) > 0 for r in records)
    dead = await kafka.count(plant.kafka.dlq.name)
    minutes = {
        (r["machine"], window_ms(r["window_start"])): r
        for r in records
        if r.get("final") and r.get("window") == "1m" and r.get("machine")
    }
    notes = [
        f"  kpi topic: {len(records):,} records ({finals:,} final, {restated:,} with revision "
        f"> 0); {dead:,} dead letters"
    ]
    return notes, minutes


async def peer_check(
    kafka: Kafka, topic: str, linepulse: dict[MinuteKey, dict[str, Any]]
) -> list[str]:
    """Do the peer's closed 1-minute windows agree with LinePulse's final 1m records?"""
    peer: dict[MinuteKey, dict[str, Any]] = {}
    for key, value in await read_all(kafka, topic):
        if key is not None and isinstance(value, dict):
            peer[(key.decode(), int(value["start"]))] = value
    both = sorted(peer.keys() & linepulse.keys())
    if not both:
        return [
            f"  peer check: no machine-minute closed in both ({len(peer):,} peer windows, "
            f"{len(linepulse):,} LinePulse final 1m records); more events close more windows"
        ]
    parts = sum(peer[k]["parts"] == linepulse[k]["total_count"] for k in both)
    rejects = sum(peer[k]["rejects"] == linepulse[k]["reject_count"] for k in both)
    run = sum(abs(peer[k]["run_ms"] / 1000 - (linepulse[k]["run_s"] or 0)) <= 1 for k in both)
    return [
        f"  peer check: {len(both):,} machine-minutes closed in both; parts = LinePulse "
        f"total_count in {parts:,}, rejects = reject_count in {rejects:,}, run time within "
        f"1 s of run_s in {run:,} (the peer does not split states at window boundaries)"
    ]


# -- one consumer group to the end -----------------------------------------------------------


@dataclass
class Rows:
    """The throughput rows of a run, its notes, and LinePulse's JSON row: the baseline the
    peers' rows are printed beside."""

    rows: list[Throughput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    json: Throughput | None = None


def timeout_for(args: argparse.Namespace, events: int) -> float:
    return float(args.timeout) if args.timeout else max(120.0, events / 10_000)


def window_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def rate_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def cpu_text(caught: Caught) -> str:
    if caught.cpu_s is None:
        return "n/a"
    cores = caught.cpu_s / caught.seconds if caught.seconds > 0 else 0.0
    return f"{caught.cpu_s:.1f} s in {caught.seconds:.1f} s ({cores:.2f} cores)"


async def run_peer(
    args: argparse.Namespace,
    kafka: Kafka,
    plant: PlantConfig,
    tmp: Path,
    out: Path,
    run: Rows,
) -> None:
    quix = version("quixstreams")
    what = f"Quix Streams {quix}, JSON per record"
    if quix == "not installed":
        run.notes.append("peer: quixstreams is not installed (pip install quixstreams); skipped")
        return
    topic = plant.kafka.telemetry.name
    group = f"quix-{plant.kafka.group}"
    cmd = [
        sys.executable,
        "-m",
        "bench.stream_peer_quix",
        "--broker",
        kafka.bootstrap,
        "--input",
        topic,
        "--output",
        f"quix-out-{plant.kafka.group}",
        "--group",
        group,
        "--state-dir",
        str(tmp / "state-quix"),
        "--commit-interval",
        f"{plant.kafka.checkpoint_interval_s:g}",
    ]
    print(f"measuring: {what} ...", flush=True)
    child = Child("quix", cmd, out / "peer-quix.log")
    code: int | None = None
    try:
        caught = await wait_caught_up(
            kafka,
            child,
            group,
            topic,
            timeout_for(args, args.json_events),
            out / "progress-quix.csv",
        )
    finally:
        code = child.stop()
    row = Throughput(what, args.json_events, caught)
    windows = await kafka.count(f"quix-out-{plant.kafka.group}")
    row.notes = log_notes(what, child, code)
    row.notes.append(
        f"  {windows:,} window results on its output topic; commit interval "
        f"{plant.kafka.checkpoint_interval_s:g} s; CPU {cpu_text(caught)}"
    )
    run.rows.append(row)


async def spawn_caught_up(
    what: str,
    kafka: Kafka,
    plant: PlantConfig,
    config: Path,
    state_dir: Path,
    name: Path,
    limit_s: float,
) -> tuple[Child, Caught]:
    """Spawn a `linepulse kpi` worker (log `{name}.log`, progress `{name}-progress.csv`)
    and wait until its group has committed every telemetry offset, or `limit_s`; the child
    is still running when this returns (stopped if the wait fails), for the caller to
    measure more or stop it."""
    print(f"measuring: {what} ...", flush=True)
    child = Child(name.name, worker_cmd(config, kafka.bootstrap, state_dir), Path(f"{name}.log"))
    try:
        caught = await wait_caught_up(
            kafka,
            child,
            plant.kafka.group,
            plant.kafka.telemetry.name,
            limit_s,
            Path(f"{name}-progress.csv"),
        )
    except BaseException:
        child.stop()
        raise
    return child, caught


async def run_worker(
    what: str,
    events: int,
    kafka: Kafka,
    plant: PlantConfig,
    config: Path,
    state_dir: Path,
    name: Path,
    limit_s: float,
) -> tuple[Throughput, dict[MinuteKey, dict[str, Any]]]:
    child, caught = await spawn_caught_up(what, kafka, plant, config, state_dir, name, limit_s)
    code = child.stop()
    row = Throughput(what, events, caught)
    topic_notes, minutes = await kpi_topic_notes(kafka, plant)
    row.notes = log_notes(what, child, code) + count_note(child, events) + topic_notes
    gap = caught.longest_gap_s
    row.notes.append(f"  CPU {cpu_text(caught)}; longest time without commit progress {gap:.2f} s")
    return row, minutes
