"""`linepulse report` against a KPI API over real HTTP (uvicorn on a loopback port): the
shift report of the classic example as a file (HTML, and PDF printed by Debian's
Chromium), the API's refusal as an exit code, and with `--config` the line and shift
checked and the token taken from the config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cli_command import LINEPULSE
from tests.integration.classic_api import classic_api
from tests.integration.test_report_browser import assert_report_pdf
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
        plant_page = tmp_path / "plant.html"
        day = linepulse(
            "--url", url, "--date", "2026-11-02", "--period", "day", "-o", str(plant_page)
        )
        assert day.returncode == 0, day.stderr
        assert "report: plant day 2026-11-02 written to" in day.stderr
        assert "Plant report · day 2026-11-02" in plant_page.read_text("utf-8")
        mixed = linepulse(*ask, "--period", "week")
        assert (mixed.returncode, "leave out --line" in mixed.stderr) == (2, True)
    gone = linepulse("--url", url, "--line", "l", "--date", "d", "--shift", "s")
    assert gone.returncode == 1
    assert "does not answer" in gone.stderr


def test_report_with_the_config_checks_names_and_takes_its_token(tmp_path: Path) -> None:
    """An API that guards reads (`api.auth_reads`) with a token file: `--config` gives
    the CLI that token; without it the API refuses; a PDF comes as a file."""
    token_file = tmp_path / "tokens"
    token_file.write_text("# the API's token\ns3cret-report-token\n")
    api = {"auth_reads": True, "token_env": None, "token_file": str(token_file)}
    plant = classic(api=api)
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(plant.model_dump(mode="json")))
    with classic_api(tmp_path, plant) as url:
        ask = ["--url", url, "--date", "2026-11-02"]
        pdf = tmp_path / "report.pdf"
        done = linepulse(*ask, "-c", str(config), "--line", "line-1", "--shift", "early",
                         "--format", "pdf", "-o", str(pdf))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert_report_pdf(pdf.read_bytes())
        refused = linepulse(*ask, "--line", "line-1", "--shift", "early")
        assert refused.returncode == 1
        assert "401" in refused.stderr
    typo = linepulse(*ask, "-c", str(config), "--line", "line-9", "--shift", "early")
    assert (typo.returncode, typo.stderr.strip()) == (
        2,
        "linepulse: --line 'line-9' is not in the config; its lines: line-1",
    )
    night = linepulse(*ask, "-c", str(config), "--line", "line-1", "--shift", "night")
    assert night.returncode == 2
    assert "--shift 'night' does not run on line-1 on 2026-11-02; shifts then: early" in (
        night.stderr
    )
    stdout_pdf = linepulse(*ask, "--line", "line-1", "--shift", "early", "--format", "pdf")
    assert (stdout_pdf.returncode, "--output" in stdout_pdf.stderr) == (2, True)
