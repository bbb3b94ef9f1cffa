"""`linepulse demo`: the whole flow in one process, on the packaged example plant (or on
the user's own plant file, `--config`).

The equipment simulator serves two OPC-UA servers and publishes line 3 on MQTT (JSON
topics and Sparkplug B) through an embedded broker (amqtt); the OPC-UA and MQTT ingesters
read them onto the `telemetry` topic; the KPI worker, the API's materializer and the
alerts service read the topics as they would on Kafka. Without `--kafka` the topics live
in an in-process broker with the same client interface (linepulse/bus), so nothing else
has to run; with `--kafka HOST:PORT` the same services use that broker. Everything runs
in one event loop and stops on one event (Ctrl-C or SIGTERM).

The plant has been running before the demo starts: the simulator first generates its
history from the start of the previous shift up to now at full speed (history.py in the
simulator) onto the telemetry topic through the ingesters' sink, and only then serves live
values from the same model, so the board opens on a shift with its OEE, losses, stops and
trend. The KPI worker works that history off like any backlog; the alerts service judges
only current windows (services/alerts/rules.py `PAST_AFTER_MS`), so none of it pages.

A user's plant file is simulated the way the packaged one is: its OPC-UA endpoints and
MQTT brokers are moved to free loopback ports (an embedded broker when it has MQTT
sources), and every alert channel becomes the console: a simulated plant pages nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from amqtt.broker import Broker
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.bus import AIOKAFKA, InProcessBroker, InProcessClients, KafkaClients
from linepulse.bus.topics import ensure_topics
from linepulse.calendar import Calendar, text_ms
from linepulse.config import PlantConfig, parse_config
from linepulse.http.settings import ApiAccess
from linepulse.runtime import (
    HttpSettings,
    Task,
    free_loopback_ports,
    run_until_stop,
    stop_on_signals,
    wait_any,
    wait_set,
)
from services.alerts.service import AlertsSettings, open_alerts
from services.ingest.metrics import IngestMetrics
from services.ingest.service import ingesters
from services.ingest.simulator.history import History, onto_sink, previous_shift_start
from services.ingest.simulator.model import Behaviour
from services.ingest.simulator.run import run_simulator
from services.ingest.simulator.scenario import charted_checks
from services.ingest.spooled_sink import SpooledSink
from services.kpi.service import ApiSettings, KpiSettings, open_kpi
from services.kpi.store import KpiStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # the query API and the live board
    alerts_port: int = 8081
    seed: int = 1
    fast: float = 1.0  # plant behaviour sped up: stops and changeovers this much more often
    kafka: str | None = None  # a real broker instead of the in-process one
    webhook: str | None = None  # a URL every notification is also POSTed to (Alertmanager shape)
    # The user's plant file (already validated by the caller); None: the packaged plant.
    config: Path | None = None
    port_notes: tuple[str, ...] = ()  # what the caller chose instead of a busy default port


PACKAGED = "linepulse/demo/plant.yaml"
# Every charted signal (the plant's `spc:` with fixed limits) gets a quality check this
# often while its machine runs: a control chart point a minute on the board.
QUALITY_CHECK_EVERY_S = 60.0
# opc.tcp://host[:port][/path]: the path is kept, host and port are replaced.
_ENDPOINT = re.compile(r"^opc\.tcp://[^/]+(?P<path>/.*)?$")


def plant_data(config: Path | None) -> tuple[dict[str, Any], str]:
    """The raw plant mapping and its name: the user's file, or the packaged demo plant."""
    if config is None:
        text = resources.files("linepulse.demo").joinpath("plant.yaml").read_text("utf-8")
        return yaml.safe_load(text), PACKAGED
    return yaml.safe_load(config.read_text("utf-8")), str(config)


def opcua_count(data: dict[str, Any]) -> int:
    return len((data.get("sources") or {}).get("opcua") or [])


