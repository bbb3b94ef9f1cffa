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
import importlib.metadata
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx
import orjson
import polars as pl
import psutil
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from bench.generate import DEFAULT_OUT, MACHINES_PER_LINE, event_frame, json_lines, plant_yaml
from bench.replay import busy_note, machine_lines
from linepulse.config import PlantConfig, load_config
from linepulse.events import EVENT_SCHEMA, Row
from linepulse.runtime import free_loopback_ports
from linepulse.wire import ARROW, encode_arrow
from services.kpi.topics import ensure_topics, machine_homes

ROOT: Final = Path(__file__).resolve().parents[1]
KAFKA_SH: Final = ROOT / "deploy" / "kafka" / "kafka.sh"

DEFAULT_EVENTS: Final = 5_000_000
QUICK_EVENTS: Final = 1_000_000
DEFAULT_JSON_EVENTS: Final = 1_000_000
QUICK_JSON_EVENTS: Final = 300_000
LATENCY_RATE: Final = 20_000  # events/s
LATENCY_SECONDS: Final = 30.0
QUICK_LATENCY_SECONDS: Final = 10.0
TICK_S: Final = 0.1  # one Arrow batch per home partition every 100 ms
ARROW_BATCH: Final = 5_000  # samples per Arrow record in the throughput run
PARTITIONS: Final = 6  # telemetry and kpi partitions (--partitions)
WINDOWS: Final = ("1m", "15m", "1h", "shift", "day")
LATENESS_S: Final = 10
SIGNALS: Final = ("state", "total_count", "reject_count", "temperature", "speed", "pressure")
PROBE_LINE: Final = "line-probe"
PROBE_MACHINE: Final = "probe-1"
PROBE_BASE: Final = 1_000_000

GOAL_ARROW: Final = 200_000
GOAL_JSON: Final = 50_000
GOAL_P99_S: Final = 1.0

POLL_S: Final = 0.05
SEEN_GRACE_S: Final = 15.0  # after the last batch, how long to wait for it to be visible
API_POLL_S: Final = 0.01
API_READY_TIMEOUT_S: Final = 300.0
START_TIMEOUT_S: Final = 300.0  # a fresh checkout fetches the broker's jars first
STOP_TIMEOUT_S: Final = 60.0

CHILDREN: list[Child] = []
WORKER_LOG_LEVEL = ["info"]  # --worker-log-level: debug logs each poll's phases
OUR_PIDS: list[int] = []  # the broker: its CPU is part of the benchmark, not noise


# -- the broker ----------------------------------------------------------------------------


