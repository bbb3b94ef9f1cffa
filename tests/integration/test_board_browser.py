"""The live board in headless Chromium (Debian's `chromium`, driven by Playwright) over real
HTTP: the KPI API (uvicorn, DuckDB on tmp_path) and the alerts API, each on a loopback port.

The page must fill its OEE tiles, follow the store as records arrive, acknowledge an alert
through the alerts API with a token it asks for once, and let the server shut down while it
is still watching. The screenshot is the README's (docs/board.png, 1280x800, full page).
Nothing is skipped: without Chromium or Playwright the test fails with an install hint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
from linepulse.runtime import QuietServer, free_loopback_ports
from services.alerts.api import create_app as create_alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.metrics import AlertMetrics
from services.alerts.store import AlertStore
from services.kpi.api import create_app
from services.kpi.board.board import Board
from services.kpi.store import KpiStore

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = (
    "the live board test needs Debian's Chromium and Playwright: "
    "`apt-get install -y chromium` and `pip install playwright` (no `playwright install`: "
    f"the test drives {CHROMIUM}); CI installs both, see .ci/run"
)
SCREENSHOT = Path(__file__).parents[2] / "docs" / "board.png"
TOKEN = "board-test-token"
WAIT_MS = 15_000  # how long Playwright waits for the page to show something
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0

LINES = {
    "press": ["press-1", "press-2", "press-3"],
    "weld": ["weld-1", "weld-2", "weld-3", "weld-4"],
    "pack": ["filler", "capper", "labeler"],
}
STATES = {
    "press-1": "running",
    "press-2": "down",
    "press-3": "running",
    "weld-1": "running",
    "weld-2": "changeover",
    "weld-3": "idle",
    "weld-4": "running",
    "filler": "running",
    "capper": "planned_stop",
    "labeler": "running",
}
# Line OEE of the shift at first, then after "newer records" arrive.
OEE = {"press": 0.5, "weld": 0.72, "pack": 0.865}
OEE_LATER = 0.625


def plant_config() -> PlantConfig:
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "UTC",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00", "lead": "ann"}],
            "lines": [
                {"id": line, "machines": [{"id": m} for m in machines]}
                for line, machines in LINES.items()
            ],
            "alerts": {
                "channels": [{"id": "log", "type": "console"}],
                "people": {"ann": {"name": "Ann", "channels": ["log"]}},
                "group_wait": 0,
                "rules": [
                    {
                        "name": "machine-down",
                        "signal": "state",
                        "op": "==",
                        "value": "down",
                        "severity": "critical",
                        "summary": "{machine} is down",
                    }
                ],
            },
        }
    )


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def kpi_record(
    line: str,
    machine: str | None,
    window: str,
    start: datetime,
    length: timedelta,
    oee: float,
    *,
    final: bool = False,
    revision: int = 0,
    reasons: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A KPI record whose A, P, Q multiply to `oee` (Q 0.98, P 0.95, A the rest)."""
    quality, performance = 0.98, 0.95
    availability = min(1.0, oee / (quality * performance))
    planned = length.total_seconds()
    total = 2000
    return {
        "site": "plant-a",
        "line": line,
        "machine": machine,
        "window": window,
        "window_start": iso(start),
        "window_end": iso(start + length),
        "shift": "early" if window == "shift" else None,
        "planned_s": planned,
        "run_s": planned * availability,
        "downtime_s": planned * (1 - availability),
        "unknown_s": 0.0,
        "stops": 3,
        "total_count": total,
        "good_count": round(total * quality),
        "reject_count": total - round(total * quality),
        "availability": availability,
        "performance": performance,
        "quality": quality,
        "oee": oee,
        "mtbf_s": 1200.0,
        "mttr_s": 240.0,
        "downtime_by_reason": reasons or {},
        "final": final,
        "revision": revision,
    }


