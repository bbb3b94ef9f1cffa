"""Alert latency: from a machine going down to the shift lead's receiver getting the page.

    python -m bench.alerts                 # 40 machines x 3 rounds, `for: 5s`
    python -m bench.alerts --quick         # 10 machines x 1 round

It starts its own broker (deploy/kafka/kafka.sh, as bench.stream does), a webhook receiver
on loopback standing in for the lead's pager, and a `linepulse alerts` process with one
rule, `state == down for 5s`, routed to the lead of an all-day shift (`group_wait: 0s`).
Each round, every machine's `state` goes `down` on the telemetry topic (staggered, 0.2 s
apart), and back to `running` once all pages have arrived. Printed: per alert, the time
from the moment the `for` duration elapsed (produce time + 5 s) to the page's arrival, and
from the `running` event to the resolve's arrival: p50, p90, p99, max; pages missing or
repeated. The goal is p99 <= 2 s for pages. Nothing is asserted; exit code 0.

`run_drill` is also what tests/integration/test_alerts_e2e.py runs, with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
import yaml
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request

from bench.harness import LINEPULSE, broker_session
from linepulse.bus.topics import ensure_topics
from linepulse.config import load_config
from linepulse.runtime import QuietServer, free_loopback_ports

FOR_S = 5.0
STAGGER_S = 0.2
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a loopback API


@dataclass
class Receiver:
    """The lead's pager: records every webhook POST with its arrival time, and the
    notification's key (the `Idempotency-Key` header) by arrival."""

    port: int
    arrivals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> dict[str, str]:
            self.arrivals.append((time.time(), orjson.loads(await request.body())))
            self.keys.append(request.headers.get("idempotency-key", ""))
            return {"ok": "yes"}

        return app

    def seen(self, status: str) -> dict[str, list[float]]:
        """Arrival times per machine of alerts with this status ("firing" or "resolved")."""
        out: dict[str, list[float]] = {}
        for at, body in self.arrivals:
            for alert in body.get("alerts", []):
                if alert.get("status") == status:
                    out.setdefault(alert["labels"].get("machine", "?"), []).append(at)
        return out


