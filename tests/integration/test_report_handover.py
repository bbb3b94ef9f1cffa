"""The shift report as the KPI API serves it carries the shift's notes and alerts, asked of
the alerts API over real HTTP (`--alerts-url`, `GET /v1/handover`): what the mailed report
has, also in the browser and for `linepulse report` (issue 20). Both APIs are real: the
alerts API on a loopback port (uvicorn), its store on disk; the KPI API over the classic
example's records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from linepulse.runtime import free_loopback_ports
from services.alerts.api import create_app as create_alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.notes import ShiftNotes
from services.alerts.store import AlertStore
from services.kpi.api import create_app
from tests.integration.test_board_browser import Served, machine_down_alerts
from tests.unit.kpi.served import store_over_core
from tests.unit.kpi.test_shift_report import URL, classic, events, statuses

DAY = date(2026, 11, 2)  # the classic example's early shift: 06:00-14:00 UTC
SHIFT_END_S = datetime(2026, 11, 2, 14, tzinfo=UTC).timestamp()


def ms(hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 11, 2, hour, minute, tzinfo=UTC).timestamp() * 1000)


def plant() -> PlantConfig:
    """The classic plant with a rule that pages when filler-1 goes down."""
    return classic(alerts=machine_down_alerts())


@contextmanager
def alerts_api(folder: Path, config: PlantConfig, clock: Callable[[], float]) -> Iterator[str]:
    """The alerts API's URL while it serves the early shift's handover: filler-1 went
    down at 07:00 (paged, acknowledged by Ann at 07:04, resolved at 07:20), and Bob wrote
    a note."""

    def make_app() -> Any:
        engine = AlertEngine(config, AlertStore.in_dir(folder))
        engine.observe_samples([(ms(7), "filler-1", "state", None, "down")], ms(7))
        engine.evaluate(ms(7))
        (fired,) = engine.alerts(line="line-1")
        engine.ack(fired.fingerprint, "ann", None, ms(7, 4))
        engine.observe_samples([(ms(7, 20), "filler-1", "state", None, "running")], ms(7, 20))
        engine.evaluate(ms(7, 20))
        notes = ShiftNotes(engine.store, engine.duty.calendar)
        notes.add("line-1", "nozzle 3 drips <again>\nspare ordered", "bob", ms(13), DAY, "early")
        return create_alerts_app(engine, CollectorRegistry(), "token", clock=clock)

    served = Served(make_app)
    served.start()
    try:
        yield served.url
    finally:
        assert served.stop()


@contextmanager
def kpi_api(folder: Path, config: PlantConfig, alerts_url: str) -> Iterator[TestClient]:
    with (
        store_over_core(folder, config, events(), statuses(events())) as store,
        TestClient(create_app(config, store, CollectorRegistry(), alerts_url=alerts_url)) as client,
    ):
        yield client


def test_the_report_carries_the_shifts_notes_and_alerts(tmp_path: Path) -> None:
    config = plant()
    an_hour_after = lambda: SHIFT_END_S + 3600  # noqa: E731 - the alerts API's clock
    with (
        alerts_api(tmp_path / "alerts", config, an_hour_after) as alerts_url,
        kpi_api(tmp_path, config, alerts_url) as client,
    ):
        report = client.get(URL).json()
        assert report["kpis"]["oee"] is not None  # the report itself, as without them
        assert [(n["by"], n["text"]) for n in report["notes"]] == [
            ("bob", "nozzle 3 drips <again>\nspare ordered")
        ]
        raised = report["alerts"]
        assert (raised["raised"], raised["acknowledged"], raised["resolved"]) == (1, 1, 1)
        assert raised["mean_time_to_ack_s"] == 240.0
        (alert,) = raised["list"]
        assert (alert["summary"], alert["acked_by"]) == ("filler-1 is down", "ann")
        assert report["alerts_complete"] is True
        assert "handover_error" not in report

        page = client.get(URL + "&format=html").text
        assert "nozzle 3 drips &lt;again&gt;<br>spare ordered" in page
        assert "1 raised, 1 acknowledged (mean 4 min), 1 resolved" in page
        assert "no longer kept" not in page

        # The mailed report asks without them (the alerts service adds its own).
        bare = client.get(URL + "&handover=false").json()
        assert "notes" not in bare
        assert "alerts" not in bare
        assert "Notes" not in client.get(URL + "&format=html&handover=false").text


def test_a_shift_older_than_the_alerts_kept_says_some_may_be_missing(tmp_path: Path) -> None:
    config = plant()
    two_days_after = lambda: SHIFT_END_S + 2 * 86400  # noqa: E731
    with (
        alerts_api(tmp_path / "alerts", config, two_days_after) as alerts_url,
        kpi_api(tmp_path, config, alerts_url) as client,
    ):
        report = client.get(URL).json()
        assert report["alerts_complete"] is False
        page = client.get(URL + "&format=html").text
        assert "Alerts resolved more than 24 h ago are no longer kept" in page


def test_without_an_answering_alerts_api_the_report_says_why(tmp_path: Path) -> None:
    (port,) = free_loopback_ports(1)  # nothing listens there
    silent = f"http://127.0.0.1:{port}"
    with kpi_api(tmp_path, plant(), silent) as client:
        answer = client.get(URL)
        assert answer.status_code == 200
        report = answer.json()
        assert report["handover_error"].startswith(f"the alerts API at {silent} did not answer")
        assert "notes" not in report
        page = client.get(URL + "&format=html").text
        assert f"Not shown: the alerts API at {silent} did not answer" in page