def simulated_plant(
    data: dict[str, Any],
    name: str,
    opcua_ports: list[int],
    mqtt_port: int,
    webhook: str | None = None,
) -> PlantConfig:
    """A plant mapping made to run on this host: each OPC-UA endpoint on its loopback port
    (in order, without security: the simulator's servers have none), every MQTT source on
    the embedded broker at `mqtt_port` (MQTT 3.1.1, no TLS, no credentials), every alert channel of
    the user's own file the console, and `webhook` (if given) a channel every notification
    also goes to."""
    sources = data.get("sources") or {}
    for source, port in zip(sources.get("opcua") or [], opcua_ports, strict=True):
        found = _ENDPOINT.match(str(source.get("endpoint", "")))
        path = (found.group("path") or "") if found else ""
        source["endpoint"] = f"opc.tcp://127.0.0.1:{port}{path}"
        source.pop("security", None)
        source.pop("credentials", None)
    for mqtt in sources.get("mqtt") or []:
        mqtt["host"], mqtt["port"] = "127.0.0.1", mqtt_port
        mqtt["mqtt_version"] = "3.1.1"  # the embedded broker (amqtt) speaks 3.1.1 only
        mqtt.pop("tls", None)
        mqtt.pop("credentials", None)
    alerts = data.get("alerts")
    if isinstance(alerts, dict):
        if name != PACKAGED:
            channels = alerts.get("channels") or []
            alerts["channels"] = [{"id": c["id"], "type": "console"} for c in channels]
        if webhook is not None:
            alerts.setdefault("channels", []).append(
                {"id": "webhook", "type": "webhook", "url": webhook}
            )
            alerts["broadcast"] = [*alerts.get("broadcast", []), "webhook"]
    return parse_config(data, name)


def demo_plant(opcua_ports: list[int], mqtt_port: int, webhook: str | None = None) -> PlantConfig:
    """The packaged demo plant with its OPC-UA servers and MQTT broker on the given
    loopback ports, and with `webhook` (if given) as a channel every notification goes to."""
    data, name = plant_data(None)
    return simulated_plant(data, name, opcua_ports, mqtt_port, webhook)


async def run_demo(settings: DemoSettings, announce: Callable[[str], None]) -> int:
    """Run until SIGINT/SIGTERM; `announce` prints the URLs once everything listens."""
    stop = stop_on_signals("stopping the demo")
    with tempfile.TemporaryDirectory(prefix="linepulse-demo-") as folder:
        await _run(settings, Path(folder), stop, announce)
    return 0


DEMO_MEMORY_SAMPLES = 1_000_000


async def _run(
    settings: DemoSettings, state: Path, stop: asyncio.Event, announce: Callable[[str], None]
) -> None:
    data, name = plant_data(settings.config)
    taken = {settings.port, settings.alerts_port}
    ports = [p for p in free_loopback_ports(opcua_count(data) + 1 + len(taken)) if p not in taken]
    *opcua_ports, mqtt_port = ports[: opcua_count(data) + 1]
    plant = simulated_plant(data, name, opcua_ports, mqtt_port, settings.webhook)
    clients: KafkaClients
    if settings.kafka is None:
        clients, bootstrap = (
            InProcessClients(InProcessBroker(auto_create_partitions=None)),
            "in-process",
        )
    else:
        clients, bootstrap = AIOKAFKA, settings.kafka
    await ensure_topics(bootstrap, plant.kafka, clients)
    registry = CollectorRegistry()
    ingest_metrics = IngestMetrics.create(registry)
    # One sink for both buses. Its memory holds the whole history (~500,000 samples for the
    # packaged plant), which is put faster than any bus acknowledges: a spill to the spool
    # would be lossless but warn, on a first run, that Kafka is not acknowledging.
    # The ingest state (spool, source sessions) in the demo's temporary folder, for the
    # sink and the ingesters alike: the demo writes nothing where it was started.
    ingest = plant.ingest.model_copy(
        update={
            "spool_dir": state / "spool",
            "state_dir": state / "ingest-state",
            "memory_samples": DEMO_MEMORY_SAMPLES,
        }
    )
    plant = plant.model_copy(update={"ingest": ingest})
    sink = SpooledSink(plant, bootstrap, ingest, ingest_metrics, clients=clients)
    await sink.start()
    token = secrets.token_hex(12)
    # Reason coding on the board is a write: the KPI API takes it with this token only.
    api_token = secrets.token_hex(12)
    api_access = ApiAccess(
        tokens=(SecretStr(api_token),),
        configure_hint="the demo prints its token when it starts",
    )
    alerts_url = f"http://{settings.host}:{settings.alerts_port}"
    board = f"http://{settings.host}:{settings.port}"
    kpi_api = ApiSettings(
        HttpSettings(settings.host, settings.port), Path(":memory:"), alerts_url, api_access
    )
    alerts_http = HttpSettings(settings.host, settings.alerts_port)
    # The board (another origin) reads alerts and acks them with the printed token.
    alerts_access = ApiAccess(tokens=(SecretStr(token),), cors_origins=(board,))
    behaviour = Behaviour().faster(settings.fast) if settings.fast > 1 else None
    ready = asyncio.Event()
    mqtt_broker = await _start_mqtt_broker(mqtt_port) if plant.sources.mqtt else None
    history = History(
        start_ms=previous_shift_start(plant, int(time.time() * 1000)),
        deliver=onto_sink(plant, sink),
        progress=announce,
    )

    async def simulate(stop: asyncio.Event) -> object:
        return await run_simulator(
            plant, seed=settings.seed, truth=None, stop=stop, ready=ready,
            behaviour=behaviour, history=history,
            scenario=charted_checks(plant, QUALITY_CHECK_EVERY_S),
        )  # fmt: skip

    try:
        async with (
            open_kpi(
                KpiSettings(plant, bootstrap, state / "checkpoints", kpi_api), clients, registry
            ) as kpi,
            open_alerts(
                AlertsSettings(plant, bootstrap, state / "alerts", alerts_http, alerts_access),
                clients,
                CollectorRegistry(),  # the alerts API's /metrics: the alerts service's only
            ) as alerts,
            run_until_stop(stop) as running,
        ):
            running.start(Task("simulator", simulate))
            await wait_any((ready, stop))  # the simulator's servers listen, or a stop
            if stop.is_set():
                return
            running.start(*ingesters(plant, sink, ingest_metrics), *kpi.tasks, *alerts.tasks)
            # The board opens once it has the history: on a running plant, not an empty one.
            if kpi.store is not None:  # always: the demo serves the API
                await _caught_up(kpi.store, plant, time.time(), stop, announce)
            if stop.is_set():
                return
            for served in (*kpi.served, *alerts.served):
                running.serve(served)
            bus = "an in-process bus" if settings.kafka is None else f"Kafka at {settings.kafka}"
            notes = "".join(f"  {note}\n" for note in settings.port_notes)
            announce(
                f"LinePulse demo: {len(plant.machines())} machines on {len(plant.lines)} lines "
                f"of {name}, on {bus}\n{notes}"
                f"  live board   {board}/\n"
                f"  KPI API      {board}/docs   (token for coding stops: {api_token})\n"
                f"  alerts API   {alerts_url}/docs   (token for ack and silences: {token})\n"
                f"  metrics      {board}/metrics\n"
                "Ctrl-C stops it."
            )
    finally:
        with contextlib.suppress(Exception):
            await sink.close()
        if mqtt_broker is not None:
            with contextlib.suppress(Exception):
                await mqtt_broker.shutdown()
    log.info("demo stopped")


