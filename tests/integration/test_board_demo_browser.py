"""The live board of `linepulse demo` as a new user first sees it, in headless Chromium.

`linepulse demo` runs as a child process on free ports (in tmp_path, so that whatever it
writes stays there). A minute after it is ready, every line must show a plausible OEE
(between 0.3 and 1) resting on data (coverage >= 0.9: the demo generates the shift's
history before it goes live), and at most 5 alerts may be open. The board's screenshots
in docs/ (desktop 1440x900, TV 1920x1080, phone 390x844) are taken here, from the demo,
once the board is filled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from linepulse.runtime import free_loopback_ports
from tests.cli_command import LINEPULSE
from tests.integration.test_board_browser import INSTALL_HINT, WAIT_MS, launch

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs"
SHOTS = {"desktop": (1440, 900), "tv": (1920, 1080), "phone": (390, 844)}
READY_TIMEOUT_S = 180.0  # the demo generates two shifts of history before it is ready
SETTLE_S = 60.0  # "a minute after start": how long the plant runs live before the checks
STOP_TIMEOUT_S = 30.0
OEE_RANGE = (0.3, 1.0)
MIN_COVERAGE = 0.9
MAX_OPEN_ALERTS = 5


def start_demo(tmp_path: Path, port: int, alerts_port: int) -> subprocess.Popen[bytes]:
    command = [*LINEPULSE, "demo"]
    command += ["--port", str(port), "--alerts-port", str(alerts_port)]
    with (tmp_path / "demo.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(  # noqa: S603 - our own CLI
            command,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_ready(demo: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert demo.poll() is None, f"the demo exited ({demo.returncode}):\n{log.read_text()}"
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the demo was not ready within {READY_TIMEOUT_S:g} s:\n{log.read_text()}")


def line_problems(snapshot: dict[str, Any]) -> list[str]:
    """What is not yet plausible about each line's shift KPIs."""
    problems = []
    for line in snapshot["lines"]:
        kpis = line["kpis"] or {}
        oee, coverage = kpis.get("oee"), kpis.get("coverage")
        if oee is None or not OEE_RANGE[0] <= oee <= OEE_RANGE[1]:
            problems.append(f"{line['line']}: OEE {oee}")
        if coverage is None or coverage < MIN_COVERAGE:
            problems.append(f"{line['line']}: coverage {coverage}")
    return problems


def open_alerts(alerts_url: str) -> list[dict[str, Any]]:
    body = httpx.get(alerts_url + "/v1/alerts", timeout=5).json()
    items = body if isinstance(body, list) else body.get("items", [])
    return [a for a in items if a.get("state") in ("firing", "acknowledged")]


def euros(text: str) -> float:
    """The amount in "€1,234,567" (the board's money)."""
    return float(text.strip().lstrip("€").replace(",", ""))


def check_month(page: Any, url: str, expect: Any) -> None:
    """The month against its budget, above the lines, as GET /v1/costs/budget gives it:
    the demo plant prices its losses and budgets the month (linepulse/demo/plant.yaml)."""
    answer = httpx.get(url + "/v1/costs/budget", timeout=10)
    assert answer.status_code == 200, answer.text
    month = answer.json()
    assert month["cost"] > 0, month
    assert month["projected"] is not None, month
    strip = page.locator("#month")
    cost = strip.locator("[data-month-cost]")
    expect(cost).not_to_be_empty(timeout=WAIT_MS)
    # The plant runs on between the page's fetch and this one: the cost only grows.
    shown = euros(cost.inner_text())
    assert month["cost"] * 0.95 <= shown <= month["cost"] * 1.001, (shown, month)
    expect(strip).to_contain_text(f"of €{round(month['budget']):,} budget")
    text = strip.inner_text()
    projected = euros(text.split("projected ")[1].split(" by month end")[0])
    verdict = strip.locator("[data-month-on-track]").inner_text()
    assert verdict == ("within budget" if projected <= month["budget"] else "over budget"), text


def test_demo_board_is_plausible_and_screenshots(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    port, alerts_port = free_loopback_ports(2)
    url, alerts_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{alerts_port}"
    demo = start_demo(tmp_path, port, alerts_port)
    try:
        wait_ready(demo, url, tmp_path / "demo.log")
        # Ready means a running plant: every line shows the shift under way (the demo's
        # shifts run around the clock), not the one before it, closed.
        first = httpx.get(url + "/v1/board/snapshot", timeout=10).json()
        shown = {line["line"]: (line["shift"], line["final"]) for line in first["lines"]}
        assert all(final is False for _, final in shown.values()), shown
        # The first minute live: stop as soon as every line is plausible, else report
        # what is not after SETTLE_S.
        settled = time.monotonic() + SETTLE_S
        problems = ["no snapshot yet"]
        while time.monotonic() < settled:
            problems = line_problems(httpx.get(url + "/v1/board/snapshot", timeout=10).json())
            if not problems:
                break
            time.sleep(1)
        alerts = open_alerts(alerts_url)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                for name, (width, height) in SHOTS.items():
                    page = browser.new_page(viewport={"width": width, "height": height})
                    page.goto(url + "/")
                    for line in ("line-1", "line-2", "line-3"):
                        expect(
                            page.locator(f'[data-kpi="oee"][data-line="{line}"]')
                        ).not_to_be_empty(timeout=WAIT_MS)
                    expect(page.locator("#conn")).to_have_text("live", timeout=WAIT_MS)
                    if alerts:
                        expect(page.locator(".alert-group").first).to_be_visible(timeout=WAIT_MS)
                    check_month(page, url, expect)
                    width_now = page.evaluate("document.scrollingElement.scrollWidth")
                    assert width_now <= width, (name, width_now)
                    page.screenshot(path=str(DOCS / f"board-{name}.png"), full_page=name == "phone")
                    page.close()
            finally:
                browser.close()
        assert problems == [], f"a minute after start: {problems}"
        summaries = [a.get("summary") for a in alerts]
        assert len(alerts) <= MAX_OPEN_ALERTS, f"{len(alerts)} alerts open: {summaries}"
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
