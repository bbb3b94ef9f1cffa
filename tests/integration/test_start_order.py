"""The compose stack's start order, for real: the equipment simulator runs BEFORE the
ingester, as `deploy/docker-compose.yml` starts them, and the KPI worker's figures on its
query API stay physically possible and agree with the simulator's ground truth.

Issue 14 saw the first minute of line 2 in that stack with press-2 at 2,147,483,651 parts,
press-1 at 435,394 and a line OEE of 57,058: a first reading that was not one (0) and a
PLC restart on a counter with `counter_max` (taken as a rollover) were counted as
production. Here, with the real Kafka and Mosquitto of the test session:

1. `linepulse simulate` (the example plant on free loopback ports) starts first and runs
   until its OPC-UA servers accept, it logs that it is ready and a few ticks are on the
   wire; then `linepulse ingest`, then `linepulse kpi --api` (the worker with its query
   API, as the compose `kpi` service runs it).
2. With `restart`, the simulator is stopped mid-run and started again with the same seed,
   the ingester running throughout: every PLC counter that moved jumps back to where the
   seeded plant starts (mostly a step down to a mid-range value, as a PLC restart looks;
   on press-2, with `counter_max`, a "rollover" of two billion parts).

Once the worker has committed the whole telemetry topic and the API serves what it
published, every record must hold: no machine's counts above what its fastest ideal cycle
time allows (`3 × window seconds / ict_min + 100`), no line performance or OEE above 1.5,
and per machine and counter, the parts counted equal the parts the truth log shows
between the first and the last reading the ingester delivered in each simulator run.
A counter jump is reported (`linepulse_counter_jumps_total`) exactly for the machines whose
counters the restart moved, and for none when nothing restarted.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from linepulse.config import COUNTER_SIGNALS, PlantConfig, load_config
from linepulse.runtime import free_loopback_ports
from tests.integration.conftest import MosquittoBroker
from tests.integration.test_ingest_e2e import (
    Key,
    example_on,
    read_telemetry,
    read_truth,
    stop_child,
)
from tests.integration.test_kpi_worker import start_cli

pytestmark = pytest.mark.integration

SEED = 1  # the compose stack's `simulate --seed 1`
TIMEOUT_S = 60.0
# Plant time the ingester reads per simulator run (`linepulse simulate` runs at speed 1).
RUN_MS = 12_000
TICK_MS = 1_000  # `linepulse simulate`'s tick
# Issue 14's sane bounds: counts a window cannot hold, ratios no line reaches.
RATE_FACTOR, BURST = 3, 100
MAX_LINE_RATIO = 1.5
RecordKey = tuple[str, str | None, str, str]  # line, machine, window, window_start
Reading = tuple[int, float]  # ts, counter value
Records = dict[RecordKey, dict[str, Any]]  # the latest record per key


def stack_config(tmp: Path, mqtt_port: int, bootstrap: str) -> Path:
    """The example plant (what `deploy/linepulse/plant.yaml` serves in compose) on free
    loopback ports with topics of its own, without breaks; a consumer group of its own
    whose open records go out with every batch and whose offsets are committed often (so
    "committed up to the end" means "every record published"); reconnects within a second
    (the restart)."""
    config = example_on(tmp, mqtt_port, bootstrap)
    data = yaml.safe_load(config.read_text())
    data["kafka"].update(
        group=f"kpi-{data['kafka']['telemetry']['name']}",
        open_interval_s=0,
        checkpoint_interval_s=0.3,
    )
    for source in [*data["sources"]["opcua"], *data["sources"]["mqtt"]]:
        source.update(reconnect_min_s=0.2, reconnect_max_s=1.0)
    # No breaks: the plant makes parts whenever the test runs (in a break no counter moves,
    # and a restart would look like nothing at all).
    for shift in data["shifts"]:
        shift.pop("breaks", None)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


async def until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll `condition()` until it holds; fail naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def accepts(endpoint: str) -> bool:
    """Whether an `opc.tcp://host:port/...` endpoint accepts TCP connections."""
    host, port = endpoint.split("/")[2].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def tick_times(truth: Path) -> set[int]:
    """The event times in a truth log so far: its complete lines only, since the simulator
    may be writing the next one."""
    if not truth.exists():
        return set()
    lines = truth.read_bytes().split(b"\n")[:-1]
    return {orjson.loads(line)["ts"] for line in lines if line}


def newest_tick(truth: Path) -> int:
    """The newest event time in a truth log (0 while it is empty)."""
    return max(tick_times(truth), default=0)


async def start_simulator(
    plant: PlantConfig, config: Path, truth: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`linepulse simulate`, once its OPC-UA servers accept, it has logged that it is ready
    (every MQTT publisher connected, ticks about to start) and three ticks are on the wire."""
    child = start_cli(
        ["simulate", "--config", str(config), "--seed", str(SEED), "--truth", str(truth)], log
    )

    def ready() -> bool:
        assert child.poll() is None, f"the simulator exited:\n{log.read_text()[-3000:]}"
        return (
            "machines on" in log.read_text()
            and all(accepts(s.endpoint) for s in plant.sources.opcua)
            and len(tick_times(truth)) >= 3
        )

    await until(ready, "the simulator's servers, its ready line and three ticks")
    return child


