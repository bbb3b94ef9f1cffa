"""Ingest benchmark: MQTT (JSON and Sparkplug B) and OPC-UA into Kafka, beside baselines.

    python -m bench.ingest             # 300,000 JSON messages, 10,000 DDATA, OPC-UA 20 s
    python -m bench.ingest --quick     # 100,000 JSON messages, 3,000 DDATA, OPC-UA 8 s

It starts its own Kafka broker (bench/harness.py's `Broker`: deploy/kafka/kafka.sh on free
loopback ports, data in a temporary folder) and its own Mosquitto (/usr/sbin/mosquitto,
a temporary config on a free loopback port, queues unlimited so a persistent session can
hold everything pre-published), and always stops both, also on Ctrl-C or SIGTERM. The
ingesters and the SpooledSink run in this process, as `linepulse ingest` runs them.
Measured, one after the other:

1. **MQTT JSON -> Kafka**: one sample a message on `plant/{line}/{machine}/{signal}`.
   The ingester's client id connects once (persistent session, its subscriptions), then
   `--publishers` `mosquitto_pub -l -q 1` processes pre-publish the messages, which the
   broker queues for the session. Timed from `SpooledSink.start()` (topics already exist)
   until the sink's counter of samples acknowledged by Kafka reaches N.
2. **MQTT Sparkplug B -> Kafka**: NBIRTH, a DBIRTH per device (100 metrics with aliases),
   then DDATA messages of 100 aliased Double metrics each, published QoS 1 from this
   process (aiomqtt) before the ingester starts; same method. Samples = DBIRTH + DDATA
   metrics.
3. **OPC-UA -> Kafka**: `python -m tests.integration.opcua_server serve` in its own
   process (a PlcServer with asyncua's per-subscriber DataValue deep copy skipped: the
   stock server tops out near 6.5k changes/s and would measure itself) rewrites all its
   Double nodes as fast as it can for S seconds; the OpcuaIngester + SpooledSink here count
   what reaches Kafka (publishing interval 100 ms, sampling 0, queue 1000).
4. **Baselines**: (a) a plain aiokafka producer loop sending the same number of one-sample
   JSON records (default producer settings, linger 5 ms, all sends then one gather): the
   Kafka side without any protocol; (b) `mosquitto_sub -C N` draining the same queued
   MQTT messages from its own persistent session: the broker and a C client.

Peak RSS is this process's kernel high-water mark (VmHWM), reset before each ingest run
(`/proc/self/clear_refs`), so it is the ingest side's; CPU is this process's CPU time.
After each run the telemetry topic is read back and decoded (`linepulse.wire`) to check
the sample count. Everything is printed, nothing asserted; exit code 0 unless the
benchmark itself cannot run. Artefacts (mosquitto config and log, Kafka server log,
results.json) go to bench/out/ingest-.../.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from bench import harness
from bench.generate import DEFAULT_OUT
from bench.harness import (
    CHILDREN,
    OUR_PIDS,
    CpuMeter,
    busy_note,
    kill_children,
    machine_lines,
    mark,
    peak_rss_mib,
    reset_peak_rss,
    version,
)
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, parse_config
from linepulse.runtime import free_loopback_ports
from linepulse.wire import decode_records
from services.ingest import sparkplug
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from services.ingest.opcua import OpcuaIngester
from services.ingest.spooled_sink import SpooledSink

MOSQUITTO: Final = "/usr/sbin/mosquitto"

DEFAULT_MESSAGES: Final = 300_000
QUICK_MESSAGES: Final = 100_000
DEFAULT_DDATA: Final = 10_000
QUICK_DDATA: Final = 3_000
DEFAULT_OPCUA_S: Final = 20.0
QUICK_OPCUA_S: Final = 8.0
OPCUA_NODES: Final = 200  # Double nodes, 10 a machine (tests/integration/opcua_server.py)
OPCUA_PER_MACHINE: Final = 10
METRICS: Final = 100  # Sparkplug metrics a device, each DDATA carries all of them
DEVICES: Final = 10
PARTITIONS: Final = 6

GOAL_JSON: Final = 10_000  # messages/s
GOAL_SPARKPLUG: Final = 100_000  # samples/s
GOAL_OPCUA_SHARE: Final = 0.95
GOAL_OPCUA_RATE: Final = 20_000  # changes/s the server must write

POLL_S: Final = 0.005
STALL_S: Final = 30.0  # no progress for this long: give up on the run
OPCUA_STALL_S: Final = 3.0  # after the writer stopped: nothing new for this long means done


# -- Mosquitto ------------------------------------------------------------------------------


class Mosquitto:
    """Our own broker on a free loopback port; stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_loopback_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # Pre-published messages wait in the sessions: no queue limit (default 1000).
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}); see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            return f"mosquitto {self.version()} on 127.0.0.1:{self.port} (pid {self.proc.pid})"
        raise RuntimeError("mosquitto did not listen within 10 s")

    @staticmethod
    def version() -> str:
        done = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
        first = (done.stdout or done.stderr).splitlines()[:1]
        return first[0].split()[-1] if first else "?"

    def stop(self) -> str:
        proc = self.proc
        if proc is None:
            return "mosquitto: never started"
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self.proc = None
        return f"mosquitto stopped (pid {proc.pid})"


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    unit: str  # what `items` counts
    items: int  # expected
    done: int  # reached the end
    seconds: float
    goal: str = ""
    passed: bool | None = None
    peak_mib: float | None = None
    cpu_s: float | None = None
    others_cores: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plant(
    tag: str, name: str, tmp: Path, machines: list[str], sources: dict[str, Any]
) -> PlantConfig:
    """One line `l1` with `machines`, the given sources, and this run's own topics."""
    return parse_config(
        {
            "site": "bench",
            "lines": [{"id": "l1", "machines": [{"id": m} for m in machines]}],
            "sources": sources,
            "ingest": {
                "spool_dir": str(tmp / f"spool-{name}"),
                "state_dir": str(tmp / f"state-{name}"),
            },
            "kafka": {
                "telemetry": {"name": f"telemetry-{name}-{tag}", "partitions": PARTITIONS},
                "dlq": {"name": f"dlq-{name}-{tag}", "partitions": 1},
                "kpi": {"name": f"kpi-{name}-{tag}", "partitions": 1},
                "status": {"name": f"status-{name}-{tag}", "partitions": 1},
            },
        }
    )


