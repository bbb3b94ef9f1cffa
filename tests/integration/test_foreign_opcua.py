"""`linepulse ingest` against an OPC-UA server nobody on LinePulse wrote: node-opcua.

The server (tests/foreign/opcua_server.mjs) plays a PLC running a known schedule: an Int32
and a String state with 200 ms stops, a UInt32 and a UInt64 counter stepping every 100 ms
(the UInt64 one past 2**53), product texts that look like numbers ("0042", "1e3", "NaN"),
source timestamps with a sub-millisecond part, an Uncertain reading, a variable waiting
for its initial data and one nobody ever wrote. Its variables live in the last of two
namespaces it registers, so their index is 3; the config names them by namespace URI
(`nsu=`), the form that survives a server renumbering its namespaces, and by browse path.

The ingester runs with the default settings of an OPC-UA source (only the endpoint and the
nodes are configured), as a child process on the real Kafka. Everything the schedule
writes must come out of the telemetry topic with its value, type, timestamp (ms, floored)
and quality; nodes that cannot be found are reported once and do not hold the others up.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from linepulse.runtime import free_loopback_ports
from linepulse.sources import OpcuaSource
from services.ingest.opcua_session import new_client, resolve, routes_of, subscribe
from tests.foreign.harness import (
    Ingest,
    NodeProgram,
    Seen,
    ingesting,
    plant_config,
    read_until,
    running,
)

pytestmark = pytest.mark.integration

PLANT_NS = "urn:linepulse:test:foreign-plc"
PLANT_NS_INDEX = 3  # 0 OPC UA, 1 the server's own, 2 the decoy, 3 the plant
U64 = 2**53 + 1  # the first integer a float64 cannot hold


@dataclass(frozen=True)
class Var:
    node: str  # `s=` identifier, `<Folder>.<Name>`: browse path <ns>:<Folder>/<ns>:<Name>
    type: str
    machine: str
    signal: str
    initial: object = None
    waiting: bool = False  # BadWaitingForInitialData until written


@dataclass(frozen=True)
class Step:
    at_ms: float
    node: str
    value: object
    status: str | None = None


VARS = [
    Var("Press1.State", "Int32", "press-1", "state", initial=1),
    Var("Press1.Count", "UInt32", "press-1", "total_count", initial=0),
    Var("Press1.Product", "String", "press-1", "product", initial="0042"),
    Var("Press2.State", "String", "press-2", "state", initial="idle"),
    Var("Press2.Count", "UInt64", "press-2", "total_count", initial=U64 - 1),
    Var("Press2.Product", "String", "press-2", "product", waiting=True),
    Var("Press2.Note", "String", "press-2", "note"),  # never written: UncertainInitialValue
]
BY_NODE = {v.node: v for v in VARS}


def schedule_steps() -> list[Step]:
    steps = [
        # press-1: PackML-style numbers, three 200 ms stops, one of them stamped …0.95 ms.
        Step(0, "Press1.State", 6),
        Step(700, "Press1.State", 5),
        Step(900, "Press1.State", 6),
        Step(1500, "Press1.State", 5),
        Step(1700, "Press1.State", 6),
        Step(2300.95, "Press1.State", 5),
        Step(2500.95, "Press1.State", 6),
        # press-2: text states, two 200 ms stops, an Uncertain reading.
        Step(50, "Press2.State", "running"),
        Step(1000, "Press2.State", "down"),
        Step(1200, "Press2.State", "running"),
        Step(2000, "Press2.State", "changeover", status="UncertainLastUsableValue"),
        Step(2200, "Press2.State", "running"),
        # products that look like numbers
        Step(1000.5, "Press1.Product", "1e3"),
        Step(2000.5, "Press1.Product", "NaN"),
        Step(2800.5, "Press1.Product", "0042"),
        Step(600, "Press2.Product", "00815"),
    ]
    # a counter step every 100 ms, each stamped 0.95 ms past its millisecond
    steps += [Step(k * 100 + 0.95, "Press1.Count", k) for k in range(1, 30)]
    steps += [Step(k * 100 + 30, "Press2.Count", U64 + k - 1) for k in range(1, 30)]
    return steps


def write_schedule(path: Path, steps: list[Step]) -> None:
    def wire(var: Var, value: object) -> object:
        # JSON numbers past 2**53 are not exact in JavaScript: 64-bit values go as text.
        return str(value) if var.type in ("UInt64", "Int64") else value

    variables: list[dict[str, Any]] = []
    for var in VARS:
        spec: dict[str, Any] = {"node": var.node, "type": var.type}
        if var.initial is not None:
            spec["initial"] = wire(var, var.initial)
        if var.waiting:
            spec["waiting"] = True
        variables.append(spec)
    document = {
        "namespaces": ["urn:linepulse:test:decoy", PLANT_NS],
        "variables": variables,
        "steps": [
            {
                "at_ms": s.at_ms,
                "node": s.node,
                "value": wire(BY_NODE[s.node], s.value),
                **({"status": s.status} if s.status else {}),
            }
            for s in steps
        ],
    }
    path.write_text(json.dumps(document, indent=1))


def opcua_server(tmp: Path, port: int, *extra: str) -> NodeProgram:
    """The node-opcua server on `port`, serving tmp/schedule.json."""
    args = ["--port", str(port), "--schedule", str(tmp / "schedule.json")]
    return NodeProgram(
        "opcua_server.mjs", [*args, "--pki", str(tmp / "pki"), *extra], tmp / "server.log"
    )


def nsu(node: str) -> str:
    return f"nsu={PLANT_NS};s={node}"


def browse(node: str) -> dict[str, str]:
    folder, name = node.split(".", 1)
    return {"browse_path": f"{PLANT_NS_INDEX}:{folder}/{PLANT_NS_INDEX}:{name}"}


def opcua_source(endpoint: str, *, with_missing: bool) -> dict[str, Any]:
    """The default OPC-UA source: endpoint and nodes, nothing else."""
    press_1: dict[str, Any] = {v.signal: nsu(v.node) for v in VARS if v.machine == "press-1"}
    press_2: dict[str, Any] = {v.signal: browse(v.node) for v in VARS if v.machine == "press-2"}
    if with_missing:
        press_1["speed"] = "nsu=urn:linepulse:test:nowhere;s=Press1.Speed"
        press_1["temperature"] = nsu("Press1.NoSuchTag")
        press_2["mode"] = browse("Press2.NoSuchTag")
    return {
        "id": "plc",
        "endpoint": endpoint,
        "machines": [
            {"machine": "press-1", "nodes": press_1},
            {"machine": "press-2", "nodes": press_2},
        ],
    }


def expected_quality(status: str | None) -> str:
    return "uncertain" if status and status.startswith("Uncertain") else "good"


def keyed(seen: list[Seen]) -> set[tuple[int, str, str, object, str, str]]:
    return {(s.ts, s.machine, s.signal, s.value, s.kind, s.quality) for s in seen}


def expectation(t0: int, steps: list[Step]) -> set[tuple[int, str, str, object, str, str]]:
    """Each step as the telemetry event it must become (ts floored to the ms)."""
    out = set()
    for step in steps:
        var = BY_NODE[step.node]
        value = step.value
        out.add(
            (
                t0 + math.floor(step.at_ms),
                var.machine,
                var.signal,
                value,
                type(value).__name__,
                expected_quality(step.status),
            )
        )
    return out


async def test_every_change_of_a_node_opcua_server_arrives_typed_and_on_time(
    kafka: str, tmp_path: Path
) -> None:
    steps = schedule_steps()
    write_schedule(tmp_path / "schedule.json", steps)
    server_port, metrics_port = free_loopback_ports(2)
    server = opcua_server(tmp_path, server_port)
    async with running(server):
        endpoint = await server.line("ready ")
        config, topic = plant_config(
            tmp_path,
            kafka,
            ["press-1", "press-2"],
            {"opcua": [opcua_source(endpoint, with_missing=True)]},
        )
        ingest = Ingest(config, tmp_path / "ingest.log", metrics_port)
        async with ingesting(ingest):
            await ingest.wait_connected("plc")
            await server.send("start")
            t0 = int(await server.line("started "))
            await server.line("done", timeout_s=30)
            expected = expectation(t0, steps)
            seen = await read_until(kafka, topic, lambda got: expected <= keyed(got))
            metrics = await ingest.metrics()
        code = await ingest.stop()
    logs = ingest.tail(20_000)
    assert code == 0, logs

    missing = sorted(expected - keyed(seen), key=lambda k: k[0])
    assert missing == [], f"{len(missing)} scheduled values never arrived, e.g. {missing[:8]}"

    # At connect, the current value of each node: read once, with its own type.
    first: dict[tuple[str, str], Seen] = {}
    for event in seen:
        first.setdefault((event.machine, event.signal), event)
    initial = {
        (v.machine, v.signal): (v.initial, type(v.initial).__name__, "good")
        for v in VARS
        if v.initial is not None
    }
    assert {
        key: (e.value, e.kind, e.quality) for key, e in first.items() if key in initial
    } == initial
    # Nothing else: each scheduled value once, no made-up value for the nodes with none.
    scheduled = {(BY_NODE[s.node].machine, BY_NODE[s.node].signal) for s in steps}
    per_node = {key: [e for e in seen if (e.machine, e.signal) == key] for key in first}
    for key, events in per_node.items():
        writes = len([s for s in steps if (BY_NODE[s.node].machine, BY_NODE[s.node].signal) == key])
        assert len(events) == writes + (1 if key in initial else 0), (key, events)
    assert set(first) <= scheduled | set(initial)
    assert ("press-2", "note") not in first  # never written: no reading to emit

    # The unknown nodes: one warning each per connect, naming endpoint, machine, signal and
    # node; not a connection failure, no reconnect.
    for machine, signal_name, node in [
        ("press-1", "speed", "nsu=urn:linepulse:test:nowhere;s=Press1.Speed"),
        ("press-1", "temperature", nsu("Press1.NoSuchTag")),
        ("press-2", "mode", f"path {browse('Press2.NoSuchTag')['browse_path']}"),
    ]:
        lines = [
            line
            for line in logs.splitlines()
            if f"{machine}/{signal_name}" in line and "not monitored" in line
        ]
        assert len(lines) == 1, lines
        assert endpoint in lines[0]
        assert node in lines[0]
        assert "WARNING" in lines[0]
    assert "cannot connect" not in logs
    assert "reconnected" not in logs
    source = frozenset({("source", "plc")})
    assert metrics.get(("linepulse_ingest_reconnects_total", source), 0.0) == 0.0
    # No dead letters; the product waiting for its first value and the note nobody wrote
    # are counted as withheld, not as bad input.
    rejected = {k: v for k, v in metrics.items() if k[0] == "linepulse_ingest_rejected_total"}
    assert sum(rejected.values()) == 0, rejected
    waiting = frozenset({("source", "plc"), ("reason", "waiting_for_initial_data")})
    assert metrics[("linepulse_ingest_withheld_total", waiting)] >= 2


async def test_a_server_running_before_the_ingester_gives_its_current_values(
    kafka: str, tmp_path: Path
) -> None:
    """The start order of the compose stack: the PLC has run for a while when the
    ingester starts. Its current values arrive, with their source times, and nothing
    is counted as bad: no dead letters, no made-up value for the variables with none."""
    steps = schedule_steps()[:10]
    write_schedule(tmp_path / "schedule.json", steps)
    server_port, metrics_port = free_loopback_ports(2)
    server = opcua_server(tmp_path, server_port, "--autostart")
    async with running(server):
        endpoint = await server.line("ready ")
        t0 = int(await server.line("started "))
        await server.line("done", timeout_s=30)
        config, topic = plant_config(
            tmp_path,
            kafka,
            ["press-1", "press-2"],
            {"opcua": [opcua_source(endpoint, with_missing=False)]},
        )
        ingest = Ingest(config, tmp_path / "ingest.log", metrics_port)
        # The current value of each node: the last write, or the initial value.
        current: dict[tuple[str, str], tuple[int | None, object, str]] = {
            (v.machine, v.signal): (None, v.initial, "good") for v in VARS if v.initial is not None
        }
        for step in steps:
            var = BY_NODE[step.node]
            current[var.machine, var.signal] = (
                t0 + math.floor(step.at_ms),
                step.value,
                expected_quality(step.status),
            )
        async with ingesting(ingest):
            await ingest.wait_connected("plc")
            seen = await read_until(
                kafka, topic, lambda got: {(e.machine, e.signal) for e in got} >= set(current)
            )
            metrics = await ingest.metrics()
        code = await ingest.stop()
    logs = ingest.tail(20_000)
    assert code == 0, logs
    got = {(e.machine, e.signal): e for e in seen}
    assert len(seen) == len(got), f"more than the current value of a node: {seen}"
    for key, (ts, value, quality) in current.items():
        event = got[key]
        assert (event.value, event.kind, event.quality) == (value, type(value).__name__, quality)
        if ts is not None:
            # Its source time; or, read more than the lateness (10 s) after it was taken,
            # the time of the read (a first start's rule: the value is current now).
            assert event.ts == ts or event.ts >= ts + 10_000, (key, event)
    rejected = {k: v for k, v in metrics.items() if k[0] == "linepulse_ingest_rejected_total"}
    assert sum(rejected.values()) == 0, rejected
    assert "not monitored" not in logs
    assert "cannot connect" not in logs


async def test_queues_too_small_for_the_granted_sampling_are_widened(tmp_path: Path) -> None:
    """node-opcua grants 50 ms for "as fast as you can": with a 1 s publishing interval a
    queue of 5 would drop 15 of 20 samples, so the ingester asks for 20
    (ModifyMonitoredItems); an analog tag sampled at the publishing interval keeps 5."""
    write_schedule(tmp_path / "schedule.json", [])
    (port,) = free_loopback_ports(1)
    server = opcua_server(tmp_path, port)
    async with running(server):
        endpoint = await server.line("ready ")
        source = OpcuaSource.model_validate(
            {
                "id": "plc",
                "endpoint": endpoint,
                "publishing_interval_ms": 1000,
                "queue_size": 5,
                "machines": [
                    {
                        "machine": "press-1",
                        "nodes": {"state": nsu("Press1.State"), "speed": nsu("Press1.Count")},
                    }
                ],
            }
        )
        client = await new_client(source)
        await client.connect()
        try:
            items, unresolved = await resolve(client, routes_of(source))
            assert unresolved == []

            async def ignore(_: ua.PublishResult) -> None:
                return None

            subscribed = await subscribe(client, source, items, ignore)
        finally:
            await client.disconnect()
    granted = {
        c.item.route.signal: (
            c.asked_sampling_ms,
            c.sampling_ms,
            c.queue_size,
            c.granted_queue_size,
        )
        for c in subscribed.created
    }
    assert subscribed.publishing_ms == 1000.0
    assert granted == {"state": (0.0, 50.0, 20, 20), "speed": (1000.0, 1000.0, 5, 5)}
