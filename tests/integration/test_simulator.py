"""The equipment simulator on the wire: a real asyncua client and a real Mosquitto see exactly
what the ground-truth log says, and the log replays through the KPI core."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds

from linepulse.config import PlantConfig, parse_config
from linepulse.runtime import free_loopback_ports
from services.ingest import sparkplug as spb
from services.ingest.simulator import Behaviour, SimulatorStats, run_simulator
from tests.cli_command import LINEPULSE
from tests.integration.conftest import MosquittoBroker

TIMEOUT_S = 60.0
PACKML = {6: "running", 5: "idle", 11: "down", 17: "changeover", 2: "planned_stop"}
SIGNALS = ("state", "total_count", "reject_count", "product", "speed", "temperature")
Key = tuple[str, str, int]  # machine, signal, ts


def plant_config(opcua_port: int, mqtt_port: int, group: str) -> dict[str, Any]:
    def ids(machine: str) -> dict[str, str]:
        return {s: f"ns=2;s={machine}.{s}" for s in (*SIGNALS, "reason")}

    paths = {s: {"browse_path": f"2:Line1/2:Press/2:{s}"} for s in (*SIGNALS, "reason")}
    return {
        "site": "sim-test",
        "timezone": "Europe/Berlin",
        "lines": [
            {
                "id": "line-1",
                "machines": [
                    {"id": "filler", "products": {"a": 0.5, "b": 0.8}},
                    {"id": "press", "products": {"x": 1.0, "y": 2.0}, "state_map": PACKML},
                    {"id": "capper", "products": {"a": 0.4, "b": 0.6}},
                    {"id": "packer", "ideal_cycle_time_s": 2.0, "state_map": PACKML},
                    {"id": "robot", "products": {"x": 3.0, "y": 4.0}, "state_map": PACKML},
                    {"id": "printer", "ideal_cycle_time_s": 0.7},
                ],
            }
        ],
        "sources": {
            "opcua": [
                {
                    "id": "plc",
                    "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/sim",
                    "machines": [
                        {"machine": "filler", "nodes": ids("filler")},
                        {"machine": "press", "nodes": paths},
                    ],
                }
            ],
            "mqtt": [
                {
                    "id": "broker",
                    "port": mqtt_port,
                    "topics": [{"pattern": f"{group}/{{line}}/{{machine}}/{{signal}}"}],
                    "machines": ["capper", "packer"],
                    "sparkplug": {
                        "group": group,
                        "devices": {"edge-1/robot": "robot", "edge-1/printer": "printer"},
                        "metrics": {"Production/Count": "total_count"},
                    },
                }
            ],
        },
    }


@dataclass
class Simulation:
    plant: PlantConfig
    truth: Path
    stop: asyncio.Event
    task: asyncio.Task[SimulatorStats]
    endpoint: str
    group: str
    messages: list[aiomqtt.Message] = field(default_factory=list)

    def truth_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.truth.read_text().splitlines()]


async def subscribe(
    port: int, topics: list[str], into: list[aiomqtt.Message], subscribed: asyncio.Event
) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for name in topics:
            await client.subscribe(name, qos=1)
        subscribed.set()
        async for message in client.messages:
            into.append(message)


@asynccontextmanager
async def simulating(
    plant: PlantConfig,
    tmp_path: Path,
    port: int,
    group: str,
    messages: list[aiomqtt.Message],
    *,
    seed: int = 42,
    historize: bool = False,
) -> AsyncIterator[Simulation]:
    """The simulator of `plant` (OPC-UA on `port`) at 10x speed, from ready to stopped."""
    stop, ready = asyncio.Event(), asyncio.Event()
    truth = tmp_path / "truth.jsonl"
    task = asyncio.create_task(
        run_simulator(
            plant,
            seed=seed,
            truth=truth,
            stop=stop,
            ready=ready,
            speed=10.0,
            tick_s=1.0,
            behaviour=Behaviour().faster(20),
            historize=historize,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        yield Simulation(
            plant, truth, stop, task, f"opc.tcp://127.0.0.1:{port}/sim", group, messages
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


@pytest.fixture
async def simulation(tmp_path: Path, mosquitto: MosquittoBroker) -> AsyncIterator[Simulation]:
    (port,) = free_loopback_ports(1)
    group = f"sim{port}"  # the session broker is shared: topics of our own
    data = plant_config(port, mosquitto.port, group)
    (tmp_path / "plant.yaml").write_text(yaml.safe_dump(data))
    plant = parse_config(data)
    messages: list[aiomqtt.Message] = []
    subscribed = asyncio.Event()
    watcher = asyncio.create_task(
        subscribe(mosquitto.port, [f"{group}/#", f"spBv1.0/{group}/#"], messages, subscribed)
    )
    await asyncio.wait_for(subscribed.wait(), TIMEOUT_S)
    try:
        async with simulating(plant, tmp_path, port, group, messages) as sim:
            yield sim
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])


async def until(predicate: Any, what: str) -> None:
    """Poll `predicate()` until true, failing with `what` after TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def truth_ticks(sim: Simulation) -> int:
    return len({e["ts"] for e in sim.truth_events()}) if sim.truth.exists() else 0


