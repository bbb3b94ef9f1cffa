"""`linepulse check --connect` run as a user runs it (a child process) against real sources:
the equipment simulator (asyncua server, Mosquitto with JSON topics and Sparkplug B) and a
node-opcua server nobody on LinePulse wrote. One NodeId is deliberately wrong each time:
it must be reported as not found, with the right node among the browse candidates."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from linepulse.config import parse_config
from linepulse.runtime import free_loopback_ports
from services.ingest.simulator import Behaviour, run_simulator
from tests.cli_command import LINEPULSE
from tests.foreign.harness import plant_config, running
from tests.integration.conftest import MosquittoBroker
from tests.integration.test_foreign_opcua import (
    PLANT_NS_INDEX,
    U64,
    nsu,
    opcua_server,
    opcua_source,
    write_schedule,
)
from tests.integration.test_simulator import plant_config as simulator_plant

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
TIMEOUT_S = 120.0


async def check(config: Path, *args: str) -> tuple[int, str, str]:
    """`linepulse check --config CONFIG --connect ARGS`: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *LINEPULSE,
        "check",
        "--config",
        str(config),
        "--connect",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def row(text: str, *cells: str) -> str:
    """The one output line holding every cell."""
    found = [line for line in text.splitlines() if all(c in line for c in cells)]
    assert len(found) == 1, f"{cells}\n{text}"
    return found[0]


@pytest.fixture
async def simulator(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The simulator serving test_simulator's plant; yields that plant's config data."""
    (port,) = free_loopback_ports(1)
    data = simulator_plant(port, mosquitto.port, f"chk{port}")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_simulator(
            parse_config(data),
            seed=7,
            truth=tmp_path / "truth.jsonl",
            stop=stop,
            ready=ready,
            tick_s=1.0,
            behaviour=Behaviour().faster(20),
        )
    )
    await asyncio.wait_for(ready.wait(), TIMEOUT_S)
    try:
        yield data
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


async def test_check_connect_finds_the_simulators_signals_and_reports_a_wrong_node(
    simulator: dict[str, Any], tmp_path: Path
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(simulator))
    code, out, err = await check(good, "--listen-s", "3")
    assert code == 0, out + err
    assert "all signals found" in out
    group = simulator["sources"]["mqtt"][0]["sparkplug"]["group"]
    # OPC-UA by NodeId and by browse path, each with a current value
    assert "found" in row(out, "filler", "total_count", "ns=2;s=filler.total_count")
    assert "found" in row(out, "press", "state", "path 2:Line1/2:Press/2:state")
    # MQTT JSON topics: configured, matched to machine/signal
    assert "capper/speed" in row(out, f"{group}/line-1/capper/speed", "configured")
    # Sparkplug: births seen (asked for with a rebirth: the simulator was born before us)
    assert "DBIRTH edge-1/robot -> robot" in out
    assert "DBIRTH edge-1/printer -> printer" in out

    wrong = copy.deepcopy(simulator)
    nodes = wrong["sources"]["opcua"][0]["machines"][0]["nodes"]
    nodes["speed"] = "ns=2;s=filler.sped"  # the typo a user makes
    # a machine listed on the broker that nothing publishes
    wrong["lines"][0]["machines"].append({"id": "labeler", "ideal_cycle_time_s": 1.0})
    wrong["sources"]["mqtt"][0]["machines"].append("labeler")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(wrong))
    code, out, err = await check(bad, "--listen-s", "3")
    assert code == 1, out + err
    assert "Traceback" not in err
    line = row(out, "filler", "speed", "ns=2;s=filler.sped")
    assert "NOT FOUND" in line
    assert "BadNodeIdUnknown" in line
    candidates = row(out, "filler/speed: candidates:")
    assert candidates.split("candidates: ")[1].startswith("ns=2;s=filler.speed ")
    assert "labeler: NOT FOUND: nothing heard in 3 s" in out
    assert " found " in row(out, "filler  state", "ns=2;s=filler.state")  # the rest still found
    assert "some signals NOT FOUND" in out


async def test_check_connect_against_a_node_opcua_server(tmp_path: Path) -> None:
    write_schedule(tmp_path / "schedule.json", [])
    (port,) = free_loopback_ports(1)
    async with running(opcua_server(tmp_path, port)) as server:
        endpoint = await server.line("ready ")
        source = opcua_source(endpoint, with_missing=False)
        source["machines"][0]["nodes"]["state"] = nsu("Press1.Stat")  # one letter short
        config, _ = plant_config(
            tmp_path, "127.0.0.1:9", ["press-1", "press-2"], {"opcua": [source]}
        )
        code, out, err = await check(config, "--json")
    assert code == 1, out + err
    (result,) = json.loads(out)["sources"]
    assert result["error"] is None
    signals = {(s["machine"], s["signal"]): s for s in result["signals"]}
    state = signals["press-1", "state"]
    assert state["found"] == "not found"
    assert "BadNodeIdUnknown" in state["why"]
    ns = PLANT_NS_INDEX
    assert state["candidates"][0] == f"ns={ns};s=Press1.State ({ns}:Press1/{ns}:State)"
    # by namespace URI and by browse path, with their values, types and qualities
    count = signals["press-2", "total_count"]
    assert (count["found"], count["value"], count["quality"]) == ("found", repr(U64 - 1), "good")
    assert signals["press-1", "product"]["value"] == repr("0042")
    waiting = signals["press-2", "product"]
    assert (waiting["found"], waiting["quality"]) == ("found", "bad")
    assert waiting["status"] == "BadWaitingForInitialData"


async def test_check_connect_names_an_unreachable_source_in_one_line(tmp_path: Path) -> None:
    port, mqtt_port = free_loopback_ports(2)  # nothing listens on either
    data = simulator_plant(port, mqtt_port, "nowhere")
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(data))
    code, out, err = await check(config, "--timeout-s", "3", "--listen-s", "1")
    assert code == 1, out + err
    assert "Traceback" not in err
    assert "connection refused" in row(out, "opcua plc", "UNREACHABLE")
    assert "cannot connect" in row(out, "mqtt broker", "UNREACHABLE")
