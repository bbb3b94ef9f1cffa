"""Soak and fault test: the whole pipeline at a steady load while its parts are restarted.

    python -m bench.soak                    # ~8 min, every fault (see FAULTS)
    python -m bench.soak --quick            # 3.5 min, 4 faults (QUICK_FAULTS)
    python -m bench.soak --no-faults        # the same run with nothing restarted
    python -m bench.soak --faults kafka:kill,ingest:term --minutes 4

It starts a Kafka broker (deploy/kafka/kafka.sh) and a Mosquitto of its own, a webhook
receiver on loopback standing in for the shift lead's pager, and as child processes:
`linepulse simulate` twice (one serving the example plant's two OPC-UA servers, one
publishing its MQTT sources, so that an OPC-UA server restart leaves MQTT alone), both
with `--truth` and the OPC-UA one with `--history` (its servers keep each variable's last
hour, as a PLC with Historizing variables does); `linepulse ingest`, `kpi`, `api`, and
`alerts` twice (replicated: one active, one standby). The plant is the example
plant (20 machines) in UTC with 2-minute shifts around the run, windows `1m` and `shift`,
and a rule `state == down for 5s` on four machines that stop about once a minute.

While it runs, the fault schedule restarts one part at a time (SIGTERM, or kill -9 then a
fresh start) and waits for it to be back before the next; every 3 s it samples each
process's RSS. At the end it stops the simulators, lets the pipeline drain, and checks:

- events lost: true events (state, counters, product) missing from the telemetry topic;
- records wrong: `linepulse replay` of the merged truth against /v1/kpis/history for each
  (line or machine, window) inside the run, field by field (bench/soak_compare.py);
- pages: each page the receiver got, by its Idempotency-Key, once; the outbox's delivered
  rows all received; none left undelivered;
- memory: RSS median of the last third over the first third, per long-lived process.

Faults that cut a source off (an OPC-UA server restarting, the MQTT broker restarting) make
some true data unobservable (a restarted server has no history of before; a lost
connection is `unknown` time): records of the machines concerned whose window overlaps
the outage are reported apart as "excused", not as wrong. The ingester's own restarts
excuse nothing: MQTT keeps what it missed, Sparkplug sessions survive in its state
folder, and OPC-UA gaps are read back from the servers' history. Exit 1 if any event is lost,
any record is wrong, or any page is lost or duplicated; logs stay in bench/out/soak/.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.harness import LINEPULSE, Broker
from bench.soak_compare import (
    EventCheck,
    Outage,
    PageCheck,
    RecordCheck,
    compare_events,
    compare_pages,
    compare_records,
    down_spans,
    epoch_ms,
    record_key,
    rss_ratio,
    unpaged,
)
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, load_config
from linepulse.runtime import free_loopback_ports
from tests.integration.conftest import MosquittoBroker
from tests.integration.receivers import HttpReceiver
from tests.integration.test_ingest_e2e import EXACT, read_telemetry, read_truth
from tests.integration.test_kpi_worker import start_cli

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "simulated-plant" / "plant.yaml"
OUT = Path(__file__).parent / "out" / "soak"
TOKEN = "soak-token"  # noqa: S105 - a throwaway token for a loopback API
SHIFT_MIN = 2
WARMUP_S = 60.0  # from the simulators' start to the first window compared
TAIL_S = 10.0  # and a margin beyond the lateness before the sources stopped
# An outage lasts until this long after the part is back: the ingester reconnects to a
# restarted OPC-UA server or broker with a backoff that may have grown to ~30 s.
OUTAGE_PAD_S = {"ingest": 15.0, "sim-opcua": 45.0, "mosquitto": 45.0, "sim-mqtt": 45.0}
# ... and begins this long before the fault (a kill -9 loses the ingester's unsent batch),
# plus the longest small stop: a down spell cut short by an `unknown` mark turns into a
# small stop, which changes its windows back to where it began.
OUTAGE_BEFORE_MS = {"term": 2_000, "kill": 5_000, "wipe": 5_000}
SAMPLE_S = 3.0
READY_TIMEOUT_S = 90.0
PORT_RETRY_S = 60.0
DRAIN_TIMEOUT_S = 180.0
# Machines that stop about once a minute (scenario) and that the alert rule watches.
PAGED = ("filler-1", "capper-1", "cartoner-3", "wrapper-3")
OWED_DOWN_MS = 10_000  # a true `down` spell this long owes a page (the rule's for: 5s)

Fault = tuple[str, str]  # part, "term", "kill" or (api) "wipe": kill -9, empty database
FAULTS: tuple[Fault, ...] = (
    ("kafka", "term"),
    ("kpi", "term"),
    ("api", "term"),
    ("alerts", "term"),
    ("mosquitto", "term"),
    ("kafka", "kill"),
    ("kpi", "kill"),
    ("api", "kill"),
    ("alerts", "kill"),
    ("api", "wipe"),
    ("sim-opcua", "term"),
    ("ingest", "term"),
    ("ingest", "kill"),
)
QUICK_FAULTS: tuple[Fault, ...] = (
    ("kafka", "kill"),
    ("alerts", "kill"),
    ("api", "wipe"),
    ("ingest", "kill"),
)
# "alerts" is two processes, `alerts` and `alerts-b`: a fault of it hits the active one.
PARTS = ("kafka", "mosquitto", "sim-opcua", "sim-mqtt", "ingest", "kpi", "api", "alerts")


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- the plant of the run


def shifts_around(start_ms: int, minutes: float) -> list[dict[str, Any]]:
    """Back-to-back `SHIFT_MIN`-minute shifts (UTC) from before `start_ms` to well after
    the run, each with the lead on duty; the rest of the day has no shift."""
    first = (start_ms // 60_000) - 10
    count = int((minutes * 60 + 600) // (SHIFT_MIN * 60)) + 10
    out = []
    for i in range(count):
        begin = (first + i * SHIFT_MIN) % 1440
        end = (begin + SHIFT_MIN) % 1440
        out.append(
            {
                "name": f"s{i:03d}",
                "start": f"{begin // 60:02d}:{begin % 60:02d}",
                "end": f"{end // 60:02d}:{end % 60:02d}",
                "lead": "lead",
            }
        )
    return out


@dataclass(frozen=True)
class Configs:
    plant: Path  # what ingest, kpi, api, alerts and replay read
    sim_opcua: Path  # the same plant with only its OPC-UA sources
    sim_mqtt: Path  # ... only its MQTT sources
    opcua_ports: tuple[int, ...]
    opcua_machines: frozenset[str]
    mqtt_machines: frozenset[str]
    sparkplug_machines: frozenset[str]
    small_stop_ms: int  # the longest small stop: an `unknown` mark reclassifies spells
    lines: dict[str, str]  # machine -> line


def write_configs(
    tmp: Path, bootstrap: str, mqtt_port: int, receiver: str, minutes: float
) -> Configs:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["timezone"] = "UTC"
    data["day_start"] = "00:00"
    data["shifts"] = shifts_around(now_ms(), minutes)
    data["kpi"] = {**data.get("kpi", {}), "windows": ["1m", "shift"]}
    ports = free_loopback_ports(len(data["sources"]["opcua"]))
    for source, port in zip(data["sources"]["opcua"], ports, strict=True):
        path = source["endpoint"].split("/", 3)[3]
        source["endpoint"] = f"opc.tcp://127.0.0.1:{port}/{path}"
    for source in data["sources"]["mqtt"]:
        source["port"] = mqtt_port
        source["client_id"] = f"soak-ingest-{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:8]
    data["kafka"] = {
        "bootstrap": bootstrap,
        "telemetry": {"name": f"telemetry-{tag}", "partitions": 3},
        "kpi": {"name": f"kpi-{tag}", "partitions": 3},
        "dlq": {"name": f"dlq-{tag}", "partitions": 1},
        "status": {"name": f"status-{tag}", "partitions": 1},
        "reasons": {"name": f"reasons-{tag}", "partitions": 1},
        "alerts": {"name": f"alerts-{tag}", "partitions": 1},
        "group": f"soak-{tag}",
        "state_dir": str(tmp / "kpi-state"),
    }
    data["ingest"] = {"spool_dir": str(tmp / "spool"), "state_dir": str(tmp / "state")}
    data["alerts"] = {
        "group_wait": "1s",
        "state_dir": str(tmp / "alerts-state"),
        "api_token_env": "LINEPULSE_ALERTS_TOKEN",
        "people": {"lead": {"name": "Lead", "channels": ["pager"]}},
        "manager": "lead",
        "channels": [{"id": "pager", "type": "webhook", "url": f"{receiver}/hook"}],
        "high_availability": {"enabled": True, "failover": "6s"},
        "rules": [
            {
                "name": "machine-down",
                "signal": "state",
                "op": "==",
                "value": "down",
                "for": "5s",
                "severity": "critical",
                "scope": {"machines": list(PAGED)},
            }
        ],
    }
    plant = tmp / "plant.yaml"
    plant.write_text(yaml.safe_dump(data, sort_keys=False))
    opcua_only = {**data, "sources": {"opcua": data["sources"]["opcua"]}}
    mqtt_only = {**data, "sources": {"mqtt": data["sources"]["mqtt"]}}
    (tmp / "sim-opcua.yaml").write_text(yaml.safe_dump(opcua_only, sort_keys=False))
    (tmp / "sim-mqtt.yaml").write_text(yaml.safe_dump(mqtt_only, sort_keys=False))
    config = load_config(plant)
    opcua = frozenset(m.machine for s in config.sources.opcua for m in s.machines)
    lines = {m: line.id for m, (line, _) in config.machines().items()}
    return Configs(
        plant,
        tmp / "sim-opcua.yaml",
        tmp / "sim-mqtt.yaml",
        tuple(ports),
        opcua,
        frozenset(lines) - opcua,
        frozenset(
            m
            for src in config.sources.mqtt
            if src.sparkplug
            for m in src.sparkplug.devices.values()
        ),
        int(longest_small_stop_s(config) * 1000),
        lines,
    )


# ---------------------------------------------------------------- the parts


@dataclass
class Part:
    """A restartable process: RSS samples per incarnation, exit codes of stops."""

    name: str
    incarnations: list[list[tuple[float, int]]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)

    def pid(self) -> int | None:
        raise NotImplementedError

    def sample(self, at: float) -> None:
        pid = self.pid()
        if pid is None or not self.incarnations:
            return
        try:
            self.incarnations[-1].append((at, psutil.Process(pid).memory_info().rss))
        except psutil.Error:
            pass

    def begin(self) -> None:
        self.incarnations.append([])


@dataclass
class CliPart(Part):
    """A `linepulse` sub-command; `health` is a URL answering 200 once it is up, or a
    (host, port) that accepts connections, or None (up once alive for a few seconds)."""

    args: list[str] = field(default_factory=list)
    log: Path = Path("/dev/null")
    health: str | tuple[str, int] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.proc = start_cli(self.args, self.log)
        self.begin()

    def stop(self, how: str, timeout_s: float = 90) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        self.proc.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            self.exits.append(-999)  # did not stop on SIGTERM in time
            return code
        self.exits.append(code)
        return code

    async def ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        alive_since = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise RuntimeError(f"{self.name} exited with {code}; see {self.log}")
                if isinstance(self.health, str):
                    try:
                        if (await client.get(self.health)).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                elif isinstance(self.health, tuple):
                    try:
                        _, writer = await asyncio.open_connection(*self.health)
                        writer.close()
                        return
                    except OSError:
                        pass
                elif time.monotonic() - alive_since > 5:
                    return
                await asyncio.sleep(0.3)
        raise RuntimeError(f"{self.name} not up after {READY_TIMEOUT_S} s")


class KafkaPart(Part):
    """The broker of deploy/kafka/kafka.sh: a restart keeps its data dir, so its topics."""

    def __init__(self, broker: Broker) -> None:
        super().__init__("kafka")
        self.broker = broker
        self.port_retries = 0

    def pid(self) -> int | None:
        pid = self.broker.pid()
        return pid if pid is not None and _alive(pid) else None

    def start(self) -> None:
        """Start; while kafka.sh finds the port taken, show who holds it and retry. After
        a kill -9 the JVM's leader thread is a zombie at once, but its listening socket
        stays open until every thread has exited, which takes seconds."""
        deadline = time.monotonic() + PORT_RETRY_S
        while True:
            try:
                self.broker.start()
                break
            except RuntimeError as error:
                if "already in use" not in str(error) or time.monotonic() > deadline:
                    raise
                port = self.broker.bootstrap.rsplit(":", 1)[1]
                held = subprocess.run(
                    ["ss", "-tanp", f"( sport = :{port} or dport = :{port} )"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                print(f"    kafka port {port} in use, retrying:\n{held.strip()}", flush=True)
                self.port_retries += 1
                time.sleep(1)
        self.begin()

    def stop(self, how: str) -> int:
        pid = self.pid()
        if how == "kill" and pid is not None:
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
            self.exits.append(-9)
            return -9
        self.broker.stop()
        self.exits.append(0)
        return 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class MosquittoPart(Part):
    """Mosquitto with persistence: a SIGTERM writes its sessions, which a restart reads."""

    def __init__(self, broker: MosquittoBroker) -> None:
        super().__init__("mosquitto")
        self.broker = broker

    def pid(self) -> int | None:
        proc = self.broker.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        self.broker.start()
        self.begin()

    def stop(self, how: str) -> int:
        proc = self.broker.proc
        if how == "kill" and proc is not None:
            proc.kill()
            proc.wait()
            self.broker.proc = None
            self.exits.append(-9)
            return -9
        self.broker.stop()
        self.exits.append(0)
        return 0


# ---------------------------------------------------------------- the run


@dataclass
class Applied:
    part: str
    how: str
    at_ms: int
    back_ms: int
    exit: int


@dataclass
class Result:
    machines: int
    minutes: float
    truth_events: int
    events_per_s: float
    faults: list[Applied]
    outages: list[Outage]
    events: EventCheck
    records: RecordCheck
    pages: PageCheck
    undelivered: int
    fired: int
    owed: int  # true down spells in the span that owe a page
    not_paged: int  # of those, spells without a firing page of their machine
    rss: dict[str, tuple[float | None, int]]  # part -> (ratio, MiB at the end)
    bad_exits: dict[str, list[int]]
    sim_lag_s: float  # how far the simulators' tick loops fell behind wall time, at worst
    shift_records: int
    window_span: tuple[int, int]

    @property
    def passed(self) -> bool:
        return (
            self.events.lost == 0
            and self.records.records_wrong == 0
            and self.pages.duplicates == 0
            and self.pages.missing == 0
            and self.undelivered == 0
        )


def affected(part: str, configs: Configs) -> frozenset[str]:
    """Machines whose data a fault of `part` cuts (empty: the part is not on the path)."""
    if part == "sim-opcua":
        return configs.opcua_machines
    # The ingester's restarts cut nothing: the persistent MQTT session holds what it
    # missed (QoS 1 acknowledged only once kept), its Sparkplug sessions are in its state
    # folder, and it reads the OPC-UA changes it missed from the servers' history.
    if part in ("mosquitto", "sim-mqtt"):
        return configs.mqtt_machines  # a lost connection is `unknown` time
    return frozenset()


async def sampler(parts: list[Part], stop: asyncio.Event) -> None:
    while not stop.is_set():
        at = time.monotonic()
        for part in parts:
            part.sample(at)
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except TimeoutError:
            pass


def simulate(config: Path, seed: int, truth: Path, *stopping: str) -> list[str]:
    """`linepulse simulate` arguments; the `stopping` machines stop about once a minute
    for about 12 s (alternately 50 s and 70 s of running on average), so pages come."""
    stops = ",".join(f"stops={m}:{50 + 20 * (i % 2)}:12" for i, m in enumerate(stopping))
    return [
        *("simulate", "--config", str(config), "--seed", str(seed), "--history"),
        *("--truth", str(truth), "--scenario", stops),
    ]


def sim_lag(log: Path) -> float:
    """The worst `max_lag_s` a simulator reported on stopping (0 if none did)."""
    found = re.findall(r"max_lag_s=([0-9.e+-]+)", log.read_text(errors="replace"))
    return max((float(x) for x in found), default=0.0)


def merge_truth(files: list[Path], into: Path) -> int:
    """One truth file in time order from several (each already in order)."""

    def lines(path: Path) -> Iterator[tuple[int, int, str]]:
        with path.open() as handle:
            for n, line in enumerate(handle):
                if line.strip():
                    yield json.loads(line)["ts"], n, line

    count = 0
    with into.open("w") as out:
        for _, _, line in heapq.merge(*(lines(f) for f in files if f.exists())):
            out.write(line if line.endswith("\n") else line + "\n")
            count += 1
    return count


def longest_small_stop_s(plant: PlantConfig) -> float:
    return max(
        [plant.kpi.small_stop_s]
        + [m.small_stop_s for _, m in plant.machines().values() if m.small_stop_s is not None]
    )


def compared_until(plant: PlantConfig, truths: list[Path]) -> int:
    """The end of the compared span: windows ending later may still be open in the stream
    when the sources stop (the watermark trails each partition's latest event by the
    lateness plus the longest small stop), so they are left out."""
    last = min(_last_ts(path) for path in truths)
    small = longest_small_stop_s(plant)
    return last - int((plant.kpi.lateness_s + small + TAIL_S) * 1000)


def _last_ts(path: Path) -> int:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        tail = handle.read().decode(errors="replace").splitlines()
    return max(int(json.loads(line)["ts"]) for line in tail[1:] if line.strip())


def replay(configs: Configs, truth: Path, out: Path, log: Path) -> list[dict[str, Any]]:
    command = [*LINEPULSE, "replay", str(truth)]
    with log.open("ab") as err:
        done = subprocess.run(
            [*command, "-c", str(configs.plant), "-o", str(out), "--no-progress"],
            stderr=err,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"linepulse replay failed ({done.returncode}); see {log}")
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


async def served_records(api: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Every record of the compared span from the API, a window kind and a 5-minute slice
    of window starts per request (the history endpoint has no paging of its own)."""
    out: list[dict[str, Any]] = []
    step = 300_000
    async with httpx.AsyncClient(timeout=30) as client:
        for kind in ("1m", "shift"):
            begin = start_ms - SHIFT_MIN * 60_000
            while begin < end_ms:
                params = {"from": _iso(begin), "to": _iso(begin + step), "window": kind}
                reply = await client.get(f"{api}/v1/kpis/history", params=params)
                reply.raise_for_status()
                out.extend(reply.json())
                begin += step
    return out


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + "Z"


