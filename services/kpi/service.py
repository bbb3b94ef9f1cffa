"""The KPI service as a process: the worker, the query API, or both, started and stopped.

SIGTERM or SIGINT stops taking input: the worker finishes its batch, checkpoints, commits
and leaves the group; the API stops serving; the process exits 0. SIGUSR1 logs what every
task is waiting on, for a service that seems stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from services.kpi.api import create_app
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from services.kpi.topics import ensure_topics
from services.kpi.worker import KpiWorker

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        log.info("%s: stopping (finish the batch, checkpoint, commit, leave)", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def dump_tasks() -> None:
    buffer = io.StringIO()
    for task in asyncio.all_tasks():
        buffer.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=12, file=buffer)
    log.warning("tasks:\n%s", buffer.getvalue())


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    db: Path  # DuckDB file of the KPI history (":memory:" keeps it in memory)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's handlers stop everything,
    and teardown happens in our task group, not after uvicorn re-raises a signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_service(
    plant: PlantConfig,
    bootstrap: str,
    *,
    state_dir: Path | None,
    api: ApiSettings | None,
) -> int:
    """The worker (given `state_dir`), the API (given `api`), or both in one process."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    await ensure_topics(bootstrap, plant.kafka)
    registry = CollectorRegistry()
    metrics = KpiMetrics.create(registry, plant)
    worker = None
    if state_dir is not None:
        core = Core.from_config(plant)
        worker = KpiWorker(core, plant.kafka, bootstrap, DirectoryStore(state_dir), metrics)
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
                materializer = Materializer(plant.kafka, bootstrap, store, metrics)
                app = create_app(plant, store, registry, ready=lambda: materializer.ready)
                config = uvicorn.Config(
                    app, host=api.host, port=api.port, log_level="warning", lifespan="on"
                )
                server = _Server(config)
                group.create_task(materializer.run(stop), name="kpi-materializer")
                group.create_task(server.serve(), name="kpi-api")
                group.create_task(_exit_on(stop, server), name="kpi-api-stopper")
                log.info("kpi api: http://%s:%d/docs, history in %s", api.host, api.port, api.db)
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


async def _exit_on(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True