def ingest_metric(page: str, name: str) -> dict[str, float]:
    """source -> value of one labelled ingest metric in a /metrics page."""
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == name
    }


async def ingest_page(port: int, ingest: subprocess.Popen[bytes]) -> str:
    """The ingester's /metrics page ("" while it is starting)."""
    assert ingest.poll() is None, "the ingester exited"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        try:
            return (await client.get("/metrics")).raise_for_status().text
        except httpx.TransportError:
            return ""


async def wait_connected(
    port: int,
    ingest: subprocess.Popen[bytes],
    sources: list[str],
    reconnected: dict[str, float] | None = None,
) -> None:
    """Until the ingester's /metrics says every source's session is up; with `reconnected`
    (source -> its reconnects before), only once each of those sources reconnected since."""
    before = reconnected or {}
    page = ""

    def up() -> bool:
        connected = ingest_metric(page, "linepulse_ingest_connected")
        again = ingest_metric(page, "linepulse_ingest_reconnects_total")
        return all(connected.get(s) == 1.0 for s in sources) and all(
            again.get(s, 0.0) > n for s, n in before.items()
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not up():
        if loop.time() > deadline:
            pytest.fail(f"the ingester did not (re)connect to {sources}:\n{page}")
        await asyncio.sleep(0.2)
        page = await ingest_page(port, ingest)


async def wait_committed(bootstrap: str, topic: str, group: str) -> None:
    """Until the KPI worker's group has committed every telemetry partition to its end: it
    commits after flushing the records of what it read (and `open_interval_s: 0` sends open
    windows with every batch), so then every record of that data is on the kpi topic."""
    # Subscribed (without a group) so that it holds the topic's metadata.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"no partitions of {topic}"
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
                at = {tp: committed[tp].offset if tp in committed else -1 for tp in partitions}
                if all(at[tp] >= ends[tp] for tp in partitions if ends[tp] > 0):
                    return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await consumer.stop()


def newer(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """The store's rule: the highest (revision, final) per key, the later one on a tie."""
    return old is None or (new["revision"], new["final"]) >= (old["revision"], old["final"])


async def published_records(bootstrap: str, topic: str) -> Records:
    """The kpi topic from its start to its end now, reduced per key as the store does."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: Records = {}
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(TIMEOUT_S):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    for message in messages:
                        r = orjson.loads(message.value)
                        key = (r["line"], r["machine"], r["window"], r["window_start"])
                        if newer(records.get(key), r):
                            records[key] = r
    finally:
        await consumer.stop()
    return records


FIGURES = ("revision", "final", "total_count", "good_count", "reject_count", "run_s", "oee")


def served(history: list[dict[str, Any]]) -> Records:
    """The API's history by record key (it serves each key once, its latest revision)."""
    return {(r["line"], r["machine"], r["window"], r["window_start"]): r for r in history}


def differences(api: Records, topic: Records) -> list[str]:
    """Where the API does not serve a published record with the same figures."""
    out = []
    for key, r in topic.items():
        mine = api.get(key)
        if mine is None:
            out.append(f"{key}: not served")
        elif theirs := {f: (mine[f], r[f]) for f in FIGURES if mine[f] != r[f]}:
            out.append(f"{key}: (served, published) {theirs}")
    return out


async def served_history(port: int, since: datetime, topic: Records) -> tuple[Records, str]:
    """/v1/kpis/history from `since`, once it serves every published record; and /metrics."""
    url = f"/v1/kpis/history?from={since.isoformat().replace('+00:00', 'Z')}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
        while True:
            history = served((await api.get(url)).raise_for_status().json())
            missing = differences(history, topic)
            if not missing:
                return history, (await api.get("/metrics")).raise_for_status().text
            if loop.time() > deadline:
                pytest.fail(f"the API does not serve {len(missing)} records: {missing[:5]}")
            await asyncio.sleep(0.2)


def ict_min(plant: PlantConfig, machine: str) -> float | None:
    """A machine's fastest ideal cycle time, its own or a product's (s)."""
    _, config = plant.machines()[machine]
    times = [p.ideal_cycle_time_s for p in config.products.values()]
    if config.ideal_cycle_time_s is not None:
        times.append(config.ideal_cycle_time_s)
    return min(times, default=None)


def seconds(record: dict[str, Any]) -> float:
    """A record's window length (s)."""
    start, end = (datetime.fromisoformat(record[k]) for k in ("window_start", "window_end"))
    return (end - start).total_seconds()


def impossible(plant: PlantConfig, records: list[dict[str, Any]]) -> list[str]:
    """Every figure no plant can show: a machine with more parts in a window than three
    times its fastest ideal cycle time allows (plus a burst), a line faster than 1.5 times
    ideal or with an OEE above 1.5."""
    found = []
    for r in records:
        where = f"{r['line']}/{r['machine']} {r['window']} {r['window_start']}"
        if r["machine"] is None:
            for ratio in ("performance", "oee"):
                if r[ratio] is not None and r[ratio] > MAX_LINE_RATIO:
                    found.append(f"{where}: {ratio} {r[ratio]:.4g}")
            continue
        ict = ict_min(plant, r["machine"])
        assert ict is not None, r["machine"]  # every machine of the example plant has one
        allowed = RATE_FACTOR * seconds(r) / ict + BURST
        for count in ("total_count", "good_count", "reject_count"):
            if r[count] is not None and abs(r[count]) > allowed:
                found.append(f"{where}: {count} {r[count]} > {allowed:.0f}")
    return found


def true_parts(truth: list[Reading], first: Reading, last: Reading) -> int:
    """Parts a counter's true readings show after the reading `first` up to the reading
    `last` (each: the latest true reading of that value at or before its time, since the
    ingester stamps a value it re-reads at connect with its receipt time). A step down is
    the simulator's counter reset: the new value counts from zero."""

    def at(reading: Reading) -> int:
        ts, value = reading
        found = [i for i, (t, v) in enumerate(truth) if t <= ts and v == value]
        assert found, f"the ingester delivered {value} at {ts}, which the simulator never sent"
        return found[-1]

    readings = [value for _, value in truth[at(first) : at(last) + 1]]
    parts = 0
    for prev, cur in pairwise(readings):
        parts += int(cur - prev) if cur >= prev else int(cur)
    return parts


def counter_readings(events: list[Key]) -> dict[tuple[str, str], list[Reading]]:
    """(machine, counter) -> its readings (ts, value) in time order."""
    out: dict[tuple[str, str], list[Reading]] = {}
    for ts, machine, sig, value, _ in events:
        if sig in COUNTER_SIGNALS and isinstance(value, float):
            out.setdefault((machine, sig), []).append((ts, value))
    for readings in out.values():
        readings.sort(key=lambda reading: reading[0])
    return out


@dataclass
class Run:
    """One simulator process: its truth log, and its newest tick when the ingester had
    every source connected to it (ms)."""

    truth: Path
    connected_ms: int = 0


def expected_parts(runs: list[Run], telemetry: list[Key]) -> dict[tuple[str, str], int]:
    """Per (machine, counter): the true parts between the first and the last reading the
    ingester delivered of each simulator run (a run's readings are those from its first
    tick on; nothing across a restart is production). Every counter that changed a tick
    after the ingester had connected must have readings (a plain MQTT topic is not
    retained: one that changed only before is not seen, as in any plant)."""
    truths = [read_truth(run.truth) for run in runs]
    starts = [min(k[0] for k in truth) for truth in truths]
    expected: dict[tuple[str, str], int] = {}
    for n, (run, events) in enumerate(zip(runs, truths, strict=True)):
        end = starts[n + 1] if n + 1 < len(runs) else math.inf
        seen = counter_readings([k for k in telemetry if starts[n] <= k[0] < end])
        truth = counter_readings(events)
        changed = {
            key
            for key, readings in truth.items()
            if any(ts > run.connected_ms + TICK_MS for ts, _ in readings[1:])
        }
        missing = sorted(changed - seen.keys())
        assert missing == [], f"{run.truth.name}: no readings of {missing} reached Kafka"
        for key, readings in seen.items():
            parts = true_parts(truth[key], readings[0], readings[-1])
            expected[key] = expected.get(key, 0) + parts
    return expected


def moved_by_restart(runs: list[Run], telemetry: list[Key]) -> set[str]:
    """Machines with a counter whose first reading of a run differs from the previous run's
    last: the restart put it back to where the seeded plant starts (usually a step down;
    up when the first run reset it on a changeover)."""
    starts = [min(k[0] for k in read_truth(run.truth)) for run in runs]
    readings = counter_readings(telemetry)
    out = set()
    for start in starts[1:]:
        for (machine, _), values in readings.items():
            before = [v for ts, v in values if ts < start]
            after = [v for ts, v in values if ts >= start]
            if before and after and after[0] != before[-1]:
                out.add(machine)
    return out


def counted_parts(records: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Per (machine, counter): the parts in the worker's 1m records (a record's field of
    the counter's name; every part belongs to exactly one minute)."""
    counted: dict[tuple[str, str], int] = {}
    for r in records:
        if r["machine"] is None or r["window"] != "1m":
            continue
        for counter in COUNTER_SIGNALS:
            if r.get(counter):
                key = (r["machine"], counter)
                counted[key] = counted.get(key, 0) + r[counter]
    return counted


@pytest.mark.parametrize("restart", [False, True], ids=["simulator-first", "simulator-restarted"])
async def test_simulator_before_ingester_counts_only_real_parts(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path, restart: bool
) -> None:
    config = stack_config(tmp_path, mosquitto.port, kafka)
    plant = load_config(config)
    ingest_port, kpi_port = free_loopback_ports(2)
    runs = [Run(tmp_path / "truth-1.jsonl")]
    logs = {name: tmp_path / f"{name}.log" for name in ("simulate", "ingest", "kpi")}
    children: list[subprocess.Popen[bytes]] = []
    # Every window this run touches starts after this, a production day included.
    since = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
    try:
        simulator = await start_simulator(plant, config, runs[0].truth, logs["simulate"])
        children.append(simulator)
        ingest = start_cli(
            ["ingest", "--config", str(config), "--port", str(ingest_port)], logs["ingest"]
        )
        children.append(ingest)
        await wait_connected(ingest_port, ingest, plant.sources.ids())
        kpi = start_cli(
            [
                *("kpi", "--api", "--config", str(config), "--port", str(kpi_port)),
                *("--state-dir", str(tmp_path / "state"), "--db", str(tmp_path / "kpi.duckdb")),
            ],
            logs["kpi"],
        )
        children.append(kpi)
        runs[0].connected_ms = newest_tick(runs[0].truth)
        await until(lambda: newest_tick(runs[0].truth) >= runs[0].connected_ms + RUN_MS, "readings")
        if restart:
            page = await ingest_page(ingest_port, ingest)
            reconnects = ingest_metric(page, "linepulse_ingest_reconnects_total")
            plcs = {s.id: reconnects.get(s.id, 0.0) for s in plant.sources.opcua}
            assert stop_child(simulator, signal.SIGINT) == 0, logs["simulate"].read_text()[-3000:]
            runs.append(Run(tmp_path / "truth-2.jsonl"))
            simulator = await start_simulator(plant, config, runs[1].truth, logs["simulate"])
            children.append(simulator)
            await wait_connected(ingest_port, ingest, plant.sources.ids(), reconnected=plcs)
            runs[1].connected_ms = newest_tick(runs[1].truth)
            await until(
                lambda: newest_tick(runs[1].truth) >= runs[1].connected_ms + RUN_MS,
                "readings after the restart",
            )
        assert stop_child(simulator, signal.SIGINT) == 0, logs["simulate"].read_text()[-3000:]
        assert stop_child(ingest, signal.SIGTERM) == 0, logs["ingest"].read_text()[-3000:]

        names = yaml.safe_load(config.read_text())["kafka"]
        await wait_committed(kafka, names["telemetry"]["name"], names["group"])
        topic = await published_records(kafka, names["kpi"]["name"])
        history, metrics = await served_history(kpi_port, since, topic)
        assert stop_child(kpi, signal.SIGTERM) == 0, logs["kpi"].read_text()[-3000:]
    finally:
        for child in children:  # what a failure left running
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)

    records = list(history.values())
    telemetry = await read_telemetry(kafka, names["telemetry"]["name"])
    # Kept beside the logs and truth for whoever reads a failure.
    (tmp_path / "telemetry.json").write_bytes(orjson.dumps(telemetry))
    (tmp_path / "records.json").write_bytes(orjson.dumps(records))
    found = impossible(plant, records)
    assert not found, f"{len(found)} figures no plant can show:\n" + "\n".join(found[:20])

    expected = expected_parts(runs, telemetry)
    counted = counted_parts(records)
    wrong = {
        key: (counted.get(key, 0), parts)
        for key, parts in sorted(expected.items())
        if counted.get(key, 0) != parts
    }
    assert wrong == {}, "(machine, counter): (counted, true) where they differ"
    machines = {r["machine"] for r in records if r["machine"] is not None}
    assert machines == set(plant.machines()), "every machine has records"
    reported = {
        sample.labels["machine"]
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "linepulse_counter_jumps_total" and sample.value > 0
    }
    # A restarted PLC's counter jumps back to where the seeded plant starts: hundreds of
    # thousands of parts in seconds, reported as a jump, counted as nothing.
    assert reported == moved_by_restart(runs, telemetry)
    assert bool(reported) == restart