class Broker:
    """A single-node KRaft broker from deploy/kafka/kafka.sh, data in `data`."""

    def __init__(self, data: Path) -> None:
        port, controller = free_loopback_ports(2)
        self.data = data
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_DATA": str(data),
        }
        self.started = False

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # a Ctrl-C at the terminal must not cut a stop short
        )

    def start(self) -> str:
        self.started = True  # a failed start may still leave a process: stop() checks
        done = self._run("start", START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed:\n{done.stdout}{done.stderr}")
        return done.stdout.strip()

    def pid(self) -> int | None:
        try:
            return int((self.data / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> str:
        if not self.started:
            return "kafka.sh: never started"
        done = self._run("stop", STOP_TIMEOUT_S + 10)
        self.started = done.returncode != 0
        return (done.stdout + done.stderr).strip()


# -- subprocesses --------------------------------------------------------------------------


class Child:
    """A measured subprocess: output to a log file, peak RSS from the kernel's VmHWM."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.peak_kib = 0
        self.cpu_s: float | None = None
        CHILDREN.append(self)

    def sample(self) -> None:
        """Read the high-water mark of the resident set and the CPU time used so far."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
        except (OSError, ValueError, IndexError):  # not Linux, or gone: psutil's current RSS
            with _quiet_psutil():
                rss = psutil.Process(self.proc.pid).memory_info().rss // 1024
                self.peak_kib = max(self.peak_kib, rss)
        with _quiet_psutil():
            process = psutil.Process(self.proc.pid)
            times = process.cpu_times()
            self.cpu_s = times.user + times.system
            # A program that runs helpers (none of those measured here does, so far) is
            # charged for them too: the sampled resident sets of the whole process tree.
            if kids := process.children(recursive=True):
                tree = process.memory_info().rss
                for kid in kids:
                    with _quiet_psutil():
                        tree += kid.memory_info().rss
                self.peak_kib = max(self.peak_kib, tree // 1024)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM (a clean stop: checkpoint, commit, leave), SIGKILL after a minute."""
        if self.alive():
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self in CHILDREN:
            CHILDREN.remove(self)
        return code

    def log_lines(self) -> list[str]:
        return self.log.read_text("utf-8", "replace").splitlines()


@contextmanager
def _quiet_psutil() -> Iterator[None]:
    try:
        yield
    except (psutil.Error, OSError):
        pass


def kill_children() -> None:
    for child in list(CHILDREN):
        if child.alive():
            child.proc.kill()
            child.proc.wait()
        CHILDREN.remove(child)


def _busy_s() -> float:
    """CPU seconds all CPUs have spent busy since boot (steal included: another VM's use)."""
    t = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(t, name, 0.0) for name in fields))


def _process_cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


class CpuMeter:
    """CPU used by other processes: not this one, not the broker, not the measured child."""

    def __init__(self) -> None:
        self.wall, self.busy, self.ours = time.perf_counter(), _busy_s(), self._ours()

    @staticmethod
    def _ours() -> float:
        return _process_cpu_s(os.getpid()) + sum(_process_cpu_s(p) for p in OUR_PIDS)

    def others_cores(self, child_cpu_s: float | None) -> float:
        wall = time.perf_counter() - self.wall
        if wall <= 0:
            return 0.0
        others = _busy_s() - self.busy - (self._ours() - self.ours) - (child_cpu_s or 0.0)
        return max(others, 0.0) / wall


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


def probe_rows(tick: int, ts: int) -> pl.DataFrame:
    """The probe's sample for one latency batch: total_count = PROBE_BASE + tick."""
    rows: list[Row] = [
        (ts, PROBE_MACHINE, "total_count", None, PROBE_BASE + tick, None, None, "good")
    ]
    if tick == 0:
        rows.insert(0, (ts, PROBE_MACHINE, "state", None, None, "running", None, "good"))
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


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
    try:
        while True:
            now = time.perf_counter()
            since = now - child.started
            if not child.alive():
                code = child.proc.returncode
                return Caught(
                    False,
                    since,
                    assigned,
                    child.peak_mib,
                    child.cpu_s,
                    longest,
                    meter.others_cores(child.cpu_s),
                    f"exited with code {code}",
                )
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
                others = meter.others_cores(child.cpu_s)
                return Caught(True, since, assigned, child.peak_mib, child.cpu_s, longest, others)
            if since > limit_s:
                return Caught(
                    False,
                    since,
                    assigned,
                    child.peak_mib,
                    child.cpu_s,
                    longest,
                    meter.others_cores(child.cpu_s),
                    f"not caught up after {limit_s:.0f} s ({total:,} of {end:,})",
                )
            await asyncio.sleep(POLL_S)
    finally:
        write_lines(progress, lines)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def worker_cmd(config: Path, bootstrap: str, state_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "linepulse.cli",
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
        (r["machine"], _window_ms(r["window_start"])): r
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


def _window_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


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
        start = _window_ms(record["window_start"])
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
        for reader in readers:
            reader.cancel()
        for reader in readers:
            try:
                await reader
            except asyncio.CancelledError:
                pass
        await client.aclose()
        await producer.stop()
        await consumer.stop()
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
        [sys.executable, "-m", "linepulse.cli", "api", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
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
    cmd = [sys.executable, "-m", "linepulse.cli", "--log-level", "info", "api"]
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


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def kafka_version() -> str:
    jars = sorted((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    return jars[0].stem.removeprefix("kafka_2.13-") if jars else "unknown"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


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
            f"{_rate(row.sustained_rate):>10} {c.peak_mib:>13,.0f}"
        )
        out.append(
            f"{'  incl. start (spawn -> caught up)':<44} {row.events:>10,} "
            f"{c.seconds:>8.2f} {_rate(row.spawn_rate):>10}"
        )
    if latency is not None:
        rate = latency.events / latency.seconds if latency.seconds > 0 else 0.0
        what = f"LinePulse, latency run (Arrow, {LATENCY_RATE:,}/s)"
        out.append(
            f"{what:<44} {latency.events:>10,} {latency.seconds:>8.2f} {rate:>10,.0f} "
            f"{latency.peak_mib:>13,.0f}"
        )
    return out


def mark(passed: bool) -> str:
    return "PASS" if passed else "MISS"


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
            f"of the second half {fmt(0.5, part=slice(half, None))} (much higher: falling behind)",
        ]
    out += [
        f"  open-window records are published at most every kafka.open_interval_s = "
        f"{open_interval:g} s per key, so a processed batch can wait up to that long;",
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
    parser.add_argument("--seed", type=int, default=42, help="default: 42")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up on a throughput run after S s (default: events / 10,000, at least 120)",
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


def timeout_for(args: argparse.Namespace, events: int) -> float:
    return float(args.timeout) if args.timeout else max(120.0, events / 10_000)


@dataclass
class Run:
    """Everything the report needs."""

    rows: list[Throughput] = field(default_factory=list)
    arrow: Throughput | None = None
    json: Throughput | None = None
    latency: Latency | None = None
    notes: list[str] = field(default_factory=list)


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
        f"kafka.open_interval_s {arrow_plant.kafka.open_interval_s:g}",
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


async def run_peer(
    args: argparse.Namespace,
    kafka: Kafka,
    plant: PlantConfig,
    tmp: Path,
    out: Path,
    run: Run,
) -> None:
    version = _version("quixstreams")
    what = f"Quix Streams {version}, JSON per record"
    if version == "not installed":
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
        f"{plant.kafka.checkpoint_interval_s:g} s; CPU {_cpu(caught)}"
    )
    run.rows.append(row)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _cpu(caught: Caught) -> str:
    if caught.cpu_s is None:
        return "n/a"
    cores = caught.cpu_s / caught.seconds if caught.seconds > 0 else 0.0
    return f"{caught.cpu_s:.1f} s in {caught.seconds:.1f} s ({cores:.2f} cores)"


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
    print(f"measuring: {what} ...", flush=True)
    child = Child(name.name, worker_cmd(config, kafka.bootstrap, state_dir), Path(f"{name}.log"))
    code: int | None = None
    try:
        caught = await wait_caught_up(
            kafka,
            child,
            plant.kafka.group,
            plant.kafka.telemetry.name,
            limit_s,
            Path(f"{name}-progress.csv"),
        )
    finally:
        code = child.stop()
    row = Throughput(what, events, caught)
    topic_notes, minutes = await kpi_topic_notes(kafka, plant)
    row.notes = log_notes(what, child, code) + count_note(child, events) + topic_notes
    row.notes.append(
        f"  CPU {_cpu(caught)}; longest time without commit progress {caught.longest_gap_s:.2f} s"
    )
    return row, minutes


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
    print(f"measuring: {what} ...", flush=True)
    name = out / "worker-arrow"
    child = Child(
        name.name, worker_cmd(config, kafka.bootstrap, tmp / "state-arrow"), Path(f"{name}.log")
    )
    code: int | None = None
    latency: Latency | None = None
    api: Api | None = None
    try:
        caught = await wait_caught_up(
            kafka,
            child,
            plant.kafka.group,
            plant.kafka.telemetry.name,
            timeout_for(args, args.events),
            Path(f"{name}-progress.csv"),
        )
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
        f"  CPU until caught up {_cpu(caught)}; longest time without commit progress "
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
    print(f"(cores used by other processes during each run, of {_cores()}: {noise})")
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
    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [
            {
                **asdict(r),
                "sustained_events_per_s": r.sustained_rate,
                "spawn_events_per_s": r.spawn_rate,
            }
            for r in run.rows
        ],
        "latency": None if run.latency is None else asdict(run.latency),
    }
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"artefacts: {out}")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.out / f"stream-m{args.machines}-e{args.events}-j{args.json_events}"
    out.mkdir(parents=True, exist_ok=True)
    for line in machine_lines():
        print(line)
    print(
        f"kafka {kafka_version()} (deploy/kafka, one broker, heap "
        f"{os.environ.get('KAFKA_HEAP', '512m')}); aiokafka {_version('aiokafka')}; "
        f"quixstreams {_version('quixstreams')} (confluent-kafka {_version('confluent-kafka')})"
    )
    lines = -(-args.machines // MACHINES_PER_LINE)
    print(
        f"plant: {args.machines:,} machines in {lines} lines of {MACHINES_PER_LINE} + 1 probe "
        f"machine; signals {','.join(SIGNALS)} at 1 s; {args.events:,} Arrow events "
        f"({ARROW_BATCH:,} a record), {args.json_events:,} JSON events, latency "
        f"{args.latency_seconds:g} s at {LATENCY_RATE:,} events/s; seed {args.seed}",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="linepulse-stream-"))
    broker = Broker(tmp / "kafka")
    run = Run()
    interrupted = False
    try:
        print(broker.start(), flush=True)
        pid = broker.pid()
        if pid is not None:
            OUR_PIDS.append(pid)
        asyncio.run(measure(args, broker.bootstrap, tmp, out, run))
        ckpt = load_config(out / "plant-arrow.yaml").kafka
        report(args, run, out, ckpt.open_interval_s, ckpt.checkpoint_interval_s)
    except KeyboardInterrupt:
        print("bench.stream: interrupted; stopping what it started", file=sys.stderr, flush=True)
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kill_children()
        server_log = tmp / "kafka" / "logs" / "server.log"
        if server_log.exists():
            shutil.copy(server_log, out / "kafka-server.log")
        print(broker.stop(), flush=True)
        if not broker.started:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"the broker did not stop; its data is in {tmp}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
