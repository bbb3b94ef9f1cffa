"""The KPI service as a process: the worker, the query API, or both, started and stopped.

SIGTERM or SIGINT stops taking input: the worker finishes its batch, checkpoints, commits
and leaves the group; the API stops serving; the process exits 0 (linepulse/runtime.py).

At start it creates the topics it uses that are missing, with the plant config's layout,
and refuses to start (`TopicLayoutError`, exit 2 from the CLI) if one exists laid out
otherwise (linepulse/bus/topics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from linepulse.bus.clients import AioKafkaClients
from linepulse.bus.topics import TOPIC_ROLES, TopicRole, ensure_topics
from linepulse.config import PlantConfig
from linepulse.http.settings import TlsSettings
from linepulse.runtime import install_stop_signals, serve_http
from services.kpi.api import create_app
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from services.kpi.worker import KpiWorker

log = logging.getLogger(__name__)

# The API's topics: the materializer reads kpi and status, reason corrections go to
# telemetry. The worker uses every topic (it writes dead letters too).
API_TOPICS: tuple[TopicRole, ...] = ("telemetry", "kpi", "status")


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    db: Path  # DuckDB file of the KPI history (":memory:" keeps it in memory)
    alerts_url: str | None = None  # the alerts API the live board reads and acks through
    tls: TlsSettings | None = None  # HTTPS (else the config's api.tls; plain HTTP if neither)


async def run_service(
    plant: PlantConfig,
    bootstrap: str,
    *,
    state_dir: Path | None,
    api: ApiSettings | None,
) -> int:
    """The worker (given `state_dir`), the API (given `api`), or both in one process."""
    access = None
    if api is not None:
        try:
            access = plant.api.resolve("api")
        except ValueError as error:  # an unreadable token file
            log.error("%s", error)
            return 2
        if not access.tokens:
            log.warning(
                "no KPI API token: reason corrections are refused with 403; %s",
                access.configure_hint,
            )
    stop = asyncio.Event()
    install_stop_signals(stop, "stopping (finish the batch, checkpoint, commit, leave)")
    clients = AioKafkaClients(plant.kafka.security)  # TLS/SASL for every client below
    roles = TOPIC_ROLES if state_dir is not None else API_TOPICS
    await ensure_topics(bootstrap, plant.kafka, clients, roles=roles)
    registry = CollectorRegistry()
    metrics = KpiMetrics.create(registry, plant)
    worker = None
    if state_dir is not None:
        core = Core.from_config(plant)
        worker = KpiWorker(
            core, plant.kafka, bootstrap, DirectoryStore(state_dir), metrics, clients=clients
        )
        log.info(
            "kpi worker: group %s on %s, checkpoints in %s", plant.kafka.group, bootstrap, state_dir
        )
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            if worker is not None:
                group.create_task(worker.run(stop), name="kpi-worker")
            if api is not None:
                store = KpiStore(str(api.db), plant)
                stack.callback(store.close)
                materializer = Materializer(plant.kafka, bootstrap, store, metrics, clients=clients)
                app = create_app(
                    plant,
                    store,
                    registry,
                    ready=lambda: materializer.ready,
                    alerts_url=api.alerts_url,
                    bootstrap=bootstrap,  # reason corrections go to the core through it
                    clients=clients,
                    access=access,
                )
                group.create_task(materializer.run(stop), name="kpi-materializer")
                tls = api.tls or plant.api.tls
                server = serve_http(
                    group, stop, app, api.host, api.port, "kpi-api", lifespan="on", tls=tls
                )
                # uvicorn waits for open responses before its lifespan ends: the board's
                # event streams must end when the server is asked to.
                app.state.board.stop_when(lambda: server.should_exit)
                scheme = "http" if tls is None else "https"
                log.info(
                    "kpi api: %s://%s:%d/docs, history in %s", scheme, api.host, api.port, api.db
                )
    if worker is not None:
        stats = worker.stats
        log.info(
            "kpi worker stopped: %d batches, %d events, %d forwarded, %d dead letters, "
            "%d records published, %d checkpoints",
            stats.batches,
            stats.events,
            stats.forwarded,
            stats.dead_letters,
            stats.published,
            stats.checkpoints,
        )
    return 0