async def topic_samples(bootstrap: str, topic: str, partitions: int) -> int:
    """Samples on a telemetry topic, read back and decoded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        if not tps:
            return 0
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        total = 0
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batch.items():
                decoded = decode_records(
                    (r.value, list(r.headers), r.offset) for r in records if r.value is not None
                )
                total += decoded.events.height
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return total
    finally:
        await consumer.stop()


async def poll_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def ingest_until(
    sink: SpooledSink, ingester_run: Any, expected: int, limit_s: float
) -> tuple[float, int]:
    """Run the ingester until the sink has `expected` samples acknowledged (or stalls)."""
    stop = asyncio.Event()
    began = time.perf_counter()
    await sink.start()
    task = asyncio.create_task(ingester_run(stop), name="bench-ingester")
    last, moved = 0, time.perf_counter()
    try:
        while sink.sent_samples < expected:
            await asyncio.sleep(POLL_S)
            now = time.perf_counter()
            if sink.sent_samples != last:
                last, moved = sink.sent_samples, now
            elif now - moved > limit_s or task.done():
                break
        took = time.perf_counter() - began
    finally:
        stop.set()
        await task
        await sink.close()
    return took, sink.sent_samples


async def create_session(port: int, client_id: str, filters: list[str]) -> None:
    """Connect once as `client_id` with a persistent session and subscribe, then leave."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=False,
    ) as client:
        for name in filters:
            await client.subscribe(name, qos=1)


def mosquitto_sub_cmd(port: int, client_id: str, topic: str) -> list[str]:
    return ["mosquitto_sub", "-p", str(port), "-c", "-i", client_id, "-q", "1", "-t", topic]