def plant_yaml(
    machines: int,
    receiver_port: int,
    bootstrap: str,
    state_dir: Path,
    high_availability: dict[str, Any] | None = None,
) -> str:
    """The drill's plant; `high_availability`: `alerts.high_availability` (replicated)."""
    tag = uuid.uuid4().hex[:8]
    ids = [f"m-{i:03d}" for i in range(machines)]
    half = max(1, machines // 2)
    config = {
        "site": "bench",
        "timezone": "UTC",
        "shifts": [{"name": "all-day", "start": "00:00", "end": "00:00", "lead": "lead"}],
        "lines": [
            {"id": "line-a", "machines": [{"id": m, "ideal_cycle_time_s": 1} for m in ids[:half]]},
            {"id": "line-b", "machines": [{"id": m, "ideal_cycle_time_s": 1} for m in ids[half:]]},
        ]
        if machines > 1
        else [{"id": "line-a", "machines": [{"id": ids[0], "ideal_cycle_time_s": 1}]}],
        "kafka": {
            "bootstrap": bootstrap,
            "telemetry": {"name": f"telemetry-{tag}", "partitions": 2},
            "kpi": {"name": f"kpi-{tag}", "partitions": 2},
            "dlq": {"name": f"dlq-{tag}", "partitions": 1},
            "status": {"name": f"status-{tag}", "partitions": 1},
            "reasons": {"name": f"reasons-{tag}", "partitions": 1},
            "alerts": {"name": f"alerts-{tag}", "partitions": 1},
        },
        "alerts": {
            "group_wait": "0s",
            "state_dir": str(state_dir),
            "api_token_env": "LINEPULSE_ALERTS_TOKEN",
            "people": {"lead": {"name": "Lead", "channels": ["pager"]}},
            "channels": [
                {"id": "pager", "type": "webhook", "url": f"http://127.0.0.1:{receiver_port}/hook"}
            ],
            "rules": [
                {
                    "name": "machine-down",
                    "signal": "state",
                    "op": "==",
                    "value": "down",
                    "for": f"{FOR_S:g}s",
                    "severity": "critical",
                }
            ],
            **({} if high_availability is None else {"high_availability": high_availability}),
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Drill:
    pages: list[float]  # seconds from `for` elapsed to arrival, one per alert
    resolves: list[float]  # seconds from the running event to arrival
    missing_pages: int
    missing_resolves: int
    repeated: int  # pages beyond one per machine and round
    log: Path


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def produce_state(producer: AIOKafkaProducer, topic: str, machine: str, state: str) -> float:
    now = time.time()
    event = {"ts": int(now * 1000), "machine": machine, "signal": "state", "value": state}
    await producer.send_and_wait(topic, orjson.dumps(event), key=machine.encode())
    return now


async def _wait(receiver: Receiver, status: str, want: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = receiver.seen(status)
        if all(len(seen.get(m, [])) >= n for m, n in want.items()):
            return
        await asyncio.sleep(0.05)


def _start_alerts(config: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [*LINEPULSE, "--log-level", "info", "alerts"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "--config", str(config), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LINEPULSE_ALERTS_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"},
        )


async def run_drill(bootstrap: str, tmp: Path, machines: int, rounds: int) -> Drill:
    """One `linepulse alerts` process, `rounds` of every machine down then up again."""
    (port,) = free_loopback_ports(1)
    receiver = Receiver(port)
    server = QuietServer(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    config = tmp / "plant.yaml"
    config.write_text(plant_yaml(machines, port, bootstrap, tmp / "alerts-state"))
    plant = load_config(config)
    await ensure_topics(bootstrap, plant.kafka)
    log = tmp / "alerts.log"
    child = _start_alerts(config, log)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    topic = plant.kafka.telemetry.name
    ids = list(plant.machines())
    pages: list[float] = []
    resolves: list[float] = []
    try:
        await asyncio.sleep(6)  # its consumers join at the topics' ends
        for machine in ids:
            await produce_state(producer, topic, machine, "running")
        await asyncio.sleep(2)
        for round_no in range(1, rounds + 1):
            down: dict[str, float] = {}
            for machine in ids:
                down[machine] = await produce_state(producer, topic, machine, "down")
                await asyncio.sleep(STAGGER_S)
            await _wait(receiver, "firing", dict.fromkeys(ids, round_no), FOR_S + 30)
            firing = receiver.seen("firing")
            for machine in ids:
                arrivals = [a for a in firing.get(machine, []) if a >= down[machine]]
                if arrivals:
                    pages.append(min(arrivals) - (down[machine] + FOR_S))
            up: dict[str, float] = {}
            for machine in ids:
                up[machine] = await produce_state(producer, topic, machine, "running")
            await _wait(receiver, "resolved", dict.fromkeys(ids, round_no), 30)
            resolved = receiver.seen("resolved")
            for machine in ids:
                arrivals = [a for a in resolved.get(machine, []) if a >= up[machine]]
                if arrivals:
                    resolves.append(min(arrivals) - up[machine])
    finally:
        await producer.stop()
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        server.should_exit = True
        await serving
    firing, resolved = receiver.seen("firing"), receiver.seen("resolved")
    expected = machines * rounds
    return Drill(
        pages=pages,
        resolves=resolves,
        missing_pages=expected - len(pages),
        missing_resolves=expected - len(resolves),
        repeated=sum(max(0, len(firing.get(m, [])) - rounds) for m in ids)
        + sum(max(0, len(resolved.get(m, [])) - rounds) for m in ids),
        log=log,
    )


def _line(name: str, values: list[float]) -> str:
    cells = [_quantile(values, q) for q in (0.5, 0.9, 0.99)] + [max(values, default=None)]
    text = "  ".join("    -   " if c is None else f"{c:7.3f} s" for c in cells)
    return f"  {name:<34} {text}  ({len(values)} alerts)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--machines", type=int, default=40, help="default: 40")
    parser.add_argument("--rounds", type=int, default=3, help="default: 3")
    parser.add_argument("--quick", action="store_true", help="10 machines, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.machines, args.rounds = 10, 1
    if args.machines < 1 or args.rounds < 1:
        parser.error("--machines and --rounds must be positive")
    out = Path(__file__).parent / "out" / "alerts"
    with broker_session("bench.alerts", "linepulse-alerts-") as (broker, tmp):
        try:
            drill = asyncio.run(run_drill(broker.bootstrap, tmp, args.machines, args.rounds))
        finally:
            out.mkdir(parents=True, exist_ok=True)
            if (tmp / "alerts.log").exists():
                shutil.copy(tmp / "alerts.log", out / "alerts.log")
    print(
        f"\n{args.machines} machines x {args.rounds} rounds; rule `state == down for "
        f"{FOR_S:g}s`; evaluation every 1 s; webhook receiver on loopback"
    )
    print(f"  {'':<34} {'p50':>9}  {'p90':>9}  {'p99':>9}  {'max':>9}")
    print(_line("page: `for` elapsed -> received", drill.pages))
    print(_line("resolve: running -> received", drill.resolves))
    print(
        f"  missing pages {drill.missing_pages}, missing resolves {drill.missing_resolves}, "
        f"repeated {drill.repeated}"
    )
    p99 = _quantile(drill.pages, 0.99)
    verdict = "PASS" if p99 is not None and p99 <= 2.0 else "MISS"
    print(f"  {verdict}  page p99 {p99 if p99 is None else round(p99, 3)} s (goal <= 2 s)")
    print(f"log: {out / 'alerts.log'}")


if __name__ == "__main__":
    main()
