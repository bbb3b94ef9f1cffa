"""The KPI API over the core's own records, for tests of what it computes from them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.unit.kpi.core.support import run


@contextmanager
def store_over_core(
    folder: Path,
    plant: PlantConfig,
    events: list[dict[str, Any]],
    statuses: Iterable[Mapping[str, Any]] = (),
) -> Iterator[KpiStore]:
    """`events` run through the core in one batch (then flushed), its final records and
    `statuses` (for the stop log) stored in DuckDB under `folder`."""
    _, outputs, _ = run(plant, [events])
    # By line too: `run`'s finals are keyed by machine, where every line record is None.
    finals = {
        (r["line"], r["machine"], r["window"], r["window_start"]): r
        for output in outputs
        for r in output.records
        if r["final"]
    }
    with KpiStore(folder / "kpi.duckdb", plant) as store:
        store.history.upsert(list(finals.values()))
        if statuses:
            store.status.upsert(list(statuses))
        yield store


@contextmanager
def api_over_core(
    folder: Path,
    plant: PlantConfig,
    events: list[dict[str, Any]],
    statuses: Iterable[Mapping[str, Any]] = (),
) -> Iterator[TestClient]:
    """`store_over_core`'s store, the API serving it (in the test's thread)."""
    with (
        store_over_core(folder, plant, events, statuses) as store,
        TestClient(create_app(plant, store, CollectorRegistry())) as client,
    ):
        yield client