async def read_opcua(sim: Simulation) -> dict[tuple[str, str], ua.DataValue]:
    """Every configured node's DataValue, read in one request per node kind."""
    async with Client(sim.endpoint, timeout=10) as client:
        nodes: dict[tuple[str, str], ua.NodeId] = {}
        for entry in sim.plant.sources.opcua[0].machines:
            for signal, node in entry.nodes.items():
                if node.node_id is not None:
                    nodes[entry.machine, signal] = ua.NodeId.from_string(node.node_id)
                else:
                    assert node.browse_path is not None
                    child = await client.nodes.objects.get_child(node.browse_path.split("/"))
                    nodes[entry.machine, signal] = child.nodeid
        values = await client.uaclient.read_attributes(list(nodes.values()), AttributeIds.Value)
        return dict(zip(nodes, values, strict=True))


def ms(stamp: Any) -> int:
    return round(float(stamp.timestamp()) * 1000)


async def test_opcua_nodes_hold_what_the_truth_log_says(simulation: Simulation) -> None:
    sim = simulation
    seen: dict[tuple[str, str], set[int]] = {}
    for _ in range(3):
        before = truth_ticks(sim)
        await until(lambda before=before: truth_ticks(sim) >= before + 3, "ticks")
        values = await read_opcua(sim)
        # A value is written before its truth line is flushed: wait for the tick's lines.
        newest = max(ms(v.SourceTimestamp) for v in values.values())
        await until(lambda n=newest: max(e["ts"] for e in sim.truth_events()) >= n, "truth")
        truth = sim.truth_events()
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for event in truth:
            if event["ts"] <= newest:
                latest[event["machine"], event["signal"]] = event
        for (machine, signal), value in values.items():
            assert value.StatusCode is not None
            assert value.StatusCode.is_good(), (machine, signal)
            assert value.Value is not None
            if signal == "reason":
                state = latest[machine, "state"]
                assert value.Value.Value == state.get("reason", "")
                assert ms(value.SourceTimestamp) == state["ts"]
                continue
            event = latest[machine, signal]
            assert (value.Value.Value, ms(value.SourceTimestamp)) == (event["value"], event["ts"])
            seen.setdefault((machine, signal), set()).add(event["ts"])
    # Types as the config implies: PackML Int32, text String, counters UInt32, analogs Double.
    types = {key: v.Value.VariantType for key, v in values.items() if v.Value is not None}
    assert types["press", "state"] == ua.VariantType.Int32
    assert types["filler", "state"] == ua.VariantType.String
    assert types["filler", "total_count"] == ua.VariantType.UInt32
    assert types["press", "temperature"] == ua.VariantType.Double
    assert types["press", "product"] == ua.VariantType.String
    # Temperature changes every tick: three reads saw three different writes.
    assert len(seen["filler", "temperature"]) == 3


def json_wire(sim: Simulation) -> list[dict[str, Any]]:
    out = []
    for message in sim.messages:
        name = str(message.topic)
        if not name.startswith(f"{sim.group}/"):
            continue
        _, _line, machine, signal = name.split("/")
        assert isinstance(message.payload, bytes)
        body = json.loads(message.payload)
        out.append({"machine": machine, "signal": signal, **body})
    return out


def sparkplug_wire(sim: Simulation) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """Decoded Sparkplug messages as telemetry events, and (type, payload) in order."""
    devices = {"robot": "robot", "printer": "printer"}
    names = {"Production/Count": "total_count"}
    aliases: dict[str, dict[int, str]] = {}
    events: list[dict[str, Any]] = []
    order: list[tuple[str, Any]] = []
    for message in sim.messages:
        where = spb.parse_topic(str(message.topic))
        if where is None or where.message_type in (spb.NCMD, spb.DCMD):
            continue  # not the edge node's (the test's own rebirth request)
        assert isinstance(message.payload, bytes)
        payload = spb.decode_payload(message.payload)
        order.append((where.message_type, payload))
        if where.message_type == spb.DBIRTH:
            assert where.device is not None
            aliases[where.device] = {
                m.alias: m.name for m in payload.metrics if m.alias is not None and m.name
            }
        if where.message_type not in (spb.DBIRTH, spb.DDATA):
            continue
        assert where.device is not None
        machine = devices[where.device]
        reason: str | None = None
        for m in payload.metrics:
            name = m.name or aliases[where.device][m.alias or 0]
            signal = names.get(name, name)
            if signal == "reason":
                reason = str(m.value) or None
                continue
            event = {"ts": m.timestamp_ms, "machine": machine, "signal": signal, "value": m.value}
            if signal == "state" and reason is not None:
                event["reason"] = reason
            events.append(event)
    return events, order


def key(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["machine"], event["signal"], event["ts"], event["value"], event.get("reason"))