# The outbox rows of replicated alerts instances: one of them is the active one's, the
# others copies that may lag; a row's furthest status is the one that counts.
_STATUS_RANK = {"pending": 0, "failed": 1, "delivered": 2}


def outbox_rows(*state_dirs: Path) -> list[tuple[str, str]]:
    """(key, status) of every row of the alerts outboxes, each key once, at its furthest
    status over the instances."""
    rows: dict[str, str] = {}
    for state_dir in state_dirs:
        path = state_dir / "outbox.sqlite"
        if not path.exists():
            continue
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for key, status in db.execute("SELECT key, status FROM outbox"):
                held = rows.get(key)
                if held is None or _STATUS_RANK.get(status, 0) > _STATUS_RANK.get(held, 0):
                    rows[key] = status
    return sorted(rows.items())


def wipe_database(tmp: Path) -> None:
    """The API's DuckDB file (and its WAL) gone, as on a new replica or a lost volume."""
    for file in tmp.glob("kpi.duckdb*"):
        file.unlink()


async def active_alerts(clis: dict[str, CliPart], ports: dict[str, int]) -> str:
    """Which alerts instance is active now (GET /v1/replica), waiting for one to be."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            for name, port in ports.items():
                try:
                    view = (await client.get(f"http://127.0.0.1:{port}/v1/replica")).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if view.get("role") == "active" and clis[name].pid() is not None:
                    return name
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no alerts instance became active in {READY_TIMEOUT_S} s")


async def drained(api: str, want: set[tuple[Any, ...]], start_ms: int, end_ms: int) -> None:
    """Until every replayed key is served final (or DRAIN_TIMEOUT_S)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            served = await served_records(api, start_ms, end_ms)
        except httpx.HTTPError:
            served = []
        final = {record_key(r) for r in served if r.get("final")}
        if want <= final:
            return
        await asyncio.sleep(3)


