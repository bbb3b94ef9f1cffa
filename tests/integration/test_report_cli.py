"""`linepulse report` against a KPI API over real HTTP (uvicorn on a loopback port): the
shift report of the classic example as a file, and the API's refusal as an exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.cli_command import LINEPULSE
from tests.integration.test_board_browser import Served
from tests.unit.kpi.core.support import run
from tests.unit.kpi.test_shift_report import classic, events, statuses

pytestmark = pytest.mark.integration


def linepulse(*args: str) -> subprocess.CompletedProcess[str]:
    command = [*LINEPULSE, "report", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def test_report_writes_the_page_and_says_why_it_cannot(tmp_path: Path) -> None:
    plant = classic()
    finals, _, _ = run(plant, [events()])
    with KpiStore(tmp_path / "kpi.duckdb", plant) as store:
        store.history.upsert(list(finals.values()))
        store.status.upsert(statuses(events()))
        served = Served(lambda: create_app(plant, store, CollectorRegistry()))
        served.start()
        try:
            page = tmp_path / "report.html"
            ask = ["--url", served.url, "--line", "line-1", "--date", "2026-11-02"]
            done = linepulse(*ask, "--shift", "early", "-o", str(page))
            assert done.returncode == 0, done.stderr
            assert "written to" in done.stderr
            assert "line-1 · early shift · 2026-11-02" in page.read_text("utf-8")
            refused = linepulse(*ask, "--shift", "night")
            assert refused.returncode == 1
            assert "404" in refused.stderr
            assert "its shifts that day: early" in refused.stderr
        finally:
            assert served.stop()
    gone = linepulse("--url", served.url, "--line", "l", "--date", "d", "--shift", "s")
    assert gone.returncode == 1
    assert "does not answer" in gone.stderr