async def test_mqtt_messages_equal_the_truth_log_and_it_replays(
    simulation: Simulation, tmp_path: Path
) -> None:
    sim = simulation
    await until(lambda: truth_ticks(sim) >= 30, "30 ticks")
    # Ask the edge node for a rebirth, as a host that lost track would.
    async with aiomqtt.Client("127.0.0.1", sim.plant.sources.mqtt[0].port) as host:
        request = spb.rebirth_request(0)
        await host.publish(spb.topic(sim.group, spb.NCMD, "edge-1"), request, qos=1)
    await until(
        lambda: sum(1 for m in sim.messages if "/NBIRTH/" in str(m.topic)) >= 2, "a rebirth"
    )
    await until(lambda: truth_ticks(sim) >= 40, "40 ticks")
    sim.stop.set()
    stats = await asyncio.wait_for(sim.task, TIMEOUT_S)
    await until(lambda: any("/NDEATH/" in str(m.topic) for m in sim.messages), "the NDEATH")

    truth = sim.truth_events()
    by_source = Counter(
        "broker" if e["machine"] not in ("filler", "press") else "plc" for e in truth
    )
    assert stats.events == dict(by_source)
    assert stats.truth_lines == len(truth)

    # Plain JSON topics: exactly the truth of those machines, nothing more, nothing less.
    plain = [e for e in truth if e["machine"] in ("capper", "packer")]
    await until(lambda: len(json_wire(sim)) >= len(plain), "every JSON message")
    assert sorted(map(key, json_wire(sim))) == sorted(map(key, plain))
    assert {
        e["value"] for e in plain if e["machine"] == "packer" and e["signal"] == "state"
    } <= set(PACKML)

    # Sparkplug: every event once in a first birth or a DDATA, rebirths only repeat them.
    devices = [e for e in truth if e["machine"] in ("robot", "printer")]
    wire, order = sparkplug_wire(sim)
    assert set(map(key, wire)) == set(map(key, devices))
    assert len(wire) > len(devices)  # the rebirth's DBIRTHs repeated values
    kinds = [kind for kind, _ in order]
    assert kinds[0] == spb.NBIRTH
    assert kinds.count(spb.NBIRTH) == 2
    assert kinds[-3:] == [spb.DDEATH, spb.DDEATH, spb.NDEATH]
    births = [p for kind, p in order if kind == spb.NBIRTH]
    bd_seqs = {m.value for p in births for m in p.metrics if m.name == spb.BDSEQ}
    death = order[-1][1]
    assert bd_seqs == {m.value for m in death.metrics if m.name == spb.BDSEQ}
    # seq: 0 at each NBIRTH, then +1 per message, wrapping at 256; none on the NDEATH.
    expected = 0
    for kind, payload in order[:-1]:
        if kind == spb.NBIRTH:
            expected = 0
        assert payload.seq == expected, kind
        expected = spb.next_seq(expected)
    assert death.seq is None

    # The log is telemetry `linepulse replay` takes whole.
    (tmp_path / "plant.yaml").write_text(yaml.safe_dump(plant_config(1, 1, "g")))
    config = str(tmp_path / "plant.yaml")
    done = subprocess.run(  # noqa: S603, ASYNC221 - our own CLI; the simulator has stopped
        [*LINEPULSE, "replay", "-c", config, str(sim.truth), "-w", "1m"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(truth)} events read" in done.stderr
    assert "0 malformed, 0 rejected" in done.stderr
    assert done.stdout.strip()


async def test_with_history_the_opcua_server_answers_historyread_with_the_truth(
    tmp_path: Path,
) -> None:
    """`linepulse simulate --history`: each variable keeps its past values, so HistoryRead
    of a node gives every value the truth log says it took, with its own timestamp (what a
    restarted ingester's backfill reads)."""
    (port,) = free_loopback_ports(1)
    data = plant_config(port, 1, "unused")
    data["sources"] = {"opcua": data["sources"]["opcua"]}  # no MQTT broker needed
    plant = parse_config(data)
    async with simulating(plant, tmp_path, port, "", [], seed=7, historize=True) as sim:
        await until(lambda: truth_ticks(sim) >= 20, "20 ticks")
        entry = next(m for m in plant.sources.opcua[0].machines if m.machine == "filler")
        node_id = entry.nodes["total_count"].node_id
        assert node_id is not None
        async with Client(sim.endpoint, timeout=10) as client:
            history = await client.get_node(node_id).read_raw_history(numvalues=0)
        # The first value is the placeholder before the first tick (BadWaitingForInitialData).
        good = [v for v in history if v.StatusCode is None or v.StatusCode.is_good()]
        assert len(history) - len(good) <= 1
        seen = {(ms(v.SourceTimestamp), int(v.Value.Value)) for v in good if v.Value is not None}
        upto = max(ts for ts, _ in seen)
        wanted = {
            (e["ts"], int(e["value"]))
            for e in sim.truth_events()
            if (e["machine"], e["signal"]) == ("filler", "total_count") and e["ts"] <= upto
        }
        assert len(wanted) >= 5
        assert wanted <= seen
