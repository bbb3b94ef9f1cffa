"""`linepulse demo` as a user runs it: one process, no broker; every machine gets KPIs, a
simulated stop raises an alert that resolves when the machine runs again, and Ctrl-C
(SIGINT) stops it with exit code 0.

The demo plant works round the clock with breaks (machines are in `planned_stop` then,
and no stop happens): the alert part expects an alert when the next minutes are planned
time on every line; otherwise it expects none to fire inside a break (one may fire before
it starts). The calendar says which, before the run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bench.alerts import Receiver
from linepulse.calendar import Calendar
from linepulse.events import parse_ts
from linepulse.runtime import QuietServer, free_loopback_ports
from services.app.demo import demo_plant
from tests.integration.test_kpi_worker import start_cli

pytestmark = pytest.mark.integration

WINDOW_MS = 5 * 60_000  # how long the alert part may take
PAGED_AND_OVER = {"firing", "paged", "resolved"}  # an alert's whole life, page included


async def get(client: httpx.AsyncClient, path: str) -> Any:
    try:
        response = await client.get(path)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def planned_throughout(now_ms: int) -> bool:
    plant = demo_plant([1, 2], 3)
    calendar = Calendar(plant)
    return all(
        calendar.planned_ms(line.id, now_ms, now_ms + WINDOW_MS) == WINDOW_MS
        for line in plant.lines
    )


def planned_at(ms: int) -> bool:
    """Whether any line of the demo plant is in planned time at `ms`."""
    plant = demo_plant([1, 2], 3)
    calendar = Calendar(plant)
    return any(calendar.planned_ms(line.id, ms, ms + 1) for line in plant.lines)


async def test_demo_runs_end_to_end_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, alerts_port, hook_port = free_loopback_ports(3)
    receiver = Receiver(hook_port)
    server = QuietServer(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=hook_port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    expect_alert = planned_throughout(int(time.time() * 1000))
    args = ["demo", "--port", str(port), "--alerts-port", str(alerts_port), "--fast", "30"]
    webhook = f"http://127.0.0.1:{hook_port}/hook"
    demo = start_cli([*args, "--webhook", webhook], tmp_path / "demo.log")
    log = tmp_path / "demo.log"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as kpi:
            deadline = time.monotonic() + 120
            machines: set[str] = set()
            while time.monotonic() < deadline and len(machines) < 20:
                records = await get(kpi, "/v1/kpis/current?window=1m") or []
                machines = {r["machine"] for r in records if r.get("machine")}
                await asyncio.sleep(1)
            assert len(machines) == 20, (
                f"machines with KPIs: {sorted(machines)}\n" + (log.read_text()[-3000:])
            )
            board = await kpi.get("/")
            assert board.status_code == 200
            assert "LinePulse" in board.text
            # Coding stops is a write: the demo prints the KPI API's token and takes only it.
            found = re.search(r"token for coding stops: ([0-9a-f]+)", log.read_text())
            assert found, log.read_text()[-3000:]
            url, body = "/v1/stops/filler-1@0/reason", {"reason": "jam", "by": "ann"}
            assert (await kpi.post(url, json=body)).status_code == 401
            auth = {"Authorization": f"Bearer {found.group(1)}"}
            assert (await kpi.post(url, json=body, headers=auth)).status_code == 404  # no stop
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{alerts_port}") as alerts:
            seen: dict[str, set[str]] = {}
            fired_at: set[str] = set()
            deadline = time.monotonic() + WINDOW_MS / 1000
            while time.monotonic() < deadline:
                for alert in await get(alerts, "/v1/alerts") or []:
                    if alert["rule"] == "machine-down":
                        states = seen.setdefault(alert["fingerprint"], set())
                        states.add(alert["state"])
                        if alert["fired_at"] is not None:
                            states.add("firing")  # it may have resolved between two polls
                            fired_at.add(alert["fired_at"])
                        if alert["last_notified_at"] is not None:
                            # A stop that ends within `group_wait` of firing pages nobody
                            # (as in Alertmanager); only an alert that paged is followed.
                            states.add("paged")
                if not expect_alert and time.monotonic() > deadline - WINDOW_MS / 2000:
                    break
                if any(PAGED_AND_OVER <= states for states in seen.values()):
                    break
                await asyncio.sleep(1)
            if expect_alert:
                assert any(PAGED_AND_OVER <= s for s in seen.values()), seen
                # The page also reached the webhook channel (Alertmanager webhook JSON).
                for _ in range(30):
                    if receiver.seen("firing"):
                        break
                    await asyncio.sleep(1)
                assert receiver.seen("firing"), (receiver.arrivals, seen, log.read_text()[-3000:])
            else:
                # A break starts within the window: a stop before it may page, but no
                # machine stops (nor pages) while every line is in its break.
                assert not [t for t in fired_at if not planned_at(parse_ts(t))], seen
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
            raise
        finally:
            server.should_exit = True
            await serving
    assert code == 0, log.read_text()[-3000:]
    assert "live board" in log.read_text()