async def _start_mqtt_broker(port: int) -> Broker:
    """An embedded MQTT broker (amqtt) on loopback for line 3's MQTT and Sparkplug machines:
    the demo needs no Mosquitto. A plant uses its own broker (`sources.mqtt`)."""
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "sys_interval": 0,
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    return broker


# How often the demo looks whether the KPIs have caught up with the history, and how long
# it waits at most before opening the board anyway (saying so).
CATCH_UP_POLL_S = 0.5
CATCH_UP_MAX_S = 60.0


def _shifts_shown(store: KpiStore, plant: PlantConfig, now_ms: int) -> bool:
    """Whether every line in a shift at `now_ms` has that shift's record. The worker
    sends an open shift's record at its own cadence (`kafka.open_cadence_s`): until the
    first, the board shows the shift before, closed, as if the plant stood between shifts."""
    if "shift" not in plant.kpi.windows:
        return True
    calendar = Calendar(plant)
    for line in plant.lines:
        running = calendar.spans(line.id, now_ms, now_ms + 1)
        if not running:
            continue
        records = store.history.current(line.id, None, "shift", scope="line")
        if running[0].start not in {text_ms(r["window_start"]) for r in records}:
            return False
    return True


async def _caught_up(
    store: KpiStore,
    plant: PlantConfig,
    history_end_s: float,
    stop: asyncio.Event,
    announce: Callable[[str], None],
) -> None:
    """Wait until the KPI store has the history's KPIs (its latest event time has reached
    the end of the history, and each line's running shift has its record), so that the
    board the demo then announces shows the shift from its first second; or until `stop`,
    or at most `CATCH_UP_MAX_S`."""
    began = time.monotonic()
    while not stop.is_set():
        latest = store.status.latest_event_time()
        reached = latest is not None and latest.timestamp() >= history_end_s - 1.0
        if reached and _shifts_shown(store, plant, int(history_end_s * 1000)):
            announce(f"KPIs over the history: done in {time.monotonic() - began:.1f} s")
            return
        if time.monotonic() - began > CATCH_UP_MAX_S:
            announce(f"KPIs over the history: not done after {CATCH_UP_MAX_S:.0f} s; going on")
            return
        await wait_set(stop, CATCH_UP_POLL_S)
