"""The materializer keeps following the kpi topic past a record the store refuses."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from linepulse.config import KafkaSettings
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from tests.unit.kpi.test_store import plant_config, record


def test_a_refused_record_is_skipped_and_the_rest_of_the_batch_kept(tmp_path: Path) -> None:
    with KpiStore(tmp_path / "kpi.duckdb", plant_config()) as store:
        materializer = Materializer(
            KafkaSettings(), "127.0.0.1:1", store, KpiMetrics.create(CollectorRegistry())
        )
        good = record()
        bad = {**record(), "window": "fortnight"}
        kept = materializer._upsert([good, bad])
        assert kept == [good]
        assert materializer.bad == 1
        assert len(store.history.history(start=_start(good))) == 1


def _start(r: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(r["window_start"]))
