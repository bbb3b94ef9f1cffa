"""End to end on the real broker: events in, `linepulse kpi --api` running, KPIs over HTTP."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from linepulse.bus.topics import ensure_topics
from linepulse.runtime import free_loopback_ports
from tests.integration.test_kpi_worker import classic_on_kafka, produce_json, start_cli

pytestmark = pytest.mark.integration


async def poll(client: httpx.AsyncClient, path: str, until: Any, timeout_s: float = 90) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                response = await client.get(path)
            except httpx.TransportError:  # the service is still starting
                response = None
            if response is not None and response.status_code == 200 and until(response.json()):
                return response.json()
            await asyncio.sleep(0.2)


async def test_classic_shift_record_from_the_api(kafka: str, tmp_path: Path) -> None:
    config, config_path, events = classic_on_kafka(tmp_path)
    await ensure_topics(kafka, config.kafka)
    await produce_json(kafka, config.kafka.telemetry.name, events)

    (port,) = free_loopback_ports(1)
    log = tmp_path / "service.log"
    args = [
        "kpi",
        "--api",
        "--config",
        str(config_path),
        "--kafka",
        kafka,
        "--state-dir",
        str(tmp_path / "state"),
        "--port",
        str(port),
        "--db",
        str(tmp_path / "kpi.duckdb"),
    ]
    service = start_cli(args, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            history = await poll(
                client,
                "/v1/kpis/history?from=2026-11-02T00:00:00Z&window=shift&machine=filler-1",
                lambda rs: any(r["final"] for r in rs),
            )
            (shift,) = [r for r in history if r["final"]]
            assert round(shift["oee"], 6) == 0.747937
            assert shift["window_start"] == "2026-11-02T06:00:00Z"
            assert (shift["total_count"], shift["reject_count"], shift["stops"]) == (19271, 423, 3)
            machines = await poll(client, "/v1/machines", lambda ms: ms[0]["state"] is not None)
            assert machines[0]["machine"] == "filler-1"
            assert machines[0]["state"] == "planned_stop"
            # By default the line's current shift: the day's shift, closed.
            pareto = await poll(
                client, "/v1/downtime/pareto?line=line-1", lambda p: len(p["reasons"]) >= 2
            )
            assert [p["reason"] for p in pareto["reasons"]][:2] == ["jam", "material_shortage"]
            assert (pareto["from"], pareto["shift"]) == ("2026-11-02T06:00:00Z", shift["shift"])
            assert pareto["to"] == shift["window_end"]
            metrics = (await client.get("/metrics")).text
            assert "linepulse_events_in_total" in metrics
            assert (await client.get("/v1/kpis/current?machine=nobody")).status_code == 404
            assert (await client.get("/v1/kpis/current?window=2h")).status_code == 422
            assert (await client.get("/readyz")).status_code == 200
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            code = service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)
            pytest.fail(f"the service did not stop on SIGTERM:\n{log.read_text()[-5000:]}")
    assert code == 0, log.read_text()[-3000:]
