"""The KPI worker as a process: topics, signals, the worker loop, a clean exit.

SIGTERM or SIGINT stops taking input; the worker finishes its batch, checkpoints, commits
and leaves the group, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from pathlib import Path

from linepulse.config import PlantConfig
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.topics import ensure_topics
from services.kpi.worker import KpiWorker

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT stop the service; SIGUSR1 logs what every task is waiting on."""
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


async def run_worker(plant: PlantConfig, bootstrap: str, state_dir: Path) -> int:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await ensure_topics(bootstrap, plant.kafka)
    worker = KpiWorker(Core.from_config(plant), plant.kafka, bootstrap, DirectoryStore(state_dir))
    log.info(
        "kpi worker: group %s on %s, checkpoints in %s", plant.kafka.group, bootstrap, state_dir
    )
    await worker.run(stop)
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