def sub_session(port: int, client_id: str, topic: str) -> None:
    cmd = [*mosquitto_sub_cmd(port, client_id, topic), "-E"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def sub_baseline(what: str, port: int, client_id: str, topic: str, count: int) -> Row:
    """`mosquitto_sub -C count` draining its persistent session, timed."""
    print(f"measuring: {what} ...", flush=True)
    meter = CpuMeter()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [*mosquitto_sub_cmd(port, client_id, topic), "-C", str(count)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    CHILDREN.append(proc)
    ps = psutil.Process(proc.pid)
    cpu = 0.0
    peak: float | None = None
    try:
        while proc.poll() is None and time.perf_counter() - began < 300:
            try:
                t = ps.cpu_times()
                cpu = t.user + t.system
                peak = peak_rss_mib(proc.pid) or peak
            except psutil.Error:
                pass
            time.sleep(0.01)
        took = time.perf_counter() - began
        ok = proc.poll() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        CHILDREN.remove(proc)
    row = Row(what, "messages", count, count if ok else 0, took, peak_mib=peak, cpu_s=cpu)
    row.others_cores = meter.others_cores(cpu)
    if not ok:
        row.notes.append(f"  {what}: mosquitto_sub did not receive {count:,} within 300 s")
    return row


# -- 1. MQTT JSON ---------------------------------------------------------------------------


def publish_lines(port: int, files: list[Path], topics: list[str]) -> tuple[float, list[str]]:
    """One `mosquitto_pub -l -q 1` a file (a message a line), all at once; returns the
    seconds until the last one exited and the errors of those that failed."""
    began = time.perf_counter()
    procs = []
    for path, topic in zip(files, topics, strict=True):
        with path.open("rb") as stdin:
            cmd = ["mosquitto_pub", "-p", str(port), "-q", "1", "-l", "-t", topic]
            procs.append(
                subprocess.Popen(
                    cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
            )
    CHILDREN.extend(procs)
    failed = []
    for proc in procs:
        _, err = proc.communicate()
        CHILDREN.remove(proc)
        if proc.returncode != 0:
            failed.append(err.decode(errors="replace").strip())
    return time.perf_counter() - began, failed


async def mqtt_json(
    args: argparse.Namespace, port: int, bootstrap: str, tmp: Path, run: Run
) -> None:
    tag = uuid.uuid4().hex[:8]
    n, pubs = args.messages, args.publishers
    machines = [f"m{i:03d}" for i in range(pubs)]
    client_id = f"bench-ingest-json-{tag}"
    source = {
        "id": "bench-mqtt-json",
        "port": port,
        "client_id": client_id,
        "qos": 1,
        "topics": [{"pattern": "plant/{line}/{machine}/{signal}"}],
    }
    config = plant(tag, "json", tmp, machines, {"mqtt": [source]})
    await ensure_topics(bootstrap, config.kafka)
    ingest_metrics = IngestMetrics.create(CollectorRegistry())  # shared, as in production
    sink = SpooledSink(config, bootstrap, config.ingest, ingest_metrics)
    ingester = MqttIngester(config.sources.mqtt[0], config, sink, ingest_metrics)
    await create_session(port, client_id, ingester.subscriptions())
    sub_id = f"bench-sub-json-{tag}"
    sub_session(port, sub_id, "plant/#")

    # Pre-publish: `pubs` mosquitto_pub -l processes, one topic (machine) each.
    shares = [n // pubs + (1 if i < n % pubs else 0) for i in range(pubs)]
    files = []
    for i, share in enumerate(shares):
        path = tmp / f"json-{i}.txt"
        path.write_bytes(b"".join(b'{"value":%d.5}\n' % v for v in range(share)))
        files.append(path)
    print(f"publishing: {n:,} JSON messages with {pubs} mosquitto_pub -l -q 1 ...", flush=True)
    topics = [f"plant/l1/{m}/temperature" for m in machines]
    took, failed = await asyncio.to_thread(publish_lines, port, files, topics)
    print(f"published in {took:.1f} s ({n / took:,.0f} messages/s)", flush=True)
    if failed:
        run.notes.append(f"mosquitto_pub failed: {failed[:2]}")

    run.rows.append(
        await asyncio.to_thread(
            sub_baseline, "baseline: mosquitto_sub -C N (JSON)", port, sub_id, "plant/#", n
        )
    )

    what = "MQTT JSON -> Kafka"
    print(f"measuring: {what} ...", flush=True)
    reset_peak_rss()
    meter, cpu0 = CpuMeter(), time.process_time()
    seconds, sent = await ingest_until(sink, ingester.run, n, STALL_S)
    row = Row(what, "messages", n, sent, seconds, f">= {GOAL_JSON:,}/s", peak_mib=peak_rss_mib())
    row.cpu_s = time.process_time() - cpu0
    row.others_cores = meter.others_cores(None)
    row.passed = sent >= n and row.rate >= GOAL_JSON
    on_topic = await topic_samples(
        bootstrap, config.kafka.telemetry.name, config.kafka.telemetry.partitions
    )
    row.notes.append(
        f"  {what}: {sent:,} samples acknowledged by Kafka, {on_topic:,} decoded back from "
        f"{config.kafka.telemetry.name}; dead letters {sink.sent_letters}"
    )
    run.rows.append(row)


# -- 2. Sparkplug B -------------------------------------------------------------------------


def _births(group: str, edge: str, devices: list[str]) -> list[tuple[str, bytes]]:
    now = int(time.time() * 1000)
    node = [
        sparkplug.Metric(sparkplug.BDSEQ, None, 0, sparkplug.INT64),
        sparkplug.Metric(sparkplug.REBIRTH, None, False, sparkplug.BOOLEAN),
    ]
    out = [
        (
            sparkplug.topic(group, sparkplug.NBIRTH, edge),
            sparkplug.encode_payload(node, seq=0, timestamp_ms=now),
        )
    ]
    for seq, device in enumerate(devices, start=1):
        metrics = [sparkplug.Metric(f"a{j}", j, 0.0, sparkplug.DOUBLE) for j in range(METRICS)]
        payload = sparkplug.encode_payload(metrics, seq=seq % 256, timestamp_ms=now)
        out.append((sparkplug.topic(group, sparkplug.DBIRTH, edge, device), payload))
    return out


async def publish_sparkplug(
    port: int, group: str, edge: str, devices: list[str], ddata: int
) -> tuple[int, float]:
    """NBIRTH, DBIRTHs, then `ddata` DDATA round robin over the devices; returns the
    samples the births carry and the seconds it took."""
    began = time.perf_counter()
    births = _births(group, edge, devices)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"edge-{edge}", protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        for name, payload in births:
            await client.publish(name, payload, qos=1)
        seq = len(births) - 1
        for i in range(ddata):
            seq = sparkplug.next_seq(seq)
            device = devices[i % len(devices)]
            metrics = [
                sparkplug.Metric(None, j, float(i) + j / 100, sparkplug.UNKNOWN)
                for j in range(METRICS)
            ]
            payload = sparkplug.encode_payload(
                metrics, seq=seq, timestamp_ms=int(time.time() * 1000)
            )
            await client.publish(
                sparkplug.topic(group, sparkplug.DDATA, edge, device), payload, qos=1
            )
    return len(devices) * METRICS, time.perf_counter() - began


async def mqtt_sparkplug(
    args: argparse.Namespace, port: int, bootstrap: str, tmp: Path, run: Run
) -> None:
    tag = uuid.uuid4().hex[:8]
    group = f"bench{tag}"
    devices = [f"d{i:02d}" for i in range(DEVICES)]
    client_id = f"bench-ingest-spb-{tag}"
    source = {
        "id": "bench-mqtt-spb",
        "port": port,
        "client_id": client_id,
        "qos": 1,
        "sparkplug": {"group": group},
    }
    config = plant(tag, "spb", tmp, devices, {"mqtt": [source]})
    await ensure_topics(bootstrap, config.kafka)
    ingest_metrics = IngestMetrics.create(CollectorRegistry())  # shared, as in production
    sink = SpooledSink(config, bootstrap, config.ingest, ingest_metrics)
    ingester = MqttIngester(config.sources.mqtt[0], config, sink, ingest_metrics)
    await create_session(port, client_id, ingester.subscriptions())
    sub_id = f"bench-sub-spb-{tag}"
    sub_filter = f"{sparkplug.NAMESPACE}/{group}/#"
    sub_session(port, sub_id, sub_filter)

    ddata = args.ddata
    print(
        f"publishing: Sparkplug B NBIRTH, {DEVICES} DBIRTH and {ddata:,} DDATA of {METRICS} "
        "metrics (aiomqtt, QoS 1) ...",
        flush=True,
    )
    birth_samples, took = await publish_sparkplug(port, group, "edge1", devices, ddata)
    messages = 1 + DEVICES + ddata
    print(f"published in {took:.1f} s ({messages / took:,.0f} messages/s)", flush=True)
    expected = birth_samples + ddata * METRICS

    run.rows.append(
        await asyncio.to_thread(
            sub_baseline,
            "baseline: mosquitto_sub -C N (Sparkplug)",
            port,
            sub_id,
            sub_filter,
            messages,
        )
    )

    what = "MQTT Sparkplug B -> Kafka"
    print(f"measuring: {what} ...", flush=True)
    reset_peak_rss()
    meter, cpu0 = CpuMeter(), time.process_time()
    seconds, sent = await ingest_until(sink, ingester.run, expected, STALL_S)
    row = Row(
        what,
        "samples",
        expected,
        sent,
        seconds,
        f">= {GOAL_SPARKPLUG:,}/s",
        peak_mib=peak_rss_mib(),
    )
    row.cpu_s = time.process_time() - cpu0
    row.others_cores = meter.others_cores(None)
    row.passed = sent >= expected and row.rate >= GOAL_SPARKPLUG
    on_topic = await topic_samples(
        bootstrap, config.kafka.telemetry.name, config.kafka.telemetry.partitions
    )
    host = ingester.host
    row.notes.append(
        f"  {what}: {messages:,} messages ({messages / seconds:,.0f}/s), {sent:,} samples "
        f"acknowledged, {on_topic:,} decoded back; dead letters {sink.sent_letters}; seq gaps "
        f"{host.seq_gaps if host else '?'}, rebirths asked {host.rebirths_asked if host else '?'}"
    )
    run.rows.append(row)


# -- 3. OPC-UA ------------------------------------------------------------------------------


async def opcua(args: argparse.Namespace, bootstrap: str, tmp: Path, run: Run) -> None:
    tag = uuid.uuid4().hex[:8]
    port = free_loopback_ports(1)[0]
    nodes, seconds = args.opcua_nodes, args.opcua_seconds
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.opcua_server",
        "serve",
        str(port),
        str(nodes),
        str(seconds),
        "no-copies",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=harness.ROOT,
    )
    if writer.stdout is None or writer.stdin is None:
        raise RuntimeError("the OPC-UA writer has no pipes")
    OUR_PIDS.append(writer.pid)
    sink: SpooledSink | None = None
    try:
        if (await asyncio.wait_for(writer.stdout.readline(), 60)).strip() != b"READY":
            raise RuntimeError("the OPC-UA writer did not start")
        machines = [f"m{i:03d}" for i in range(nodes // OPCUA_PER_MACHINE)]
        source = {
            "id": "bench-opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{port}/plc/",
            "publishing_interval_ms": 100,
            "sampling_interval_ms": 0,
            "queue_size": 1000,
            "machines": [
                {
                    "machine": m,
                    "nodes": {f"v{j}": f"ns=2;s={m}.V{j}" for j in range(OPCUA_PER_MACHINE)},
                }
                for m in machines
            ],
        }
        config = plant(tag, "opcua", tmp, machines, {"opcua": [source]})
        await ensure_topics(bootstrap, config.kafka)
        ingest_metrics = IngestMetrics.create(CollectorRegistry())  # shared, as in production
        live = sink = SpooledSink(config, bootstrap, config.ingest, ingest_metrics)
        ingester = OpcuaIngester(config.sources.opcua[0], config, live, ingest_metrics)
        what = "OPC-UA -> Kafka"
        print(
            f"measuring: {what} ({nodes} nodes, server writing for {seconds:g} s) ...", flush=True
        )
        reset_peak_rss()
        stop = asyncio.Event()
        await sink.start()
        task = asyncio.create_task(ingester.run(stop), name="bench-opcua")
        await poll_until(lambda: ingester.connected, 30)
        # The baseline Read: one sample a node, before the writer starts.
        await poll_until(lambda: live.sent_samples >= nodes, 10)
        await asyncio.sleep(0.5)
        base = sink.sent_samples
        meter, cpu0 = CpuMeter(), time.process_time()
        began = time.perf_counter()
        writer.stdin.write(b"GO\n")
        await writer.stdin.drain()
        line = (await writer.stdout.readline()).split()
        written, write_s = int(line[1]), float(line[2])
        server_peak = peak_rss_mib(writer.pid)
        last, moved = sink.sent_samples, time.perf_counter()
        while sink.sent_samples - base < written:
            await asyncio.sleep(POLL_S)
            if sink.sent_samples != last:
                last, moved = sink.sent_samples, time.perf_counter()
            elif time.perf_counter() - moved > OPCUA_STALL_S:
                break
        took = moved - began
        got = sink.sent_samples - base
        cpu = time.process_time() - cpu0
        others = meter.others_cores(None)
        stop.set()
        await task
        await sink.close()
        sink = None
        row = Row(
            what,
            "changes",
            written,
            got,
            took,
            f">= {GOAL_OPCUA_SHARE:.0%} of >= {GOAL_OPCUA_RATE:,}/s",
        )
        row.peak_mib, row.cpu_s, row.others_cores = peak_rss_mib(), cpu, others
        server_rate = written / write_s if write_s > 0 else 0.0
        row.passed = got >= GOAL_OPCUA_SHARE * written and server_rate >= GOAL_OPCUA_RATE
        on_topic = await topic_samples(
            bootstrap, config.kafka.telemetry.name, config.kafka.telemetry.partitions
        )
        share = 100 * got / max(written, 1)
        row.notes.append(
            f"  {what}: server (PlcServer without asyncua's per-subscriber DataValue copy, own "
            f"process, peak RSS {server_peak or 0:,.0f} MiB) wrote {written:,} changes in "
            f"{write_s:.1f} s = {server_rate:,.0f}/s; {got:,} = {share:.1f} % "
            f"reached Kafka (+{base} baseline-read samples; {on_topic:,} decoded back in all)"
        )
        run.rows.append(row)
    finally:
        if sink is not None:
            await sink.close()
        if writer.returncode is None:
            try:
                writer.stdin.write(b"STOP\n")
                await asyncio.wait_for(writer.wait(), 15)
            except (TimeoutError, OSError):
                writer.kill()
                await writer.wait()
        if writer.pid in OUR_PIDS:
            OUR_PIDS.remove(writer.pid)


# -- 4a. aiokafka baseline ------------------------------------------------------------------


async def kafka_baseline(n: int, bootstrap: str) -> Row:
    what = "baseline: aiokafka loop, JSON records"
    topic = f"baseline-{uuid.uuid4().hex[:8]}"
    print(f"measuring: {what} ...", flush=True)
    values = [
        orjson.dumps(
            {
                "ts": 1_700_000_000_000 + i,
                "machine": "m000",
                "signal": "temperature",
                "value": i + 0.5,
            }
        )
        for i in range(n)
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=b"warmup")  # metadata, connections
        reset_peak_rss()
        meter, cpu0 = CpuMeter(), time.process_time()
        began = time.perf_counter()
        sends = [await producer.send(topic, v, key=b"m000") for v in values]
        await asyncio.gather(*sends)
        took = time.perf_counter() - began
    finally:
        await producer.stop()
    row = Row(what, "records", n, n, took, peak_mib=peak_rss_mib())
    row.cpu_s, row.others_cores = time.process_time() - cpu0, meter.others_cores(None)
    row.notes.append(
        f"  {what}: aiokafka {version('aiokafka')}, acks=1, linger 5 ms, no compression"
    )
    return row


# -- report ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    head = (
        f"{'run':<40} {'done/expected':>17} {'unit':<8} {'seconds':>7} {'per s':>9} "
        f"{'peak RSS':>9} {'CPU s':>6}  goal"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        items = f"{r.done:,}/{r.items:,}"
        rss = f"{r.peak_mib:,.0f} MiB" if r.peak_mib is not None else "n/a"
        cpu = f"{r.cpu_s:.1f}" if r.cpu_s is not None else "n/a"
        goal = ""
        if r.goal:
            goal = f"{r.goal} {mark(bool(r.passed))}"
        lines.append(
            f"{r.what:<40} {items:>17} {r.unit:<8} {r.seconds:>7.2f} {r.rate:>9,.0f} {rss:>9} "
            f"{cpu:>6}  {goal}"
        )
    return lines


def report(args: argparse.Namespace, run: Run, out: Path) -> None:
    print()
    for line in table(run.rows):
        print(line)
    print(
        "(ingest rows: from SpooledSink.start() to the last sample acknowledged by Kafka; peak RSS "
        "and CPU of this process, which runs ingester + sink; baseline rows: the producer "
        "loop, or the mosquitto_sub process)"
    )
    noise = ", ".join(f"{r.what}: {r.others_cores:.2f}" for r in run.rows)
    print(f"(cores used by other processes during each run, of {os.cpu_count()}: {noise})")
    print()
    for row in run.rows:
        for line in row.notes:
            print(line)
    for line in run.notes:
        print(line)
    harness.write_results(out, args, rows=[{**asdict(r), "rate": r.rate} for r in run.rows])


async def measure(args: argparse.Namespace, port: int, bootstrap: str, tmp: Path, run: Run) -> None:
    print(busy_note(), flush=True)
    for name in ("json", "sparkplug", "opcua", "kafka"):
        if name not in args.only:
            continue
        try:
            if name == "json":
                await mqtt_json(args, port, bootstrap, tmp, run)
            elif name == "sparkplug":
                await mqtt_sparkplug(args, port, bootstrap, tmp, run)
            elif name == "opcua":
                await opcua(args, bootstrap, tmp, run)
            else:
                run.rows.append(await kafka_baseline(args.messages, bootstrap))
        except Exception as error:  # one broken run must not lose the others' figures
            logging.getLogger("bench.ingest").exception("run %s failed", name)
            run.notes.append(f"run {name} failed: {error!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs: about a minute")
    parser.add_argument(
        "--messages", type=int, help=f"JSON messages (default {DEFAULT_MESSAGES:,})"
    )
    parser.add_argument(
        "--ddata", type=int, help=f"Sparkplug DDATA messages (default {DEFAULT_DDATA:,})"
    )
    parser.add_argument(
        "--opcua-seconds", type=float, help=f"OPC-UA write time (default {DEFAULT_OPCUA_S:g})"
    )
    parser.add_argument("--opcua-nodes", type=int, default=OPCUA_NODES, help="OPC-UA Double nodes")
    parser.add_argument("--publishers", type=int, default=4, help="mosquitto_pub processes")
    parser.add_argument(
        "--only",
        default="json,sparkplug,opcua,kafka",
        help="comma-separated subset of json,sparkplug,opcua,kafka",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artefacts folder")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES
    if args.ddata is None:
        args.ddata = QUICK_DDATA if args.quick else DEFAULT_DDATA
    if args.opcua_seconds is None:
        args.opcua_seconds = QUICK_OPCUA_S if args.quick else DEFAULT_OPCUA_S
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.messages < 1 or args.ddata < 1 or args.publishers < 1 or args.opcua_nodes < 10:
        parser.error("--messages, --ddata, --publishers must be positive, --opcua-nodes >= 10")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out: Path = args.out / f"ingest-j{args.messages}-s{args.ddata}-o{args.opcua_seconds:g}"
    out.mkdir(parents=True, exist_ok=True)
    for line in machine_lines():
        print(line)
    print(
        f"kafka {harness.kafka_version()} (deploy/kafka, one broker); "
        f"aiokafka {version('aiokafka')}; aiomqtt {version('aiomqtt')}; "
        f"asyncua {version('asyncua')}"
    )
    print(
        f"runs: {args.messages:,} JSON messages ({args.publishers} publishers); {args.ddata:,} "
        f"Sparkplug DDATA x {METRICS} metrics on {DEVICES} devices; OPC-UA {args.opcua_nodes} "
        f"nodes for {args.opcua_seconds:g} s; only {','.join(sorted(args.only))}",
        flush=True,
    )
    run = Run()
    with harness.broker_session("bench.ingest", "linepulse-ingest-", out) as (broker, tmp):
        mosquitto = Mosquitto(tmp / "mosquitto")
        try:
            print(mosquitto.start(), flush=True)
            if mosquitto.proc is not None:
                OUR_PIDS.append(mosquitto.proc.pid)
            asyncio.run(measure(args, mosquitto.port, broker.bootstrap, tmp, run))
            report(args, run, out)
        finally:
            kill_children()  # the MQTT clients, before their broker
            for name in ("mosquitto.conf", "mosquitto.log"):
                if (tmp / "mosquitto" / name).exists():
                    shutil.copy(tmp / "mosquitto" / name, out / name)
            print(mosquitto.stop(), flush=True)


if __name__ == "__main__":
    main()
