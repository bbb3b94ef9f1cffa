"""The KPI API's store: one DuckDB database holding the KPI history, the machine
statuses and the stop log, each behind its own object.

| attribute  | module                        | what it holds                             |
|------------|-------------------------------|-------------------------------------------|
| `history`  | services/kpi/history.py       | every KPI record, one row per key         |
| `status`   | services/kpi/status_store.py  | each machine's last known state           |
| `stops`    | services/kpi/stops.py         | stops and the audit of reason corrections |
| `spc`      | services/kpi/spc_store.py     | control chart subgroups                   |

They share one connection (services/kpi/database.py), so a batch of statuses and the
stops it opens and closes commit together; `KpiStore` opens it, creates or migrates the
tables, and is the one object that closes it. Callers take the store they need
(`store.history.current(...)`, `store.status.machines()`, `store.stops.get(id)`). The
store belongs to whoever opened it: `create_app` uses it and never closes it.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from linepulse.config import PlantConfig
from services.kpi.current import Scope
from services.kpi.database import Database
from services.kpi.history import KpiHistory
from services.kpi.spc_store import SpcPoints
from services.kpi.status_store import StatusStore
from services.kpi.stops import StopLog

__all__ = ["KpiStore", "Scope"]


class KpiStore:
    """The KPI history, machine statuses and stop log in DuckDB, at `path` (a file, or
    ":memory:"); `plant` names the configured machines and their reason trees."""

    def __init__(self, path: str | Path, plant: PlantConfig) -> None:
        self.plant = plant
        self._db = Database(path)
        try:
            self.history = KpiHistory(self._db)
            self.stops = StopLog(self._db, plant)
            self.status = StatusStore(self._db, plant, self.stops)
            self.spc = SpcPoints(self._db)
        except BaseException:
            self._db.close()
            raise

    def check(self) -> None:
        """Raise (a `duckdb.Error`) unless the database can be queried; for readiness."""
        self.status.latest_event_time()

    def close(self) -> None:
        """Close the database (DuckDB checkpoints its WAL into the file)."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
