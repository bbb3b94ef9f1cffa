"""Alerts failover: `kill -9` of the active `linepulse alerts` in the middle of an incident.

    python -m bench.alerts_failover              # failover 6 s (Kafka's default floor)

It starts its own broker (deploy/kafka/kafka.sh), a webhook receiver on loopback standing
in for the lead's pager, and two `linepulse alerts` with `alerts.high_availability`
(bench/alerts.py's plant: rule `state == down for 5s`, `group_wait: 0s`). Then:

1. machine m-000 goes down and pages; it is acknowledged through the *standby's* API
   (passed on to the active instance), which pages the acknowledgement;
2. m-001 goes down; 1 s later (its alert pending, its page 4 s away) the active instance
   is killed with SIGKILL;
3. the standby must take over, page m-001, and page both resolves when the machines run;
4. the killed instance is started again on its old state folder: it must come back as a
   standby showing the same alerts as the active one;
5. the active instance is frozen (SIGSTOP) for twice the failover time, as a process
   stalled or cut off would be: the standby takes over and pages m-000 going down again;
   the frozen one, let go (SIGCONT), must find itself fenced and page nothing.

Printed: the handover time (SIGKILL to the survivor answering `role: active` on
`GET /v1/replica`), the m-001 page's delay past its `for`, every notification key the
receiver got with its count (exactly once each is the goal), and whether the ack and the
restarted standby's view held. Nothing is asserted; exit code 0.
`run_failover_drill` is also what tests/integration/test_alerts_failover.py runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import uvicorn
from aiokafka import AIOKafkaProducer

from bench.alerts import FOR_S, TOKEN, Receiver, plant_yaml, produce_state
from bench.harness import LINEPULSE, broker_session
from linepulse.bus.topics import ensure_topics
from linepulse.config import load_config
from linepulse.runtime import QuietServer, free_loopback_ports

FAILOVER_S = 6.0
# The notifications the drill must see, (machine, kind): how many (each its own key).
EXPECTED: Final = Counter(
    {
        ("m-000", "firing"): 2,
        ("m-000", "acknowledged"): 1,
        ("m-001", "firing"): 1,
        ("m-000", "resolved"): 1,
        ("m-001", "resolved"): 1,
    }
)


@dataclass
class Instance:
    name: str
    port: int
    state: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: Path) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *LINEPULSE,
                    "--log-level",
                    "info",
                    "alerts",
                    "--config",
                    str(config),
                    "--port",
                    str(self.port),
                    "--state-dir",
                    str(self.state),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LINEPULSE_ALERTS_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        if self.process is None:
            raise RuntimeError(f"instance {self.name} was not started")
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class FailoverDrill:
    handover_s: float | None  # SIGKILL -> the survivor answers role "active"
    freeze_handover_s: float | None  # SIGSTOP -> the other answers role "active"
    zombie_stepped_down: bool  # the frozen one, let go, answers role "standby"
    page_delay_s: float | None  # m-001's page after its `for` elapsed (paged by the survivor)
    counts: dict[tuple[str, str], int]  # (machine, kind) -> deliveries
    keys: Counter[str]  # notification key -> deliveries
    ack_forwarded: bool  # the ack through the standby's API was applied by the active one
    ack_kept: bool  # the survivor still shows who acknowledged m-000
    standby_agrees: bool  # the restarted instance is a standby with the active one's alerts
    logs: list[Path] = field(default_factory=list)

    @property
    def missing(self) -> dict[tuple[str, str], int]:
        return {
            k: n - self.counts.get(k, 0) for k, n in EXPECTED.items() if self.counts.get(k, 0) < n
        }

    @property
    def extra(self) -> dict[tuple[str, str], int]:
        return {k: n - EXPECTED[k] for k, n in self.counts.items() if n > EXPECTED[k]}

    @property
    def repeated(self) -> dict[str, int]:
        return {key: n for key, n in self.keys.items() if n > 1}


async def _get(client: httpx.AsyncClient, url: str) -> Any:
    try:
        response = await client.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


async def _role(client: httpx.AsyncClient, instance: Instance) -> str | None:
    view = await _get(client, f"{instance.url}/v1/replica")
    return None if view is None else str(view["role"])


async def _until(check: Any, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(step_s)
    return False


def _notifications(receiver: Receiver) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for _, body in receiver.arrivals:
        for alert in body.get("alerts", []):
            counts[(alert["labels"].get("machine", "?"), str(body.get("kind")))] += 1
    return counts


def _arrival(receiver: Receiver, machine: str, kind: str) -> float | None:
    for at, body in receiver.arrivals:
        if body.get("kind") == kind and any(
            a["labels"].get("machine") == machine for a in body.get("alerts", [])
        ):
            return at
    return None


def _view(alerts: Any) -> list[tuple[str, str, str | None]]:
    return sorted((a["fingerprint"], a["state"], a["acked_by"]) for a in alerts or [])


async def run_failover_drill(bootstrap: str, tmp: Path) -> FailoverDrill:
    """Two replicated `linepulse alerts`; SIGKILL of the active one mid-incident."""
    receiver_port, port_a, port_b = free_loopback_ports(3)
    receiver = Receiver(receiver_port)
    server = QuietServer(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=receiver_port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    config = tmp / "plant.yaml"
    ha = {"enabled": True, "failover": f"{FAILOVER_S:g}s"}
    config.write_text(plant_yaml(2, receiver_port, bootstrap, tmp / "unused", ha))
    plant = load_config(config)
    await ensure_topics(bootstrap, plant.kafka)
    first = Instance("a", port_a, tmp / "state-a", tmp / "alerts-a.log")
    second = Instance("b", port_b, tmp / "state-b", tmp / "alerts-b.log")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    topic = plant.kafka.telemetry.name
    headers = {"Authorization": f"Bearer {TOKEN}"}
    handover = page_delay = freeze_handover = None
    ack_forwarded = ack_kept = standby_agrees = stepped_down = False
    try:
        async with httpx.AsyncClient() as client:
            first.start(config)
            if not await _until(lambda: _is(client, first, "active"), 60):
                raise RuntimeError(f"instance a never became active; see {first.log}")
            second.start(config)
            if not await _until(lambda: _is(client, second, "standby"), 60):
                raise RuntimeError(f"instance b never became a standby; see {second.log}")
            await asyncio.sleep(4)  # the active one's consumers join at the topics' ends
            for machine in ("m-000", "m-001"):
                await produce_state(producer, topic, machine, "running")
            await asyncio.sleep(2)
            await produce_state(producer, topic, "m-000", "down")
            await _until(lambda: _seen(receiver, "m-000", "firing"), FOR_S + 30)
            # Acknowledge through the standby: it passes the write on to the active one. Its
            # view follows the active one's within a second.
            firing = f"{second.url}/v1/alerts?machine=m-000&state=firing"
            await _until(lambda: _has(client, firing), 10)
            alerts = await _get(client, firing)
            if alerts:
                answer = await client.post(
                    f"{second.url}/v1/alerts/{alerts[0]['fingerprint']}/ack",
                    json={"who": "lead-on-standby"},
                    headers=headers,
                )
                ack_forwarded = answer.status_code == 200 and answer.json()["state"] == (
                    "acknowledged"
                )
            await _until(lambda: _seen(receiver, "m-000", "acknowledged"), 15)
            down_at = await produce_state(producer, topic, "m-001", "down")
            await asyncio.sleep(1.0)
            killed_at = time.monotonic()
            first.kill()
            if await _until(lambda: _is(client, second, "active"), 60, step_s=0.02):
                handover = time.monotonic() - killed_at
            await _until(lambda: _seen(receiver, "m-001", "firing"), FOR_S + 30)
            paged = _arrival(receiver, "m-001", "firing")
            page_delay = None if paged is None else paged - (down_at + FOR_S)
            for machine in ("m-000", "m-001"):
                await produce_state(producer, topic, machine, "running")
            await _until(
                lambda: _seen(receiver, "m-000", "resolved", "m-001", "resolved"), FOR_S + 30
            )
            survivor = await _get(client, f"{second.url}/v1/alerts?machine=m-000")
            ack_kept = any(a["acked_by"] == "lead-on-standby" for a in survivor or [])
            first.start(config)  # back on its old state folder: a standby again
            if await _until(lambda: _is(client, first, "standby"), 60):

                async def same_view() -> bool:
                    mine = await _get(client, f"{first.url}/v1/alerts")
                    theirs = await _get(client, f"{second.url}/v1/alerts")
                    return bool(theirs) and _view(mine) == _view(theirs)

                standby_agrees = await _until(same_view, 10)
            # Freeze the active one: the other takes over; let go, the frozen one is fenced.
            assert_process(second)
            os.kill(second.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            frozen_at = time.monotonic()
            if await _until(lambda: _is(client, first, "active"), 60, step_s=0.02):
                freeze_handover = time.monotonic() - frozen_at
            await produce_state(producer, topic, "m-000", "down")
            await _until(lambda: _count(receiver, "m-000", "firing", 2), FOR_S + 30)
            await asyncio.sleep(max(0.0, 2 * FAILOVER_S - (time.monotonic() - frozen_at)))
            os.kill(second.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            stepped_down = await _until(lambda: _is(client, second, "standby"), 30)
            await asyncio.sleep(3)  # a page from the unfrozen one would arrive by now
    finally:
        await producer.stop()
        first.stop()
        second.stop()
        server.should_exit = True
        await serving
    counts = _notifications(receiver)
    return FailoverDrill(
        handover_s=handover,
        freeze_handover_s=freeze_handover,
        zombie_stepped_down=stepped_down,
        page_delay_s=page_delay,
        counts=dict(counts),
        keys=Counter(receiver.keys),
        ack_forwarded=ack_forwarded,
        ack_kept=ack_kept,
        standby_agrees=standby_agrees,
        logs=[first.log, second.log],
    )


async def _has(client: httpx.AsyncClient, url: str) -> bool:
    return bool(await _get(client, url))


async def _is(client: httpx.AsyncClient, instance: Instance, role: str) -> bool:
    return await _role(client, instance) == role


def assert_process(instance: Instance) -> None:
    if instance.process is None or instance.process.poll() is not None:
        raise RuntimeError(f"instance {instance.name} is not running; see {instance.log}")


async def _count(receiver: Receiver, machine: str, kind: str, count: int) -> bool:
    return _notifications(receiver)[(machine, kind)] >= count


async def _seen(receiver: Receiver, *pairs: str) -> bool:
    return all(
        _arrival(receiver, machine, kind) is not None
        for machine, kind in zip(pairs[::2], pairs[1::2], strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts_failover", description=__doc__)
    parser.parse_args(argv)
    out = Path(__file__).parent / "out" / "alerts-failover"
    with broker_session("bench.alerts_failover", "linepulse-alerts-failover-") as (broker, tmp):
        try:
            drill = asyncio.run(run_failover_drill(broker.bootstrap, tmp))
        finally:
            out.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("alerts-*.log"):
                shutil.copy(log, out / log.name)
    handover = "never" if drill.handover_s is None else f"{drill.handover_s:.2f} s"
    delay = "never" if drill.page_delay_s is None else f"{drill.page_delay_s:.2f} s"
    print(f"\ntwo replicated `linepulse alerts`, failover {FAILOVER_S:g} s; SIGKILL mid-incident")
    print(f"  handover: SIGKILL -> survivor active       {handover}  (goal <= 10 s)")
    print(f"  m-001 page after its `for` (by survivor)  {delay}")
    for (machine, kind), count in sorted(drill.counts.items()):
        print(f"  {machine} {kind:<13} delivered {count}x")
    frozen = "never" if drill.freeze_handover_s is None else f"{drill.freeze_handover_s:.2f} s"
    print(f"  handover: SIGSTOP -> other active          {frozen}")
    print(f"  the frozen one, let go, stepped down: {drill.zombie_stepped_down}")
    print(
        f"  missing {drill.missing or 'none'}; beyond expected {drill.extra or 'none'}; "
        f"keys delivered twice {drill.repeated or 'none'}"
    )
    print(
        f"  ack through the standby applied: {drill.ack_forwarded}; kept across the kill: "
        f"{drill.ack_kept}; restarted instance a standby with the same alerts: "
        f"{drill.standby_agrees}"
    )
    print(f"logs: {out}")


if __name__ == "__main__":
    main()
