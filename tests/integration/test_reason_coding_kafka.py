"""Reason coding on the real broker: `linepulse kpi --api` running, a stop that came
without a reason coded through the API, and the core's restatement back over HTTP; a
second API replica (`linepulse api`, started on an empty database) shows the same codes
and audit, and a correction made on it reaches the first."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from linepulse.bus.topics import ensure_topics
from linepulse.config import parse_config
from linepulse.runtime import free_loopback_ports
from tests.integration.test_kpi_worker import kafka_block, produce_json, start_cli
from tests.unit.kpi.test_reason_coding_on_bus import (
    DOWN_AT,
    iso,
    ms,
    plant_config,
    poll,
    poll_pareto,
    telemetry,
    window,
)

pytestmark = pytest.mark.integration


async def test_a_reason_correction_through_the_api_on_kafka(kafka: str, tmp_path: Path) -> None:
    data = plant_config().model_dump(mode="json")
    tokens = tmp_path / "api-tokens"  # corrections are writes: the API needs a token
    tokens.write_text("# one token per client\nother-client\nkafka-test-token\n")
    api = {"token_env": None, "token_file": str(tokens)}
    config = parse_config({**data, "kafka": kafka_block(partitions=2), "api": api})
    config_path = tmp_path / "plant.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    await ensure_topics(kafka, config.kafka)
    await produce_json(kafka, config.kafka.telemetry.name, telemetry())

    port, replica_port = free_loopback_ports(2)
    log = tmp_path / "service.log"
    args = ["kpi", "--api", "--config", str(config_path), "--kafka", kafka]
    args += ["--state-dir", str(tmp_path / "state"), "--port", str(port)]
    args += ["--db", str(tmp_path / "kpi.duckdb")]
    service = start_cli(args, log)
    history = f"/v1/kpis/history?from={iso(0)}&machine=m1&window=15m"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            (stop,) = await poll(
                http,
                "/v1/stops?machine=m1",
                lambda stops: bool(stops) and stops[0]["end"] is not None,
                timeout_s=120,
            )
            assert (stop["id"], stop["reason"]) == (f"m1@{ms(DOWN_AT)}", "unassigned")

            def quarter(records: list[dict[str, Any]]) -> dict[str, Any]:
                found = window(records, "15m", iso(0))
                assert found is not None
                return found

            before = quarter(
                await poll(http, history, lambda rs: bool(rs) and quarter(rs)["final"])
            )
            assert (before["revision"], before["downtime_by_reason"]) == (
                0,
                {"unassigned": 300.0},
            )

            url, body = f"/v1/stops/{stop['id']}/reason", {"reason": "jam", "by": "ann"}
            assert (await http.post(url, json=body)).status_code == 401
            response = await http.post(url, json=body, headers={"X-API-Key": "kafka-test-token"})
            assert response.status_code == 202, response.text

            after = quarter(await poll(http, history, lambda rs: quarter(rs)["revision"] >= 1))
            assert (after["revision"], after["downtime_by_reason"]) == (1, {"jam": 300.0})
            pareto = await poll_pareto(http, lambda p: bool(p) and p[0]["reason"] == "jam")
            assert pareto == [{"reason": "jam", "seconds": 300.0, "share": 1.0}]
            detail = (await http.get(f"/v1/stops/{stop['id']}")).json()
            assert (detail["reason"], detail["original_reason"]) == ("jam", "unassigned")
            assert [(e["old_reason"], e["new_reason"]) for e in detail["audit"]] == [
                ("unassigned", "jam")
            ]
            await _second_replica(
                http, config_path, kafka, replica_port, tmp_path, stop["id"], detail, history
            )
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            code = service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(10)
            pytest.fail(f"the service did not stop on SIGTERM:\n{log.read_text()[-5000:]}")
    assert code == 0, log.read_text()[-3000:]


async def _second_replica(
    first: httpx.AsyncClient,
    config_path: Path,
    kafka: str,
    port: int,
    tmp_path: Path,
    stop_id: str,
    detail: dict[str, Any],
    history: str,
) -> None:
    """`linepulse api` on an empty database: the same stop, code and audit as the first
    replica; a correction made on it is numbered after the first one's, reaches the
    first replica and the core."""
    log = tmp_path / "replica.log"
    args = ["api", "--config", str(config_path), "--kafka", kafka, "--port", str(port)]
    replica = start_cli([*args, "--db", str(tmp_path / "replica.duckdb")], log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            mirrored = await poll(
                http, f"/v1/stops/{stop_id}", lambda d: bool(d) and d["reason"] == "jam"
            )
            assert mirrored == detail, log.read_text()[-3000:]
            response = await http.post(
                f"/v1/stops/{stop_id}/reason",
                json={"reason": "tool change", "by": "bo"},
                headers={"X-API-Key": "kafka-test-token"},
            )
            assert response.status_code == 202, response.text
            assert response.json()["correction"]["seq"] == 2
        again = await poll(first, f"/v1/stops/{stop_id}", lambda d: d["reason"] == "tool change")
        assert [(e["seq"], e["new_reason"], e["by"]) for e in again["audit"]] == [
            (1, "jam", "ann"),
            (2, "tool change", "bo"),
        ]
        recoded = await poll(
            first,
            history,
            lambda rs: (window(rs, "15m", iso(0)) or {}).get("revision", 0) >= 2,
        )
        quarter = window(recoded, "15m", iso(0))
        assert quarter is not None
        assert quarter["downtime_by_reason"] == {"tool change": 300.0}
    finally:
        replica.send_signal(signal.SIGTERM)
        try:
            assert replica.wait(60) == 0, log.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            replica.kill()
            replica.wait(10)
            pytest.fail(f"the replica did not stop on SIGTERM:\n{log.read_text()[-5000:]}")
