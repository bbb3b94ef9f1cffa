"""Where the services keep their state: one data directory, a subdirectory per service.

A service never writes into the directory it was started from. Its state lives under
`--data-dir` (`LINEPULSE_DATA_DIR`; by default the user's state directory,
`$XDG_STATE_HOME/linepulse` or `~/.local/state/linepulse`):

    kpi/checkpoints/      kafka.state_dir: the worker's partition checkpoints
    kpi/history.duckdb    --db: the query API's KPI history
    alerts/               alerts.state_dir: alert states, notification log, outbox
    ingest/spool/         ingest.spool_dir: telemetry held while Kafka is away
    ingest/state/         ingest.state_dir: sources' sessions (Sparkplug B alias tables)

A relative path in the plant config resolves against the data directory, an absolute one
is used as it is, and a path given on the command line (`--state-dir`, `--db`) wins over
both. Services sharing one data directory therefore never share a file: workers of one
consumer group share `kpi/checkpoints/` on purpose (a partition moving between them takes
its checkpoint along), while the state of which one process must be the only writer (the
alerts state, the ingest spool, the KPI history) is claimed with a lock file, so that a
second process pointed at it stops with one line instead of corrupting it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_state_path

from linepulse.config import PlantConfig

ENV_VAR = "LINEPULSE_DATA_DIR"
# The query API's DuckDB file, relative to the data directory.
KPI_HISTORY = Path("kpi/history.duckdb")
LOCK_NAME = ".lock"


class DataDirError(Exception):
    """A piece of state cannot be created, written or claimed; the message is one line
    naming the path and what it is for."""


def default_data_dir() -> Path:
    """The user's state directory for LinePulse (XDG on Linux); created only when used."""
    return user_state_path("linepulse", appauthor=False)


def resolve(data_dir: Path, path: Path) -> Path:
    """`path` if absolute (after `~` expansion), else `path` under `data_dir`."""
    path = path.expanduser()
    return path if path.is_absolute() else data_dir / path


def with_data_dir(plant: PlantConfig, data_dir: Path) -> PlantConfig:
    """The plant config with its state paths (kafka.state_dir, alerts.state_dir,
    ingest.spool_dir, ingest.state_dir) resolved against `data_dir`, so that the services
    get absolute paths and never depend on the current directory."""
    root = data_dir.expanduser().absolute()
    kafka = plant.kafka.model_copy(update={"state_dir": resolve(root, plant.kafka.state_dir)})
    alerts = plant.alerts.model_copy(update={"state_dir": resolve(root, plant.alerts.state_dir)})
    ingest = plant.ingest.model_copy(
        update={
            "spool_dir": resolve(root, plant.ingest.spool_dir),
            "state_dir": resolve(root, plant.ingest.state_dir),
        }
    )
    return plant.model_copy(update={"kafka": kafka, "alerts": alerts, "ingest": ingest})


def prepare(directory: Path, what: str) -> Path:
    """Create `directory` (and its parents) and check that this process can write it.

    `what` names it in the error (e.g. "alerts.state_dir"). Raises `DataDirError`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataDirError(f"cannot create {what} {directory}: {reason}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataDirError(f"cannot write {what} {directory}: permission denied")
    return directory


@contextmanager
def claim(state: Path, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on `state` (a directory, or a file that may not exist yet)
    for as long as the block runs.

    The lock is the kernel's (flock) on `<dir>/.lock` or `<dir>/.<file>.lock`, so it is
    released when the process ends however it ends; the lock file keeps the holder's PID
    only to name it in the error. Raises `DataDirError` if another process holds it."""
    if state.is_dir():
        lock_file = state / LOCK_NAME
    else:
        lock_file = state.parent / f".{state.name}{LOCK_NAME}"
    try:
        handle = lock_file.open("a+")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataDirError(f"cannot create the lock file {lock_file}: {reason}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            raise DataDirError(
                f"{state} is in use by another {holder} (pid {other}); give each its own --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
