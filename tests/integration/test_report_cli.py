"""`linepulse report` against a KPI API over real HTTP (uvicorn on a loopback port): the
shift report of the classic example as a file, and the API's refusal as an exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_command import LINEPULSE
from tests.integration.classic_api import classic_api
from tests.unit.kpi.test_shift_report import classic

pytestmark = pytest.mark.integration


def linepulse(*args: str) -> subprocess.CompletedProcess[str]:
    command = [*LINEPULSE, "report", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def test_report_writes_the_page_and_says_why_it_cannot(tmp_path: Path) -> None:
    with classic_api(tmp_path, classic()) as url:
        page = tmp_path / "report.html"
        ask = ["--url", url, "--line", "line-1", "--date", "2026-11-02"]
        done = linepulse(*ask, "--shift", "early", "-o", str(page))
        assert done.returncode == 0, done.stderr
        assert "written to" in done.stderr
        assert "line-1 · early shift · 2026-11-02" in page.read_text("utf-8")
        refused = linepulse(*ask, "--shift", "night")
        assert refused.returncode == 1
        assert "404" in refused.stderr
        assert "its shifts that day: early" in refused.stderr
    gone = linepulse("--url", url, "--line", "l", "--date", "d", "--shift", "s")
    assert gone.returncode == 1
    assert "does not answer" in gone.stderr
