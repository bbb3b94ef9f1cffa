"""`linepulse demo` as a new user starts it: on a machine where 8080 and 8081 are taken, on a
port that is busy, and on the user's own plant file.

Each test runs the real CLI as a child process (no log level given: the default, as a user
runs it) and waits on what it prints, never on a guessed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from linepulse.runtime import free_loopback_ports
from tests.cli_command import LINEPULSE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]  # for `-m services.app` from another folder
START_TIMEOUT_S = 240.0  # the plant's history and its KPIs come before the announcement
BOARD = re.compile(r"live board\s+http://127\.0\.0\.1:(\d+)/")
ALERTS = re.compile(r"alerts API\s+http://127\.0\.0\.1:(\d+)/docs")


def run_cli(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """`linepulse ARGS` at the default log level, stdout and stderr into `log`, started in
    `cwd` (default: the test's)."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [*LINEPULSE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
            cwd=cwd,
        )


@contextlib.contextmanager
def held(ports: list[int]) -> Iterator[None]:
    """Listen on each port of 127.0.0.1 (one that something else already holds is busy
    anyway: that is all the test needs)."""
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        yield
    finally:
        for sock in sockets:
            sock.close()


async def announced(demo: subprocess.Popen[bytes], log: Path) -> str:
    """The demo's output up to its announcement (the URLs), or fail with its tail."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Ctrl-C stops it." in text:
            return text
        assert demo.poll() is None, text[-3000:]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no announcement in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(demo: subprocess.Popen[bytes]) -> int:
    demo.send_signal(signal.SIGINT)
    try:
        return demo.wait(timeout=60)
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.wait()
        raise


async def get_json(client: httpx.AsyncClient, path: str) -> Any:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


SOURCE_UP = re.compile(r'^linepulse_ingest_connected\{source="([^"]+)"\} (\S+)$', re.M)


async def test_demo_takes_free_ports_and_opens_on_a_running_plant(tmp_path: Path) -> None:
    """8080 and 8081 busy: the demo says so and serves on free ports; its board opens on
    the plant's history (every line's shift OEE plausible and covered) with few alerts."""
    log = tmp_path / "demo.log"
    with held([8080, 8081]):
        demo = run_cli(["demo"], log)
        try:
            text = await announced(demo, log)
            board_found, alerts_found = BOARD.search(text), ALERTS.search(text)
            assert board_found, text[-3000:]
            assert alerts_found, text[-3000:]
            board_port, alerts_port = int(board_found.group(1)), int(alerts_found.group(1))
            assert {board_port, alerts_port}.isdisjoint({8080, 8081}), text[-3000:]
            assert "port 8080 is in use: --port" in text
            assert "port 8081 is in use: --alerts-port" in text
            assert re.search(r"plant history: [\d,]+ events done in [\d.]+ s", text), text
            assert "Traceback" not in text
            base = f"http://127.0.0.1:{board_port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as kpi:
                page = await kpi.get("/")
                assert page.status_code == 200
                assert "LinePulse" in page.text
                lines = [
                    r
                    for r in await get_json(kpi, "/v1/kpis/current?window=shift")
                    if not r.get("machine")
                ]
            assert {r["line"] for r in lines} == {"line-1", "line-2", "line-3"}, lines
            for record in lines:
                # Coverage and OEE of the shift so far: a shift with hours of data behind
                # it, not the seconds since the demo started.
                assert record["coverage"] >= 0.9, record
                assert record["oee"] is None or 0.2 <= record["oee"] <= 0.98, record
            assert any(r["oee"] is not None for r in lines), lines
            # Every source of the plant is live: its OPC-UA servers and line 3's MQTT
            # broker (amqtt, which takes MQTT 3.1.1 only) are connected.
            async with httpx.AsyncClient(base_url=base, timeout=10) as kpi:
                async with asyncio.timeout(60):
                    while True:
                        up = SOURCE_UP.findall((await kpi.get("/metrics")).text)
                        if up and all(value == "1.0" for _, value in up):
                            break
                        await asyncio.sleep(0.5)
            assert {source for source, _ in up} >= {"broker-line-3"}, up
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{alerts_port}") as alerts:
                # Open as the board counts them: paged and not resolved. A pending alert (a
                # machine down for less than its rule's `for`) has paged nobody yet.
                opened = [
                    a
                    for a in await get_json(alerts, "/v1/alerts")
                    if a["state"] in {"firing", "acknowledged"}
                ]
            # The history's closed windows page nobody: what is open is the live plant's.
            assert len(opened) <= 5, opened
        finally:
            code = stop(demo)
    assert code == 0, log.read_text()[-3000:]


def test_a_busy_port_asked_for_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (port,) = free_loopback_ports(1)
    with held([port]):
        result = subprocess.run(  # noqa: S603 - our own CLI
            [*LINEPULSE, "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"linepulse: port {port} is in use (--port); pick another with --port, "
        "or leave it out to take a free one"
    ]


OWN_PLANT = """\
site: my-plant
timezone: Europe/Vienna
shifts:
- {name: day, start: "06:00", end: "18:00"}
- {name: night, start: "18:00", end: "06:00"}
lines:
- id: bottling
  machines:
  - {id: filler, ideal_cycle_time_s: 0.5}
  - {id: capper, ideal_cycle_time_s: 0.5}
sources:
  opcua:
  - id: plc-bottling
    endpoint: opc.tcp://10.20.0.5:4840
    machines:
    - machine: filler
      nodes:
        state: ns=3;s=Filler.State
        total_count: ns=3;s=Filler.Count
    - machine: capper
      nodes:
        state: ns=3;s=Capper.State
        total_count: ns=3;s=Capper.Count
alerts:
  channels:
  - {id: ops, type: webhook, url: "http://192.0.2.1/never-called"}
  broadcast: [ops]
  rules:
  - {name: down, signal: state, op: ==, value: down, for: 10s}
"""


async def test_demo_simulates_the_users_own_plant_file(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(OWN_PLANT)
    port, alerts_port = free_loopback_ports(2)
    log = tmp_path / "demo.log"
    args = ["demo", "--config", str(config), "--port", str(port)]
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    demo = run_cli([*args, "--alerts-port", str(alerts_port)], log, cwd=started_in)
    try:
        text = await announced(demo, log)
        assert f"of {config}" in text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as kpi:
            records = await get_json(kpi, "/v1/kpis/current?window=shift")
        assert {r["machine"] for r in records if r.get("machine")} == {"filler", "capper"}
        (line,) = [r for r in records if not r.get("machine")]
        assert line["coverage"] >= 0.9, line
    finally:
        code = stop(demo)
    assert code == 0, log.read_text()[-3000:]
    # Its state (spool, source sessions) lived in its temporary folder, not where it started.
    assert list(started_in.rglob("*")) == []


def test_a_bad_plant_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(OWN_PLANT.replace("ideal_cycle_time_s: 0.5}", "ideal_cycle_time_s: -1}"))
    result = subprocess.run(  # noqa: S603 - our own CLI
        [*LINEPULSE, "demo", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"linepulse: {config} is invalid"), result.stderr
    assert "ideal_cycle_time_s" in result.stderr
    assert "Traceback" not in result.stderr