def fill(store: KpiStore, now: datetime) -> datetime:
    """A shift that began 3 h before the last full hour: shift records, 15m trend points,
    closed downtime per machine, and machine states. Returns the shift start."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=3)
    shift, quarter = timedelta(hours=8), timedelta(minutes=15)
    quarters = int((now - start) / quarter)
    reasons = ["jam", "material", "electrical", "tool change", "no operator"]
    records = []
    for n, (line, machines) in enumerate(LINES.items()):
        records.append(kpi_record(line, None, "shift", start, shift, OEE[line]))
        for i in range(quarters):
            wave = 0.08 * ((i * (n + 2)) % 5 - 2) / 2
            records.append(
                kpi_record(line, None, "15m", start + i * quarter, quarter, OEE[line] + wave)
            )
        for k, machine in enumerate(machines):
            records.append(kpi_record(line, machine, "shift", start, shift, OEE[line] - 0.03 * k))
            for i in range(quarters - 1):
                lost = {reasons[(i + k + n) % 5]: 60.0 * ((i + k) % 4 + 1)}
                records.append(
                    kpi_record(
                        line,
                        machine,
                        "15m",
                        start + i * quarter,
                        quarter,
                        0.7,
                        final=True,
                        reasons=lost,
                    )
                )
    store.upsert(records)
    store.upsert_status(
        [
            {
                "machine": machine,
                "state": STATES[machine],
                "since": iso(now - timedelta(minutes=7 + 11 * i)),
                "last_seen": iso(now),
            }
            for i, machine in enumerate(STATES)
        ]
    )
    return start


class Served:
    """A uvicorn server on a free loopback port, in a thread of its own; the app is built by
    `make_app` in that thread (the alert store's SQLite connection must stay in it)."""

    def __init__(self, make_app: Callable[[], FastAPI]) -> None:
        (self.port,) = free_loopback_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.make_app = make_app
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}")

    def _run(self) -> None:
        config = uvicorn.Config(
            self.make_app(), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = QuietServer(config)
        self.server.run()

    @property
    def should_exit(self) -> bool:
        return self.server is not None and self.server.should_exit

    def start(self) -> None:
        self.thread.start()
        deadline = threading.Event()
        timer = threading.Timer(START_TIMEOUT_S, deadline.set)
        timer.start()
        try:
            while self.server is None or not self.server.started:
                assert self.thread.is_alive(), f"uvicorn on {self.url} exited while starting"
                assert not deadline.wait(0.05), f"uvicorn on {self.url} did not start"
        finally:
            timer.cancel()

    def stop(self) -> bool:
        """Ask the server to exit; True if it did within STOP_TIMEOUT_S."""
        assert self.server is not None, f"uvicorn on {self.url} was never started"
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        return not self.thread.is_alive()


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def kpi_store(tmp_path: Path, plant: PlantConfig) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as store:
        yield store


@pytest.fixture
def alerts(tmp_path: Path, plant: PlantConfig) -> Iterator[Served]:
    """The alerts API with one firing alert (press-2 is down), CORS open to the board."""

    def make_app() -> FastAPI:
        engine = AlertEngine(plant, AlertStore.in_dir(tmp_path / "alerts"))
        now = int(datetime.now(UTC).timestamp() * 1000)
        engine.observe_samples([(now, "press-2", "state", None, "down")], now)
        engine.evaluate(now)
        registry = CollectorRegistry()
        AlertMetrics.create(registry)
        app = create_alerts_app(engine, registry, TOKEN)
        # The change the alerts service needs for a board on another origin (see the
        # report): the page reads /v1/alerts and posts acks with a bearer token (preflight).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
        return app

    served = Served(make_app)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def launch(playwright: Any) -> Any:
    try:
        return playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
    except Exception as error:
        pytest.fail(f"{INSTALL_HINT}\n(launch failed: {error})", pytrace=False)


def test_board_fills_updates_acks_and_lets_the_server_stop(
    plant: PlantConfig, kpi_store: KpiStore, alerts: Served
) -> None:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    alerts_served = alerts
    shift_start = fill(kpi_store, datetime.now(UTC))
    app = create_app(plant, kpi_store, CollectorRegistry(), alerts_url=alerts_served.url)
    kpi = Served(lambda: app)
    board: Board = app.state.board
    board.stop_when(lambda: kpi.should_exit)  # as `main` wires it to its uvicorn.Server
    kpi.start()
    stopped = False
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(kpi.url + "/")

                # The tiles fill from the event stream.
                oee = page.locator('[data-kpi="oee"][data-line="press"]')
                expect(oee).to_have_text("50.0 %", timeout=WAIT_MS)
                expect(page.locator('[data-kpi="oee"][data-line="pack"]')).to_have_text(
                    "86.5 %", timeout=WAIT_MS
                )
                expect(page.locator('[data-kpi="quality"][data-line="weld"]')).to_have_text(
                    "98.0 %"
                )
                expect(page.locator("#conn")).to_have_text("live")
                expect(page.locator('[data-machine="press-2"]')).to_have_attribute(
                    "data-state", "down"
                )
                assert page.locator('[data-pareto="press"] .bar').count() == 5
                assert page.locator('[data-trend="press"] polyline').count() == 1

                # Newer records in the store: the tile follows without a reload.
                kpi_store.upsert(
                    [
                        kpi_record(
                            "press",
                            None,
                            "shift",
                            shift_start,
                            timedelta(hours=8),
                            OEE_LATER,
                            revision=1,
                        )
                    ]
                )
                expect(oee).to_have_text("62.5 %", timeout=WAIT_MS)

                # Ack: the board asks for name and token once, then calls the alerts API.
                alert = page.locator('.alert[data-state="firing"]')
                expect(alert).to_have_count(1, timeout=WAIT_MS)
                expect(alert).to_contain_text("press-2 is down")
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                alert.locator("button.ack").click()
                expect(page.locator("#auth")).to_be_visible()
                page.fill("#auth-who", "Anna")
                page.fill("#auth-token", TOKEN)
                page.click("#auth-save")
                acked = page.locator('.alert[data-state="acknowledged"]')
                expect(acked).to_contain_text("acknowledged by Anna", timeout=WAIT_MS)
                stored = page.evaluate("sessionStorage.getItem('linepulse.alerts.token')")
                assert stored == TOKEN

                [served_alert] = httpx.get(f"{alerts_served.url}/v1/alerts").json()
                assert served_alert["state"] == "acknowledged"
                assert served_alert["acked_by"] == "Anna"
                assert errors == []

                # The page still holds its event stream open: shutdown must not wait on it.
                stopped = kpi.stop()
                assert stopped, "the KPI API did not stop while the board was open"
            finally:
                browser.close()
    finally:
        if not stopped:
            kpi.stop()