async def soak(tmp: Path, minutes: float, faults: tuple[Fault, ...]) -> Result:
    """The run; the brokers are stopped whatever happens."""
    os.environ["LINEPULSE_ALERTS_TOKEN"] = TOKEN
    kafka = KafkaPart(Broker(tmp / "kafka"))
    mosquitto = MosquittoPart(MosquittoBroker(tmp / "mosquitto"))
    try:
        return await _soak(tmp, minutes, faults, kafka, mosquitto)
    finally:
        if mosquitto.pid() is not None:
            mosquitto.stop("term")
        kafka.broker.stop()


async def _soak(
    tmp: Path, minutes: float, faults: tuple[Fault, ...], kafka: KafkaPart, mosquitto: MosquittoPart
) -> Result:
    parts: dict[str, Part] = {"kafka": kafka, "mosquitto": mosquitto}
    clis: dict[str, CliPart] = {}
    stop_sampling = asyncio.Event()
    applied: list[Applied] = []
    outages: list[Outage] = []
    async with HttpReceiver() as receiver:
        print("starting Kafka and Mosquitto", flush=True)
        kafka.start()
        mosquitto.start()
        bootstrap = kafka.broker.bootstrap
        configs = write_configs(tmp, bootstrap, mosquitto.broker.port, receiver.url, minutes)
        plant = load_config(configs.plant)
        await ensure_topics(bootstrap, plant.kafka)
        ingest_port, api_port, alerts_port, alerts_b_port = free_loopback_ports(4)
        alerts_ports = {"alerts": alerts_port, "alerts-b": alerts_b_port}
        alert_states = (tmp / "alerts-state", tmp / "alerts-state-b")
        api = f"http://127.0.0.1:{api_port}"
        cfg = ["--config", str(configs.plant)]
        truth_opcua, truth_mqtt = tmp / "truth-opcua.jsonl", tmp / "truth-mqtt.jsonl"
        spec = {
            "ingest": (
                ["ingest", *cfg, "--port", str(ingest_port)],
                f"http://127.0.0.1:{ingest_port}/healthz",
            ),
            "kpi": (["kpi", *cfg], None),
            "api": (
                ["api", *cfg, "--port", str(api_port), "--db", str(tmp / "kpi.duckdb")],
                f"{api}/healthz",
            ),
            **{
                name: (
                    ["alerts", *cfg, "--port", str(port), "--state-dir", str(state)],
                    f"http://127.0.0.1:{port}/healthz",
                )
                for (name, port), state in zip(alerts_ports.items(), alert_states, strict=True)
            },
            "sim-opcua": (
                simulate(configs.sim_opcua, 11, truth_opcua, "filler-1", "capper-1"),
                ("127.0.0.1", configs.opcua_ports[0]),
            ),
            "sim-mqtt": (
                simulate(configs.sim_mqtt, 12, truth_mqtt, "cartoner-3", "wrapper-3"),
                None,
            ),
        }
        for name, (args, health) in spec.items():
            clis[name] = CliPart(name, args=args, log=tmp / f"{name}.log", health=health)
        parts.update(clis)
        try:
            for name in ("kpi", "api", "alerts", "alerts-b", "ingest"):
                clis[name].start()
            for name in ("kpi", "api", "alerts", "alerts-b", "ingest"):
                await clis[name].ready()
            await active_alerts(clis, alerts_ports)
            await asyncio.sleep(3)  # the ingester subscribed before the first values
            print("starting the simulators", flush=True)
            for name in ("sim-opcua", "sim-mqtt"):
                clis[name].start()
            sim_start_ms = now_ms()
            sampling = asyncio.create_task(sampler(list(parts.values()), stop_sampling))
            run_s = minutes * 60
            t0 = time.monotonic()
            slots = [
                WARMUP_S + (run_s - WARMUP_S - 60) * i / max(1, len(faults))
                for i in range(len(faults))
            ]
            for (part, how), slot in zip(faults, slots, strict=True):
                await asyncio.sleep(max(0.0, t0 + slot - time.monotonic()))
                at = now_ms()
                print(f"  {time.strftime('%H:%M:%S')} fault: {part} {how}", flush=True)
                # An alerts fault hits the active instance: the standby must take over.
                name = await active_alerts(clis, alerts_ports) if part == "alerts" else part
                target = parts[name]
                if isinstance(target, CliPart):
                    code = await asyncio.to_thread(target.stop, how)
                    if how == "wipe":  # the API restarted on an empty database
                        await asyncio.to_thread(wipe_database, tmp)
                    target.start()
                    await target.ready()
                    if part == "alerts":
                        await active_alerts(clis, alerts_ports)
                elif isinstance(target, KafkaPart | MosquittoPart):
                    code = await asyncio.to_thread(target.stop, how)
                    await asyncio.to_thread(target.start)
                else:
                    raise AssertionError(part)
                back = now_ms()
                applied.append(Applied(part, how, at, back, code))
                machines = affected(part, configs)
                if machines:
                    outages.append(
                        Outage(
                            machines,
                            at - OUTAGE_BEFORE_MS[how] - configs.small_stop_ms,
                            back + int(OUTAGE_PAD_S[part] * 1000),
                            f"{part} {how}",
                        )
                    )
                print(f"    back after {(back - at) / 1000:.1f} s (exit {code})", flush=True)
            await asyncio.sleep(max(0.0, t0 + run_s - time.monotonic()))
            print("stopping the simulators; draining", flush=True)
            sim_stop_ms = now_ms()
            for name in ("sim-opcua", "sim-mqtt"):
                await asyncio.to_thread(clis[name].stop, "term")
            merged = tmp / "truth.jsonl"
            truth_count = merge_truth([truth_opcua, truth_mqtt], merged)
            records = await asyncio.to_thread(
                replay, configs, merged, tmp / "replay.jsonl", tmp / "replay.log"
            )
            start_ms = -(-(sim_start_ms + int(WARMUP_S * 1000)) // 60_000) * 60_000
            end_ms = compared_until(plant, [truth_opcua, truth_mqtt])
            want = {
                record_key(r)
                for r in records
                if record_key(r)[3] >= start_ms and epoch_ms(r["window_end"]) <= end_ms
            }
            await drained(api, want, start_ms, end_ms)
            served = await served_records(api, start_ms, end_ms)
            await wait_outbox(*alert_states)
        finally:
            stop_sampling.set()
            for name in ("sim-opcua", "sim-mqtt", "ingest", "alerts", "alerts-b", "api", "kpi"):
                part_ = clis.get(name)
                if part_ is not None and part_.pid() is not None:
                    await asyncio.to_thread(part_.stop, "term")
        check_records = compare_records(
            records,
            served,
            start_ms=start_ms,
            end_ms=end_ms,
            outages=outages,
            lines=configs.lines,
        )
        telemetry = await read_telemetry(bootstrap, plant.kafka.telemetry.name)
        truth = read_truth(merged)
        with (tmp / "telemetry.jsonl").open("w") as dump:  # for a look after a failure
            for key in telemetry:
                dump.write(json.dumps(key) + "\n")
        check_events = compare_events(
            truth,
            telemetry,
            start_ms=start_ms,
            end_ms=end_ms,
            signals=EXACT,
            outages=outages,
        )
        rows = outbox_rows(*alert_states)
        keys = [r.headers.get("idempotency-key", "?") for r in receiver.accepted()]
        fired = sum(
            1
            for r in receiver.accepted()
            for a in r.json().get("alerts", [])
            if a.get("status") == "firing"
        )
        check_pages = compare_pages(keys, [k for k, s in rows if s == "delivered"])
        starts: dict[str, list[int]] = {}
        for request in receiver.accepted():
            for alert in request.json().get("alerts", []):
                if alert.get("status") == "firing" and "machine" in alert.get("labels", {}):
                    starts.setdefault(alert["labels"]["machine"], []).append(
                        epoch_ms(alert["startsAt"])
                    )
        owed = down_spans(truth, frozenset(PAGED), min_ms=OWED_DOWN_MS)
        not_paged = unpaged(owed, starts, start_ms=start_ms, end_ms=end_ms, grace_ms=30_000)
        owed_count = sum(
            1 for spells in owed.values() for b, e in spells if b >= start_ms and e <= end_ms
        )
        await sampling
    rss: dict[str, tuple[float | None, int]] = {}
    for name, process in parts.items():
        longest: list[tuple[float, int]] = max(process.incarnations, key=len, default=[])
        ratio = rss_ratio(longest, WARMUP_S / 2)
        rss[name] = (ratio, longest[-1][1] // 2**20 if longest else 0)
    expected_exit = {"term": (0,), "kill": (-9,), "wipe": (-9,)}
    bad = {
        name: [a.exit for a in applied if a.part == name and a.exit not in expected_exit[a.how]]
        for name in parts
    }
    shift_records = sum(
        1
        for r in records
        if r["window"] == "shift"
        and record_key(r)[3] >= start_ms
        and epoch_ms(r["window_end"]) <= end_ms
    )
    return Result(
        machines=len(configs.lines),
        minutes=minutes,
        truth_events=truth_count,
        events_per_s=truth_count / max(1.0, (sim_stop_ms - sim_start_ms) / 1000),
        faults=applied,
        outages=outages,
        events=check_events,
        records=check_records,
        pages=check_pages,
        undelivered=sum(1 for _, s in rows if s != "delivered"),
        fired=fired,
        owed=owed_count,
        not_paged=not_paged,
        rss=rss,
        bad_exits={k: v for k, v in bad.items() if v},
        sim_lag_s=max(sim_lag(tmp / "sim-opcua.log"), sim_lag(tmp / "sim-mqtt.log")),
        shift_records=shift_records,
        window_span=(start_ms, end_ms),
    )


async def wait_outbox(*state_dirs: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(s == "delivered" for _, s in outbox_rows(*state_dirs)):
            return
        await asyncio.sleep(1)


def table(result: Result) -> str:
    r = result
    span = f"{_iso(r.window_span[0])[11:19]}-{_iso(r.window_span[1])[11:19]} UTC"
    rows = [
        (
            "load held",
            f"{r.machines} machines, {r.events_per_s:.0f} true events/s for "
            f"{r.minutes:g} min ({r.truth_events} events; simulators at most "
            f"{r.sim_lag_s:.1f} s behind the clock)",
        ),
        (
            "faults injected",
            f"{len(r.faults)}: " + ", ".join(f"{a.part} {a.how}" for a in r.faults),
        ),
        (
            "events lost",
            f"{r.events.lost} of {r.events.expected} (+{r.events.excused} in "
            f"outages, {r.events.excused_missing} of those not on Kafka); "
            f"{r.events.duplicated} duplicated on the topic",
        ),
        (
            "records wrong",
            f"{r.records.records_wrong} of {r.records.compared} "
            f"({r.records.wrong} differing, {r.records.missing} missing; windows in {span}, "
            f"{r.shift_records} shift records)",
        ),
        (
            "records excused",
            f"{r.records.excused} overlapped an outage of their machines; "
            f"{r.records.excused_differing} of them differ",
        ),
        (
            "pages",
            f"{r.pages.received} received ({r.fired} firing alerts), "
            f"{r.pages.duplicates} twice, {r.pages.missing} delivered-not-received, "
            f"{r.pages.unexplained} unexplained, {r.undelivered} left in the outbox; "
            f"{r.not_paged} of {r.owed} true down spells >= {OWED_DOWN_MS // 1000} s unpaged",
        ),
    ]
    for name, (ratio, mib) in r.rss.items():
        text = "-" if ratio is None else f"{ratio:.2f}"
        rows.append((f"rss {name}", f"last/first third {text}, {mib} MiB at the end"))
    if r.bad_exits:
        rows.append(("unexpected exits", str(r.bad_exits)))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append(f"  {'verdict':<{width}}  {'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def details(result: Result) -> str:
    out = [
        f"  fault {a.part} {a.how}: back after {(a.back_ms - a.at_ms) / 1000:.1f} s, exit {a.exit}"
        for a in result.faults
    ]
    for m in result.records.mismatches[:20]:
        out.append(f"  wrong {m.key} {m.field}: replay {m.truth!r} served {m.served!r}")
    for k in result.records.missing_keys[:10]:
        out.append(f"  missing {k}")
    for e in result.events.lost_examples:
        out.append(f"  lost {e}")
    return "\n".join(out)


def parse_faults(text: str) -> tuple[Fault, ...]:
    out = []
    for item in text.split(","):
        part, _, how = item.strip().partition(":")
        if (
            part not in PARTS
            or how not in ("term", "kill", "wipe")
            or (how == "wipe" and part != "api")
        ):
            raise argparse.ArgumentTypeError(
                f"{item!r}: PART:term|kill (or api:wipe), PART in {PARTS}"
            )
        out.append((part, how))
    return tuple(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="simulated run (default 8)")
    parser.add_argument("--quick", action="store_true", help="3.5 minutes, 4 faults")
    parser.add_argument("--no-faults", action="store_true", help="restart nothing")
    parser.add_argument(
        "--faults", type=parse_faults, help="PART:term|kill (or api:wipe),... in order"
    )
    args = parser.parse_args(argv)
    faults = FAULTS
    if args.quick:
        args.minutes, faults = 3.5, QUICK_FAULTS
    if args.faults:
        faults = args.faults
    if args.no_faults:
        faults = ()
    if args.minutes * 60 < WARMUP_S + 60 + 20 * len(faults):
        parser.error(f"--minutes {args.minutes:g} is too short for {len(faults)} faults")
    tmp = Path(tempfile.mkdtemp(prefix="linepulse-soak-"))
    result: Result | None = None
    try:
        result = asyncio.run(soak(tmp, args.minutes, faults))
    finally:
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        for log in tmp.glob("*.log"):
            shutil.copy(log, OUT / log.name)
        for name in ("plant.yaml", "replay.jsonl", "truth.jsonl", "telemetry.jsonl"):
            if (tmp / name).exists():
                shutil.copy(tmp / name, OUT / name)
        for broker in ("kafka",):
            server_log = tmp / broker / "logs" / "server.log"
            if server_log.exists():
                shutil.copy(server_log, OUT / "kafka-server.log")
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(result))
    print(details(result))
    print(f"logs: {OUT}")
    raise SystemExit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
