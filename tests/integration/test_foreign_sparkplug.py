"""`linepulse ingest` against a Sparkplug B edge node nobody on LinePulse wrote: Eclipse
Tahu's `sparkplug-client` for Node.js.

The edge node (tests/foreign/sparkplug_edge.mjs) has two devices, press-1 and press-2,
each with a state (Int32 on one, String on the other) that has 200 ms stops, a counter
(UInt32; UInt64 past 2**53) stepping every 100 ms and a product String ("0815", "1e3",
"NaN"). It announces them in NBIRTH/DBIRTH with aliases and then sends DDATA carrying the
alias only, per a known schedule, through a real Mosquitto. The ingester runs with the
default settings of a Sparkplug source (broker, group and the metric names to signals),
as a child process on the real Kafka. Everything the schedule sends must come out of the
telemetry topic with its value, type, timestamp and quality.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linepulse.runtime import free_loopback_ports
from tests.foreign.harness import (
    Ingest,
    NodeProgram,
    Seen,
    ingesting,
    plant_config,
    read_until,
    running,
)
from tests.integration.conftest import MosquittoBroker

pytestmark = pytest.mark.integration

U64 = 2**53 + 1
COUNTER = "Production/Count"
METRICS = {
    "Status/State": "state",
    "Production/Count": "total_count",
    "Production/Product": "product",
}


@dataclass(frozen=True)
class Metric:
    device: str
    name: str
    alias: int
    type: str
    value: object


@dataclass(frozen=True)
class Step:
    at_ms: float
    device: str
    name: str
    value: object


BIRTH = [
    Metric("press-1", "Status/State", 1, "Int32", 1),
    Metric("press-1", "Production/Count", 2, "UInt32", 0),
    Metric("press-1", "Production/Product", 3, "String", "0815"),
    Metric("press-2", "Status/State", 11, "String", "idle"),
    Metric("press-2", "Production/Count", 12, "UInt64", U64 - 1),
    Metric("press-2", "Production/Product", 13, "String", "0042"),
]
TYPES = {(m.device, m.name): m.type for m in BIRTH}


def changes() -> list[Step]:
    """State changes with 200 ms stops and product texts, within the first 3 s."""
    return [
        Step(0, "press-1", "Status/State", 6),
        Step(700, "press-1", "Status/State", 5),
        Step(900, "press-1", "Status/State", 6),
        Step(1500, "press-1", "Status/State", 5),
        Step(1700, "press-1", "Status/State", 6),
        Step(50, "press-2", "Status/State", "running"),
        Step(1000, "press-2", "Status/State", "down"),
        Step(1200, "press-2", "Status/State", "running"),
        Step(1010, "press-1", "Production/Product", "1e3"),
        Step(2010, "press-1", "Production/Product", "NaN"),
        Step(2810, "press-1", "Production/Product", "0815"),
        Step(620, "press-2", "Production/Product", "1e3"),
    ]


def counting(until_ms: int, every_ms: int = 100) -> list[Step]:
    """A counter step every `every_ms` on both presses (press-2's past 2**53)."""
    ks = range(1, until_ms // every_ms)
    steps = [Step(k * every_ms + 5, "press-1", COUNTER, k) for k in ks]
    steps += [Step(k * every_ms + 35, "press-2", COUNTER, U64 + k - 1) for k in ks]
    return steps


def write_schedule(path: Path, steps: list[Step]) -> None:
    def wire(device: str, name: str, value: object) -> object:
        # JSON numbers past 2**53 are not exact in JavaScript: 64-bit values go as text.
        return str(value) if TYPES[device, name] in ("UInt64", "Int64") else value

    devices: dict[str, list[dict[str, Any]]] = {}
    for m in BIRTH:
        devices.setdefault(m.device, []).append(
            {
                "name": m.name,
                "alias": m.alias,
                "type": m.type,
                "value": wire(m.device, m.name, m.value),
            }
        )
    document = {
        "devices": devices,
        "steps": [
            {
                "at_ms": s.at_ms,
                "device": s.device,
                "metric": s.name,
                "value": wire(s.device, s.name, s.value),
            }
            for s in steps
        ],
    }
    path.write_text(json.dumps(document, indent=1))


async def start_schedule(edge: NodeProgram) -> int:
    """Once the edge node is ready, start its schedule; the epoch ms it started at."""
    await edge.line("ready")
    await edge.send("start")
    return int(await edge.line("started "))


def edge_program(
    tmp: Path, broker: MosquittoBroker, group: str, *, autostart: bool = False
) -> NodeProgram:
    args = [
        "--broker",
        f"mqtt://127.0.0.1:{broker.port}",
        "--group",
        group,
        "--edge",
        "edge-1",
        "--schedule",
        str(tmp / "schedule.json"),
    ]
    return NodeProgram(
        "sparkplug_edge.mjs", [*args, "--autostart"] if autostart else args, tmp / "edge.log"
    )


@dataclass(frozen=True)
class Plant:
    config: Path
    topic: str  # telemetry
    source: str
    group: str  # Sparkplug group id


def sparkplug_plant(
    tmp: Path, kafka: str, broker: MosquittoBroker, *, rebirth: bool = True
) -> Plant:
    """The default Sparkplug source: broker, group and which metric feeds which signal
    (`rebirth`: whether the ingester may ask edge nodes for births, the default)."""
    tag = uuid.uuid4().hex[:6]
    source = f"edge-{tag}"  # its MQTT client id, and so its broker session, is its own
    group = f"plant-{tag}"
    config, topic = plant_config(
        tmp,
        kafka,
        ["press-1", "press-2"],
        {
            "mqtt": [
                {
                    "id": source,
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "sparkplug": {"group": group, "metrics": METRICS, "rebirth": rebirth},
                }
            ]
        },
    )
    return Plant(config, topic, source, group)


def as_event(t0: int, step: Step) -> tuple[int, str, str, object, str, str]:
    return (
        t0 + math.floor(step.at_ms),
        step.device,
        METRICS[step.name],
        step.value,
        type(step.value).__name__,
        "good",
    )


def keyed(seen: list[Seen]) -> set[tuple[int, str, str, object, str, str]]:
    return {(s.ts, s.machine, s.signal, s.value, s.kind, s.quality) for s in seen}


async def test_every_metric_of_a_tahu_edge_node_arrives_typed_and_on_time(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    steps = changes() + counting(until_ms=3000)
    write_schedule(tmp_path / "schedule.json", steps)
    plant = sparkplug_plant(tmp_path, kafka, mosquitto)
    (metrics_port,) = free_loopback_ports(1)
    ingest = Ingest(plant.config, tmp_path / "ingest.log", metrics_port)
    async with ingesting(ingest):
        await ingest.wait_connected(plant.source)
        edge = edge_program(tmp_path, mosquitto, plant.group)
        async with running(edge):
            t0 = await start_schedule(edge)
            await edge.line("done", timeout_s=30)
            expected = {as_event(t0, s) for s in steps}
            seen = await read_until(kafka, plant.topic, lambda got: expected <= keyed(got))
            metrics = await ingest.metrics()
        code = await ingest.stop()
    logs = ingest.tail(20_000)
    assert code == 0, logs

    missing = sorted(expected - keyed(seen), key=lambda k: k[0])
    assert missing == [], f"{len(missing)} scheduled values never arrived, e.g. {missing[:8]}"
    # The births: each metric's value as the DBIRTH declared it, with its own type.
    first: dict[tuple[str, str], Seen] = {}
    for event in seen:
        first.setdefault((event.machine, event.signal), event)
    assert {key: (e.value, e.kind, e.quality) for key, e in first.items()} == {
        (m.device, METRICS[m.name]): (m.value, type(m.value).__name__, "good") for m in BIRTH
    }
    # Each value once: the births, then every DDATA; until the edge node's NDEATH on stop,
    # which marks both presses `unknown`.
    data = [e for e in seen if not (e.signal == "state" and e.value == "unknown")]
    assert len(data) == len(BIRTH) + len(steps), sorted(keyed(data) - expected)[:10]
    rejected = {k: v for k, v in metrics.items() if k[0] == "linepulse_ingest_rejected_total"}
    assert sum(rejected.values()) == 0, rejected
    assert "asking for a rebirth" not in logs


async def test_an_edge_node_running_before_the_ingester_gives_its_current_values(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The start order of the compose stack: the edge node has been publishing for a
    while when the ingester starts. It never sees the first births, so the first DDATA
    it gets carries aliases it does not know: it asks for a rebirth (NCMD), and the births
    bring the current value of every metric. Nothing is counted as bad input."""
    changed = changes()
    steps = changed + counting(until_ms=40_000, every_ms=250)
    write_schedule(tmp_path / "schedule.json", steps)
    plant = sparkplug_plant(tmp_path, kafka, mosquitto)
    (metrics_port,) = free_loopback_ports(1)
    edge = edge_program(tmp_path, mosquitto, plant.group, autostart=True)
    async with running(edge):
        await edge.line("ready")
        t0 = int(await edge.line("started "))
        # The state and product changes are over (a time of the schedule, not a guess).
        last_change = t0 + max(s.at_ms for s in changed)
        await asyncio.sleep(max(0.0, (last_change + 100) / 1000 - time.time()))
        # The current value of each state and product when the ingester starts.
        current = {}
        for step in sorted(changed, key=lambda s: s.at_ms):
            current[step.device, METRICS[step.name]] = as_event(t0, step)
        ingest = Ingest(plant.config, tmp_path / "ingest.log", metrics_port)
        async with ingesting(ingest):
            await ingest.wait_connected(plant.source)
            connected_ms = time.time() * 1000

            def complete(got: list[Seen]) -> bool:
                counts = {(e.machine, e.signal) for e in got if e.signal == "total_count"}
                return set(current.values()) <= keyed(got) and len(counts) == 2

            seen = await read_until(kafka, plant.topic, complete)
            await edge.line("rebirth", timeout_s=5)
            metrics = await ingest.metrics()
        code = await ingest.stop()
    logs = ingest.tail(20_000)
    assert code == 0, logs
    missing = set(current.values()) - keyed(seen)
    assert missing == set(), f"current values that never arrived: {sorted(missing)}"
    # The counters: from the births on, every step the edge node sent, in order.
    for device in ("press-1", "press-2"):
        counts = [e for e in seen if (e.machine, e.signal) == (device, "total_count")]
        assert counts, f"no counter values of {device}"
        sent = [as_event(t0, s) for s in steps if s.device == device and s.name == COUNTER]
        # DDATA that came before the births is held and decoded once they declare its
        # aliases; a birth then repeats the newest value (the same event: harmless).
        got = list(
            dict.fromkeys((e.ts, e.machine, e.signal, e.value, e.kind, e.quality) for e in counts)
        )
        start = sent.index(got[0])
        assert got == sent[start : start + len(got)]
        assert got[0][0] <= connected_ms + 10_000
    rejected = {k: v for k, v in metrics.items() if k[0] == "linepulse_ingest_rejected_total"}
    assert sum(rejected.values()) == 0, rejected


async def test_an_ingester_killed_and_restarted_decodes_the_nodes_data_at_once(
    kafka: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Sparkplug sessions outlive the ingester (issue 19, item 4): after a `kill -9` and a
    restart, DDATA by alias decodes from the first message, from the alias tables saved at
    the births, without a rebirth. Rebirth requests are off here (`rebirth: false`), so
    nothing but the saved session can explain the aliases."""
    steps = counting(until_ms=30_000, every_ms=250)  # long enough for the restart
    write_schedule(tmp_path / "schedule.json", steps)
    plant = sparkplug_plant(tmp_path, kafka, mosquitto, rebirth=False)
    (metrics_port,) = free_loopback_ports(1)
    ingest = Ingest(plant.config, tmp_path / "ingest.log", metrics_port)
    await ingest.start()
    try:
        await ingest.wait_connected(plant.source)
        edge = edge_program(tmp_path, mosquitto, plant.group)
        async with running(edge):
            t0 = await start_schedule(edge)
            await asyncio.sleep(3)  # births seen, data flowing
            await ingest.kill()  # SIGKILL: nothing saved at exit; the births were saved when seen
            await asyncio.sleep(2)
            restarted_ms = int(time.time() * 1000)
            await ingest.start()
            await ingest.wait_connected(plant.source)

            def after_restart(got: list[Seen]) -> bool:
                late = {
                    e.machine
                    for e in got
                    if e.signal == "total_count" and e.ts > restarted_ms + 2_000
                }
                return late == {"press-1", "press-2"}

            seen = await read_until(kafka, plant.topic, after_restart)
            metrics = await ingest.metrics()
        code = await ingest.stop()
    finally:
        await ingest.stop()
    logs = ingest.tail(20_000)
    assert code == 0, logs
    # Every counter step sent from 2 s after the restart is there, decoded by alias.
    assert after_restart(seen), "no counter value of both presses after the restart\n" + logs
    sent = {as_event(t0, s) for s in steps if t0 + s.at_ms > restarted_ms + 2_000}
    last = max(e.ts for e in seen if e.signal == "total_count")
    missing = {e for e in sent if e[0] <= last} - keyed(seen)
    assert missing == set(), sorted(missing)[:5]
    assert "Sparkplug edge node session(s) restored" in logs, logs[-3000:]
    rejected = {k: v for k, v in metrics.items() if k[0] == "linepulse_ingest_rejected_total"}
    assert sum(rejected.values()) == 0, rejected
