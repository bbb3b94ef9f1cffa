"""The classic example's KPI API over real HTTP: its records and stop log in DuckDB, served
by uvicorn on a loopback port, for tests of what asks it (the CLI, the report sender)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.integration.test_board_browser import Served
from tests.unit.kpi.served import store_over_core
from tests.unit.kpi.test_shift_report import events, statuses


@contextmanager
def classic_api(
    folder: Path,
    plant: PlantConfig,
    prepare: Callable[[KpiStore], None] | None = None,
    alerts_url: str | None = None,
) -> Iterator[str]:
    """The API's URL while it serves the classic example's day run through `plant`,
    guarded as its `api` section says (tokens read now); `prepare` adds to its store;
    `alerts_url` is the alerts API it asks for a shift's notes and alerts."""
    access = plant.api.resolve("api")
    with store_over_core(folder, plant, events(), statuses(events())) as store:
        if prepare is not None:
            prepare(store)
        served = Served(
            lambda: create_app(
                plant, store, CollectorRegistry(), access=access, alerts_url=alerts_url
            )
        )
        served.start()
        try:
            yield served.url
        finally:
            assert served.stop()
