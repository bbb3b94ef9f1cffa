"""The compose stack (deploy/docker-compose.yml) on podman, brought up as an operator would
with podman-compose: every service healthy, the simulator's data in the API as correct
line records, Prometheus scraping every LinePulse service, a machine-down page reaching
Alertmanager, then `down` and `up` again with nothing lost or counted twice.

The test runs the shipped compose file and plant with three changes, each for time: one
all-day shift without breaks (so pages are due whenever CI runs), `machine-down` after 10 s
instead of 5 minutes, and the simulator's filler-1 stopping after ~30 s of running, for
~15 minutes on average (Alertmanager lists only alerts still firing). Ports,
project name, tokens and config folder are the test's own (compose variables), so it never
touches a stack an operator runs here.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from linepulse.config import PlantConfig, parse_config
from linepulse.runtime import free_loopback_ports
from tests.deploy.conftest import DEPLOY, ROOT, engine_env, podman, report

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
HEALTHCHECKED = (
    "kafka", "mosquitto", "ingest", "kpi", "api", "alerts", "prometheus", "alertmanager",
)  # fmt: skip
# Stopped before the rest, so that each finds its broker still there at SIGTERM.
LINEPULSE_SERVICES = ("simulate", "ingest", "kpi", "api", "alerts")
SCRAPED_JOBS = {"linepulse-kpi", "linepulse-api", "linepulse-ingest", "linepulse-alerts"}
DOWN_MACHINE = "filler-1"
# Final 1-minute records whose parts exceed what the ideal cycle time allows by this much
# are wrong (the first minute of line 2 once had billions of parts).
PERFORMANCE_CEILING = 1.2


class Stack:
    """One compose project of the test's own."""

    def __init__(self, folder: Path) -> None:
        self.project = f"lptest{uuid.uuid4().hex[:8]}"
        self.api_port, self.alerts_port, self.prometheus_port = free_loopback_ports(3)
        config = folder / "linepulse"
        config.mkdir()
        config.chmod(0o755)  # read by the services' uid 10001
        (config / "plant.yaml").write_text(yaml.safe_dump(self.plant()), "utf-8")
        (config / "plant.yaml").chmod(0o644)
        env_file = folder / "linepulse.env"
        env_file.write_text(
            f"LINEPULSE_API_TOKEN={secrets.token_hex(16)}\n"
            f"LINEPULSE_ALERTS_TOKEN={secrets.token_hex(16)}\n",
            "utf-8",
        )
        override = folder / "compose.test.yml"
        override.write_text(
            yaml.safe_dump(
                {
                    "services": {
                        "simulate": {
                            "command": [
                                "--log-level",
                                "info",
                                "simulate",
                                "--seed",
                                "1",
                                "--scenario",
                                f"stops={DOWN_MACHINE}:30:900",
                            ]
                        }
                    }
                }
            ),
            "utf-8",
        )
        self.files = ["-f", str(COMPOSE_FILE), "-f", str(override)]
        self.env = {
            **engine_env(),
            "LINEPULSE_CONFIG_DIR": str(config),
            "LINEPULSE_ENV_FILE": str(env_file),
            "LINEPULSE_API_PORT": str(self.api_port),
            "LINEPULSE_ALERTS_PORT": str(self.alerts_port),
            "LINEPULSE_ALERTS_PUBLIC_URL": f"http://localhost:{self.alerts_port}",
            "PROMETHEUS_PORT": str(self.prometheus_port),
            "KAFKA_HEAP": "512m",
        }
        self.api = f"http://127.0.0.1:{self.api_port}"

    def plant(self) -> dict[str, Any]:
        plant: dict[str, Any] = yaml.safe_load((DEPLOY / "linepulse" / "plant.yaml").read_text())
        plant["shifts"] = [{"name": "all-day", "start": "00:00", "end": "00:00"}]
        for rule in plant["alerts"]["rules"]:
            if rule["name"] == "machine-down":
                rule["for"] = "10s"
        plant["alerts"]["cors_origins"] = [f"http://localhost:{self.api_port}"]
        return plant

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - podman-compose with the test's arguments
            [sys.executable, "-m", "podman_compose", "-p", self.project, *self.files, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        took = time.monotonic() - started
        report(f"podman-compose {' '.join(args)}: exit {done.returncode} in {took:.0f} s")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def wait_healthy(self, timeout_s: float = 240) -> None:
        """Run every healthcheck until all pass: podman without systemd runs them only
        when asked (`podman healthcheck run`), which is what its timer would do."""
        pending = set(HEALTHCHECKED)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for service in sorted(pending):
                check = podman("healthcheck", "run", self.container(service), check=False)
                if check.returncode == 0:
                    pending.discard(service)
            time.sleep(3)
        unhealthy = f"unhealthy after {timeout_s:.0f} s: {sorted(pending)}\n"
        assert not pending, unhealthy + self.logs(pending)

    def logs(self, services: Iterable[str]) -> str:
        out = []
        for service in sorted(services):
            done = podman("logs", "--tail", "25", self.container(service), check=False)
            out.append(f"---- {service}\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    def get(self, path: str, base: str | None = None) -> Any:
        answer = httpx.get((base or self.api) + path, timeout=10)
        answer.raise_for_status()
        return answer.json()


def poll(what: str, probe: Callable[[], Any], timeout_s: float, detail: Callable[[], str]) -> Any:
    """`probe()` every 2 s until it returns something true; its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (httpx.HTTPError, json.JSONDecodeError):  # not up yet; a test's bug raises
            found = None
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{detail()}")


@pytest.fixture
def stack(images: None, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        subprocess.run(  # noqa: S603 - podman-compose with the test's arguments
            [sys.executable, "-m", "podman_compose", "-p", running.project, *running.files,
             "down", "-v", "-t", "10"],
            cwd=ROOT, env=running.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip


def final_minutes(stack: Stack, since: str) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """The final 1-minute records since `since`, by (line, machine, window_start)."""
    records = stack.get(f"/v1/kpis/history?from={since}&window=1m")
    return {(r["line"], r["machine"], r["window_start"]): r for r in records if r["final"]}


def fastest_cycle_s(plant: PlantConfig) -> dict[str, float]:
    """Per machine, the shortest ideal cycle time of it and its products: no machine makes
    parts faster (the simulator never beats it)."""
    out = {}
    for machine in (m for line in plant.lines for m in line.machines):
        times = [p.ideal_cycle_time_s for p in machine.products.values()]
        if machine.ideal_cycle_time_s is not None:
            times.append(machine.ideal_cycle_time_s)
        out[machine.id] = min(times)
    return out


def check_line_records(plant: PlantConfig, minutes: dict[Any, dict[str, Any]]) -> int:
    """Each final line record is its machines' records summed (docs/kpi.md, Lines), its
    output the output machine's good parts, and no machine makes more parts than its ideal
    cycle time allows. The number of line records checked."""
    checked = 0
    cycle = fastest_cycle_s(plant)
    for line in plant.lines:
        ids = [m.id for m in line.machines]
        for (line_id, machine, start), record in minutes.items():
            if line_id != line.id or machine is not None:
                continue
            found = [minutes.get((line_id, m, start)) for m in ids]
            machines = [m for m in found if m is not None]
            if len(machines) < len(ids):
                continue
            for field in ("planned_s", "run_s", "down_s", "unknown_s"):
                summed = sum(m[field] for m in machines)
                assert record[field] == pytest.approx(summed), (field, record)
            for field in ("total_count", "good_count", "reject_count"):
                assert record[field] == sum(m[field] for m in machines), (field, record)
            output = minutes[(line_id, line.output_machine.id, start)]
            assert record["output_count"] == output["good_count"], (record, output)
            for m in machines:
                possible = m["run_s"] / cycle[m["machine"]] * PERFORMANCE_CEILING + 2
                assert m["total_count"] <= possible, m
            checked += 1
    return checked


def test_the_stack_comes_up_computes_pages_and_survives_down_and_up(stack: Stack) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    begun = time.monotonic()
    stack.compose("up", "-d")
    stack.wait_healthy()
    report(f"stack up and healthy after {time.monotonic() - begun:.0f} s:")
    ps = podman("ps", "--filter", f"label=io.podman.compose.project={stack.project}",
                "--format", "{{.Names}}\t{{.Status}}\t{{.Ports}}").stdout  # fmt: skip
    for line in ps.splitlines():
        report(f"  {line}")
    plant = parse_config(stack.plant(), "the test's plant")
    machines = set(plant.machines())

    def every_machine() -> bool:
        records = stack.get("/v1/kpis/current?window=1m")
        return {r["machine"] for r in records if r["machine"]} == machines

    feeding = {"ingest", "kpi", "api"}
    poll("KPIs of every machine in the API", every_machine, 180, lambda: stack.logs(feeding))
    report(f"every machine's KPIs in the API after {time.monotonic() - begun:.0f} s")

    # Prometheus scrapes the four LinePulse services (published on 127.0.0.1 only).
    prometheus = f"http://127.0.0.1:{stack.prometheus_port}"

    def scraped() -> bool:
        targets = stack.get("/api/v1/targets", prometheus)["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return SCRAPED_JOBS <= up

    poll("Prometheus scraping every LinePulse service", scraped, 90,
         lambda: json.dumps(stack.get("/api/v1/targets", prometheus))[-2000:])  # fmt: skip

    # filler-1 stops (after ~30 s on average, for ~15 min): `linepulse alerts` pages Alertmanager.
    def paged() -> list[dict[str, Any]]:
        out = podman("exec", stack.container("alertmanager"), "wget", "-q", "-O", "-",
                     "http://127.0.0.1:9093/api/v2/alerts", check=False).stdout  # fmt: skip
        alerts: list[dict[str, Any]] = json.loads(out or "[]")
        return [a for a in alerts if a["labels"].get("alertname") == "machine-down"
                and a["labels"].get("machine") == DOWN_MACHINE]  # fmt: skip

    page = poll("the machine-down page in Alertmanager", paged, 240, lambda: stack.logs({"alerts"}))
    report(f"machine-down of {DOWN_MACHINE} in Alertmanager after {time.monotonic() - begun:.0f} s")
    assert page[0]["labels"]["line"] == "line-1"

    # Correct line records: two closed minutes of each line at least.
    def two_minutes_checked() -> dict[Any, dict[str, Any]]:
        found = final_minutes(stack, started)
        return found if check_line_records(plant, found) >= len(plant.lines) * 2 else {}

    before = poll("two final 1-minute records per line", two_minutes_checked, 180,
                  lambda: stack.logs({"kpi"}))  # fmt: skip
    day_before = {r["machine"]: r for r in stack.get("/v1/kpis/current?window=day") if r["machine"]}
    stopped_at = time.monotonic()

    # down and up: volumes kept, every service resumes from its state. LinePulse first, as
    # deploy/README.md says: podman-compose's `down` may stop Kafka before its clients.
    stack.compose("stop", "-t", "45", *LINEPULSE_SERVICES)
    stack.compose("down", "-t", "45")
    stack.compose("up", "-d")
    stack.wait_healthy()
    poll("KPIs of every machine again", every_machine, 180, lambda: stack.logs(feeding))
    report(f"down and up: every machine's KPIs again after {time.monotonic() - stopped_at:.0f} s")

    # Nothing lost: the minutes closed before `down` are all still there, unchanged.
    after = final_minutes(stack, started)
    for key, record in before.items():
        assert key in after, key
        for field in ("planned_s", "run_s", "total_count", "good_count", "reject_count"):
            assert after[key][field] == record[field], (key, field, record, after[key])

    # Counted once: the day's counts went on from where they were, by no more than the
    # machines can make since (a replay counted twice would about double them).
    def counts_moved_on() -> dict[str, dict[str, Any]]:
        day = {r["machine"]: r for r in stack.get("/v1/kpis/current?window=day") if r["machine"]}
        moved = sum(day[m]["total_count"] > day_before[m]["total_count"] for m in day_before)
        return day if moved >= len(day_before) // 2 else {}

    day_after = poll(
        "the day's counts going on after up", counts_moved_on, 120, lambda: stack.logs({"kpi"})
    )
    elapsed = time.monotonic() - stopped_at
    cycle = fastest_cycle_s(plant)
    for machine, record in day_before.items():
        now = day_after[machine]["total_count"]
        assert now >= record["total_count"], (machine, record["total_count"], now)
        assert now <= record["total_count"] + elapsed / cycle[machine] * PERFORMANCE_CEILING + 5, (
            machine, record["total_count"], now, elapsed,
        )  # fmt: skip
    # The line records of the minutes after `up` are their machines' summed too.
    assert check_line_records(plant, final_minutes(stack, started)) >= len(plant.lines) * 2
