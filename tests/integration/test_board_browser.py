"""The live board in headless Chromium (Debian's `chromium`, driven by Playwright) over real
HTTP: the KPI API (uvicorn, DuckDB on tmp_path) and the alerts API, each on a loopback port.

The page must fill its OEE tiles, show the shift's losses waterfall, bottleneck, constraint
OEE and output forecast, follow the store as records arrive, let an operator code a stop's
reason, acknowledge an alert through the alerts API with a token it asks for once, and let
the server shut down while it is still watching. The screenshot is the README's
(docs/board.png, 1280x800, full page). Nothing is skipped: without Chromium or Playwright
the test fails with an install hint.

Reason coding runs against the app's own stops API: the stops come from the machine
statuses stored here (services/kpi/stops.py), the reason tree from the plant config, and a
correction goes to an in-process broker (linepulse.bus) as the telemetry event the KPI
core would restate from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.bus.memory import InProcessBroker, InProcessClients
from linepulse.config import PlantConfig, parse_config
from linepulse.costs import Pricing
from linepulse.http.settings import ApiAccess
from linepulse.production import LOSS_KEYS
from linepulse.records import RECORD_FIELDS
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
API_TOKEN = "board-kpi-api-token"
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
# Beyond OEE, per line record of the shift: bottleneck (stop seconds), constraint, and
# output so far, projected and target (pack has no target, and no losses: no ideal time).
BOTTLENECK = {"press": ("press-2", 1380.0), "weld": ("weld-2", 3060.0), "pack": (None, None)}
CONSTRAINT = {"press": "press-3", "weld": "weld-1", "pack": "filler"}
FORECAST = {
    "press": (1960, 3100.0, 4000),
    "weld": (1960, 3400.0, 3000),
    "pack": (1960, 5200.0, None),
}
# The site's reason tree; FREE_TEXT's machine has none (the board asks for free text).
REASONS = [
    {"name": "mechanical", "codes": ["jam", "tool change"]},
    {"name": "organisational", "codes": ["material", "no operator"]},
    {"name": "planned", "planned": True, "codes": ["cleaning", "meeting"]},
]
FREE_TEXT = "weld-3"
# Earlier statuses, before those of STATES (minutes ago, state, machine's reason): each
# downtime state is a stop. press-1's first is too old to restate (horizon 2 h).
HISTORY: dict[str, list[tuple[int, str, str | None]]] = {
    "press-1": [
        (170, "down", None),
        (167, "running", None),
        (50, "idle", None),
        (46, "running", None),
    ],
    "press-3": [(70, "down", "jam"), (64, "running", None)],
}
# How the time lost (planned - fully productive) splits into the six big losses and the
# time without data (the record's unknown_s).
LOSS_SPLIT = dict(zip(LOSS_KEYS, (0.35, 0.15, 0.1, 0.2, 0.05, 0.1, 0.05), strict=True))
# A machine silent for 38 % of its shift so far: its card says how much has data.
SILENT = "press-3"
TREND_DAYS = 14  # days of press's day records before today's
SILENT_SHARE = 0.38


def machine_down_alerts(summary: str = "{machine} is down") -> dict[str, Any]:
    """An alerts section that pages Ann (on the console) as soon as a machine is down."""
    return {
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
                "summary": summary,
            }
        ],
    }


def plant_config() -> PlantConfig:
    return parse_config(
        {
            "site": "plant-a",
            "timezone": "UTC",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00", "lead": "ann"}],
            # Corrections reach back 2 h (+ lateness) behind the latest event.
            "kpi": {"restate_horizon_s": 7200},
            # Money beside the time: a minute lost costs 10, a part 0.5 (docs/costs.md).
            "costs": {"currency": "EUR", "downtime_minute_cost": 10, "good_part_value": 0.5},
            "reasons": REASONS,
            "lines": [
                {
                    "id": line,
                    "machines": [
                        {"id": m, "reasons": []} if m == FREE_TEXT else {"id": m} for m in machines
                    ],
                }
                for line, machines in LINES.items()
            ],
            "alerts": machine_down_alerts(),
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
    losses: bool = False,
    **beyond: Any,
) -> dict[str, Any]:
    """A KPI record whose A, P, Q multiply to `oee` (Q 0.98, P 0.95, A the rest); with
    `losses`, the six big losses, the time without data (also its unknown_s) and the fully
    productive time (oee x planned) that sum to planned time; `beyond`: other fields of
    the contract (all others null or empty). Coverage follows from unknown_s."""
    quality, performance = 0.98, 0.95
    availability = min(1.0, oee / (quality * performance))
    planned = length.total_seconds()
    total = 2000
    out: dict[str, Any] = {
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
        "calendar_s": planned,
        "down_s": planned * (1 - availability),
        "idle_s": 0.0,
        "setup_s": 0.0,
        "small_stops": 0,
        "small_stop_s": 0.0,
        "failures": 3,
        "by_product": {},
    }
    if losses:
        productive = oee * planned
        out["fully_productive_s"] = productive
        out["losses"] = {k: share * (planned - productive) for k, share in LOSS_SPLIT.items()}
        out["unknown_s"] = out["losses"]["no_data_s"]
    out.update(beyond)
    out.setdefault("coverage", (planned - out["unknown_s"]) / planned if planned else None)
    for field in RECORD_FIELDS:  # the rest of the contract, whatever it holds by now
        out.setdefault(field, None)
    return out


def line_shift(line: str, start: datetime, oee: float, *, revision: int = 0) -> dict[str, Any]:
    """The line's shift record, with bottleneck, constraint, forecast and losses."""
    bottleneck, bottleneck_s = BOTTLENECK[line]
    output, projected, target = FORECAST[line]
    return kpi_record(
        line,
        None,
        "shift",
        start,
        timedelta(hours=8),
        oee,
        revision=revision,
        losses=line != "pack",
        bottleneck=bottleneck,
        bottleneck_s=bottleneck_s,
        constraint=CONSTRAINT[line],
        oee_constraint=round(oee - 0.06, 3),
        output_count=output,
        projected_count=projected,
        target_count=target,
    )


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
        records.append(line_shift(line, start, OEE[line]))
        for i in range(quarters):
            wave = 0.08 * ((i * (n + 2)) % 5 - 2) / 2
            records.append(
                kpi_record(line, None, "15m", start + i * quarter, quarter, OEE[line] + wave)
            )
        for k, machine in enumerate(machines):
            silent_s = SILENT_SHARE * shift.total_seconds() if machine == SILENT else 0.0
            records.append(
                kpi_record(
                    line,
                    machine,
                    "shift",
                    start,
                    shift,
                    OEE[line] - 0.03 * k,
                    unknown_s=silent_s,
                    losses=line == "press",  # priced: the press card shows money
                )
            )
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
    # Two weeks and a day of press's day records (the last one open): the weeks panel.
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for ago in range(TREND_DAYS, -1, -1):
        oee = 0.55 + 0.01 * ((TREND_DAYS - ago) % 7) + (0.05 if ago < 7 else 0.0)
        day = kpi_record(
            "press", None, "day", today - timedelta(days=ago), timedelta(days=1), oee,
            final=ago > 0, losses=True, output_count=20_000 + 500 * (ago % 5),
        )  # fmt: skip
        records.append(day)
    store.history.upsert(records)
    store.status.upsert(
        [
            {
                "machine": machine,
                "state": state,
                "reason": reason,
                "since": iso(now - timedelta(minutes=ago)),
                "last_seen": iso(now - timedelta(minutes=ago)),
            }
            for machine, history in HISTORY.items()
            for ago, state, reason in history
        ]
    )
    store.status.upsert(
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

    def down(engine: AlertEngine, now: int) -> None:
        engine.observe_samples([(now, "press-2", "state", None, "down")], now)

    with alerts_api(plant, tmp_path / "alerts", down, TOKEN) as served:
        yield served


@contextmanager
def alerts_api(
    plant: PlantConfig,
    folder: Path,
    prepare: Callable[[AlertEngine, int], None],
    token: str = TOKEN,
) -> Iterator[Served]:
    """The alerts API over `plant` on a loopback port, its engine given `prepare(engine,
    now_ms)` and evaluated once, writes with `token`. CORS is open to the board, the
    change the alerts service needs for a board on another origin: the page reads
    /v1/alerts and posts acks and notes with a bearer token (preflight)."""

    def make_app() -> FastAPI:
        engine = AlertEngine(plant, AlertStore.in_dir(folder))
        now = int(datetime.now(UTC).timestamp() * 1000)
        prepare(engine, now)
        engine.evaluate(now)
        registry = CollectorRegistry()
        AlertMetrics.create(registry)
        app = create_alerts_app(engine, registry, token)
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


@contextmanager
def board_page(url: str, width: int = 1280, height: int = 800) -> Iterator[tuple[Any, list[str]]]:
    """The board at `url` in a Chromium page of that size, and the page's script errors."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            yield page, errors
        finally:
            browser.close()


def launch(playwright: Any) -> Any:
    try:
        return playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
    except Exception as error:
        pytest.fail(f"{INSTALL_HINT}\n(launch failed: {error})", pytrace=False)


def stop_ts(now: datetime, ago_min: int) -> int:
    """Epoch ms of a status `ago_min` minutes before `now` (a stop's start)."""
    return int((now - timedelta(minutes=ago_min)).timestamp()) * 1000


def code_reasons(page: Any, now: datetime) -> None:
    """Code stops on the board: a reason from the machine's tree, a refusal shown as the
    API words it, free text where a machine has no tree, the name remembered."""
    from playwright.sync_api import expect

    press = page.locator('[data-stops="press"]')
    # press-2 down now, press-1 idle 50 min ago and down 170 min ago; press-3's has a code.
    expect(press.locator(".stop")).to_have_count(3, timeout=WAIT_MS)
    item = press.locator(f'[data-stop="press-2@{stop_ts(now, 18)}"]')
    expect(item.locator(".reason")).to_have_text("no reason")
    expect(item.locator("select.code option")).to_have_count(7)  # "reason…" and 6 codes
    item.locator("select.code").select_option("jam")
    item.locator("button.set").click()
    expect(item.locator(".msg")).to_have_text("enter your name (by) first")
    press.locator("input.who").fill("Anna")
    item.locator("button.set").click()
    # Coding is a write: the KPI API answers 401 and the board asks for its token; a
    # wrong one is refused and asked again, the right one is kept for the tab.
    dialog = page.locator("#api-auth")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#api-auth-error")).to_be_hidden()
    page.fill("#api-auth-token", "not-the-token")
    page.click("#api-auth-save")
    expect(page.locator("#api-auth-error")).to_contain_text("refused", timeout=WAIT_MS)
    page.fill("#api-auth-token", API_TOKEN)
    page.click("#api-auth-save")
    expect(dialog).to_be_hidden()
    expect(item.locator(".reason")).to_have_text("jam", timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.getItem('linepulse.api.token')") == API_TOKEN
    expect(item).to_have_attribute("data-reason", "jam")
    expect(item.locator(".msg")).to_have_text("coded by Anna")
    assert page.evaluate("localStorage.getItem('linepulse.stops.who')") == "Anna"

    old = press.locator(f'[data-stop="press-1@{stop_ts(now, 170)}"]')
    old.locator("select.code").select_option("material")
    old.locator("button.set").click()
    expect(old.locator(".msg")).to_contain_text("too old to restate", timeout=WAIT_MS)
    expect(old.locator(".reason")).to_have_text("no reason")

    weld = page.locator('[data-stops="weld"]')
    expect(weld.locator("input.who")).to_have_value("Anna")
    # weld-2's ongoing changeover is downtime, but not a stop to code; weld-3's idle is.
    expect(weld.locator(f'[data-stop-machine="{FREE_TEXT}"]')).to_have_count(1)
    expect(weld.locator('[data-stop-machine="weld-2"]')).to_have_count(0)
    free = weld.locator(f'[data-stop-machine="{FREE_TEXT}"]')
    free.locator("input.code").fill("sensor fault")
    free.locator("button.set").click()
    expect(free.locator(".reason")).to_have_text("sensor fault", timeout=WAIT_MS)
    expect(page.locator("#api-auth")).to_be_hidden()  # asked once: the token was kept

    # All recent stops, coded or not.
    page.click('[data-stops-toggle="press"]')
    expect(press.locator(".stop")).to_have_count(4)
    expect(press.locator(f'[data-stop="press-3@{stop_ts(now, 70)}"]')).to_have_attribute(
        "data-reason", "jam"
    )
    page.click('[data-stops-toggle="press"]')
    expect(press.locator(".stop")).to_have_count(3)  # press-2's stays a while after coding


def test_board_fills_updates_acks_and_lets_the_server_stop(
    plant: PlantConfig, kpi_store: KpiStore, alerts: Served
) -> None:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    alerts_served = alerts
    now = datetime.now(UTC).replace(microsecond=0)
    shift_start = fill(kpi_store, now)
    # Where reason corrections go: a one-partition telemetry topic, made by the first send.
    broker = InProcessBroker(auto_create_partitions=1)
    app = create_app(
        plant,
        kpi_store,
        CollectorRegistry(),
        alerts_url=alerts_served.url,
        bootstrap="in-process",
        clients=InProcessClients(broker),
        access=ApiAccess(tokens=(SecretStr(API_TOKEN),)),
    )
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

                # Weeks: press's ISO weeks as /v1/trends gives them, OEE and change against
                # the week before; next week projected. Lines without day records: none.
                trend = httpx.get(kpi.url + "/v1/trends?line=press&weeks=4").json()
                weeks = page.locator('[data-weeks="press"] .week')
                expect(weeks).to_have_count(len(trend["weeks"]), timeout=WAIT_MS)
                assert len(trend["weeks"]) >= 3  # 15 days span 3 or 4 ISO weeks
                for week in trend["weeks"]:
                    shown = page.locator(f'[data-weeks="press"] [data-week-oee="{week["week"]}"]')
                    expect(shown).to_have_text(f"{round(week['oee'] * 1000) / 10:.1f} %")
                last = trend["weeks"][-1]
                delta = round(last["change"]["oee"] * 1000) / 10
                expect(weeks.last).to_contain_text(f"{delta:+.1f} pts" if delta else "0.0 pts")
                expect(weeks.last).to_contain_text(f"({last['days']} d so far)")
                projected = f"{round(trend['projection']['output_count']):,}"
                expect(page.locator('[data-weeks-next="press"]')).to_contain_text(projected)
                expect(page.locator('[data-weeks="pack"]')).to_be_hidden()

                # Beyond OEE: the losses waterfall from planned to fully productive time
                # (8 h planned, OEE 50 %: 4 h lost, 35 % of it to equipment failure, 5 %
                # without data: a grey step of its own, not inside equipment failure). A
                # line record sums its 3 machines' time: shares of planned time, and the
                # planned time per machine, never 8 h shown as if it were the shift's.
                fall = page.locator('[data-waterfall="press"]')
                expect(fall.locator(".step")).to_have_count(9)
                steps = fall.locator(".step").evaluate_all("(s) => s.map((e) => e.dataset.step)")
                assert steps == ["planned_s", *LOSS_KEYS, "fully_productive_s"]
                expect(fall.locator('[data-step="planned_s"] .secs')).to_have_text("2 h 40 min × 3")
                expect(fall.locator('[data-step="equipment_failure_s"] .secs')).to_contain_text(
                    "−17.5 %"  # and its money, below
                )
                expect(fall.locator('[data-step="equipment_failure_s"]')).to_have_attribute(
                    "title", "lost 1 h 24 min of machine time"
                )
                no_data = fall.locator('[data-step="no_data_s"]')
                expect(no_data.locator(".what")).to_have_text("No data")
                expect(no_data.locator(".secs")).to_have_text("−2.5 %")
                expect(no_data).to_have_attribute("data-kind", "nodata")
                grey = no_data.locator(".fill").evaluate(
                    "(e) => getComputedStyle(e).backgroundImage"
                )
                assert "rgb(108, 118, 134)" in grey, grey  # var(--grey)
                # Coverage below 100 %: on the silent machine's card (62 % of its shift has
                # data, amber below 80 %) and on the line headers; not where all is known.
                silent = page.locator(f'[data-coverage="{SILENT}"]')
                expect(silent).to_have_text("data 62 %")
                expect(silent).to_have_attribute("title", "share of planned time with data")
                expect(silent).to_have_class("coverage low")
                expect(page.locator("[data-coverage]")).to_have_count(1)
                expect(page.locator('[data-coverage-line="press"]')).to_have_text("data 97 %")
                expect(page.locator('[data-coverage-line="pack"]')).to_have_count(0)
                # Money beside the time: press's machines' shift losses at the rates.
                press = [
                    r
                    for r in kpi_store.history.current(line="press", window="shift")
                    if r["machine"] is not None
                ]
                pricing = Pricing(plant)
                priced = [p for p in (pricing.price(r) for r in press) if p is not None]
                assert len(priced) == len(LINES["press"])
                total = sum(p.total for p in priced)
                expect(page.locator('[data-money-total="press"]')).to_have_text(
                    f" · €{round(total):,}"
                )
                failure = sum(p.by_category["equipment_failure"] for p in priced)
                expect(fall.locator('[data-step="equipment_failure_s"] .secs')).to_contain_text(
                    f"€{round(failure):,}"
                )
                expect(page.locator('[data-money-total="pack"]')).to_have_count(0)
                productive = fall.locator('[data-step="fully_productive_s"] .secs')
                expect(productive).to_have_text("50.0 %")
                expect(page.locator('[data-waterfall="pack"]')).to_have_count(0)  # no losses
                # The bottleneck and the constraint's OEE beside the line's.
                expect(page.locator('[data-bottleneck="press"]')).to_contain_text("press-2")
                expect(page.locator('[data-bottleneck="press"]')).to_contain_text("23 min")
                expect(page.locator('[data-bottleneck="pack"]')).to_contain_text("none")
                expect(page.locator('[data-kpi="oee_constraint"][data-line="press"]')).to_have_text(
                    "44.0 %"
                )
                # The forecast: press will miss its target (red), weld will make it, pack
                # has no target.
                behind = page.locator('[data-forecast="press"]')
                expect(behind).to_have_attribute("data-on-track", "false")
                expect(behind.locator(".proj-text.behind")).to_have_text("projected 3,100")
                expect(behind).to_contain_text("target 4,000")
                expect(behind.locator(".target")).to_have_count(1)
                expect(page.locator('[data-forecast="weld"]')).to_have_attribute(
                    "data-on-track", "true"
                )
                expect(page.locator('[data-forecast="pack"]')).to_have_count(0)

                # Newer records in the store: the tile follows without a reload.
                kpi_store.history.upsert([line_shift("press", shift_start, OEE_LATER, revision=1)])
                expect(oee).to_have_text("62.5 %", timeout=WAIT_MS)
                expect(productive).to_have_text("62.5 %")

                code_reasons(page, now)
                # The two corrections went to the KPI core (the one refused did not).
                sent = [
                    orjson.loads(record.value or b"")
                    for record in broker.log(plant.kafka.telemetry.name, 0)
                ]
                assert [
                    (e["machine"], e["signal"], e["reason"], e["value"], e["source"], e["ts"])
                    for e in sent
                ] == [
                    ("press-2", "reason", "jam", 1, "operator:Anna", stop_ts(now, 18)),
                    ("weld-3", "reason", "sensor fault", 1, "operator:Anna", stop_ts(now, 62)),
                ]
                stored = {
                    s["machine"]: s for s in kpi_store.stops.query(unassigned=False, limit=10)
                }
                assert stored["press-2"]["corrected_by"] == "Anna"

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
