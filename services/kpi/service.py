"""The KPI service as a component: the worker, the query API, or both, opened and closed.

`open_kpi` opens what the service needs (its topics, the history store, the worker, the
materializer, the API app) and closes it in reverse order; the composition root runs its
`tasks` and serves its `served` apps (linepulse/runtime.py `run_until_stop`). On stop the
worker finishes its batch, checkpoints, commits and leaves the group; the API stops
serving.

At start it creates the topics it uses that are missing, with the plant config's layout,
and refuses to start (`TopicLayoutError`, exit 2 from the CLI) if one exists laid out
otherwise (linepulse/bus/topics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from linepulse.bus import KafkaClients
from linepulse.bus.topics import TOPIC_ROLES, TopicRole, ensure_topics
from linepulse.config import PlantConfig
from linepulse.http.settings import ApiAccess
from linepulse.runtime import HttpSettings, Served, StartRefused, Task
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
API_TOPICS: tuple[TopicRole, ...] = ("telemetry", "kpi", "status", "reasons", "spc")


@dataclass(frozen=True)
class ApiSettings:
    http: HttpSettings  # where the API listens, and its HTTPS if any
    db: Path  # DuckDB file of the KPI history (":memory:" keeps it in memory)
    alerts_url: str | None = None  # the alerts API the live board reads and acks through
    access: ApiAccess | None = None  # tokens and limits; None: from the config (`api:`)


@dataclass(frozen=True)
class KpiSettings:
    plant: PlantConfig
    bootstrap: str
    state_dir: Path | None  # the worker's checkpoints; None: no worker in this process
    api: ApiSettings | None = None  # None: no API in this process


@dataclass(frozen=True)
class Kpi:
    """An opened KPI service: the loops to run, the app to serve, and whether the API's
    figures have caught up (the materializer has reached the end of the `kpi` topic)."""

    tasks: tuple[Task, ...]
    served: tuple[Served, ...]
    store: KpiStore | None  # the API's history (None without the API)
    worker: KpiWorker | None
    materializer: Materializer | None

    @property
    def ready(self) -> bool:
        return self.materializer is None or self.materializer.ready

    async def wait_for_start(self, stop: asyncio.Event) -> bool:
        """Nothing to wait for: `open_kpi` has made sure of its topics."""
        return True


@contextlib.asynccontextmanager
async def open_kpi(
    settings: KpiSettings, clients: KafkaClients, registry: CollectorRegistry
) -> AsyncIterator[Kpi]:
    """The worker (given `settings.state_dir`), the API (given `settings.api`), or both,
    on `clients` (aiokafka's, with the config's TLS/SASL, or the in-process bus), with
    their metrics in `registry`. Raises `StartRefused` for an unreadable token file."""
    plant, bootstrap, api = settings.plant, settings.bootstrap, settings.api
    access = None
    if api is not None:
        try:
            access = api.access or plant.api.resolve("api")
        except ValueError as error:  # an unreadable token file
            raise StartRefused(str(error)) from None
        if not access.tokens:
            log.warning(
                "no KPI API token: reason corrections are refused with 403; %s",
                access.configure_hint,
            )
    roles = TOPIC_ROLES if settings.state_dir is not None else API_TOPICS
    await ensure_topics(bootstrap, plant.kafka, clients, roles=roles)
    metrics = KpiMetrics.create(registry, plant)
    tasks: list[Task] = []
    served: list[Served] = []
    worker: KpiWorker | None = None
    materializer: Materializer | None = None
    store: KpiStore | None = None
    if settings.state_dir is not None:
        checkpoints = DirectoryStore(settings.state_dir)
        worker = KpiWorker(
            Core.from_config(plant), plant.kafka, bootstrap, checkpoints, metrics, clients=clients
        )
        tasks.append(Task("kpi-worker", worker.run))
        log.info(
            "kpi worker: group %s on %s, checkpoints in %s",
            plant.kafka.group,
            bootstrap,
            settings.state_dir,
        )
    async with contextlib.AsyncExitStack() as stack:
        if api is not None:
            store = KpiStore(str(api.db), plant)
            stack.callback(store.close)
            follower = Materializer(plant.kafka, bootstrap, store, metrics, clients=clients)
            materializer = follower
            tasks.append(Task("kpi-materializer", follower.run))
            app = create_app(
                plant,
                store,
                registry,
                ready=lambda: follower.ready,
                alerts_url=api.alerts_url,
                bootstrap=bootstrap,  # reason corrections go to the core through it
                clients=clients,
                access=access,
                reasons_read=follower.reasons_read,
            )
            # uvicorn waits for open responses before its lifespan ends: the board's
            # event streams must end when the server is asked to.
            served.append(Served("kpi-api", app, api.http, "on", app.state.board.stop))
            http = api.http
            log.info(
                "kpi api: %s://%s:%d/docs, history in %s", http.scheme, http.host, http.port, api.db
            )
        yield Kpi(tuple(tasks), tuple(served), store, worker, materializer)
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
