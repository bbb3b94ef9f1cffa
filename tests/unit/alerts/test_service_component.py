"""The alerts service as a component: `open_alerts` closes the two SQLite files it opens
(the engine's store and the outbox), on a clean exit and on error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.http.settings import ApiAccess
from linepulse.runtime import HttpSettings
from services.alerts.service import AlertService, AlertsSettings, open_alerts
from services.app.demo import demo_plant


def settings(state: Path, http: HttpSettings | None = None) -> AlertsSettings:
    plant = demo_plant([4840, 4841], 1883)
    return AlertsSettings(plant, "in-process", state, http, ApiAccess())


def closed(database: sqlite3.Connection) -> bool:
    try:
        database.execute("select 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return True
    return False


async def test_open_alerts_closes_its_store_and_outbox(tmp_path: Path) -> None:
    clients = InProcessClients(InProcessBroker())
    async with open_alerts(settings(tmp_path), clients, CollectorRegistry()) as alerts:
        service = alerts.service
        assert not closed(service.store._db)
        assert not closed(service.outbox._db)
        assert [task.name for task in alerts.tasks] == [
            "alerts-kpi", "alerts-telemetry", "alerts-evaluate", "alerts-outbox",
            "alerts-shift-reports",
        ]  # fmt: skip
        assert alerts.served == ()  # no HTTP settings: no API
    assert closed(service.store._db)
    assert closed(service.outbox._db)


async def test_open_alerts_closes_its_files_on_error_too(tmp_path: Path) -> None:
    clients = InProcessClients(InProcessBroker())
    http = HttpSettings("127.0.0.1", 0)
    opened: list[AlertService] = []

    async def fail_inside() -> None:
        async with open_alerts(settings(tmp_path, http), clients, CollectorRegistry()) as alerts:
            opened.append(alerts.service)
            assert [served.name for served in alerts.served] == ["alerts-http"]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    (service,) = opened
    assert closed(service.store._db)
    assert closed(service.outbox._db)
