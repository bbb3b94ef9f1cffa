"""The CLI's state paths, `--version` and help (issue 15, items 4 and 5).

Every failure here happens before a broker is contacted, so these run without Kafka; that
the services write their state under the data dir and nothing into the current directory
is shown on a real broker in tests/integration/test_data_dir.py.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linepulse.config import load_config
from linepulse.data_dir import claim, default_data_dir, with_data_dir
from services.app.cli import app

ROOT = Path(__file__).parents[3]
CLASSIC = ROOT / "examples" / "classic-oee" / "plant.yaml"
# Never contacted: every command below stops before it would be.
NO_BROKER = ["--kafka", "127.0.0.1:9"]
SERVICES = ["kpi", "api", "alerts", "ingest"]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory that must stay empty."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("LINEPULSE_DATA_DIR", raising=False)
    return folder


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version_is_the_installed_package_version() -> None:
    code, out, _ = run("--version")
    assert (code, out) == (0, f"linepulse {version('linepulse')}\n")


@pytest.mark.parametrize("command", ["", *(c.name for c in app.registered_commands if c.name)])
def test_help_shows_flags_as_flags(command: str) -> None:
    code, out, _ = run(*filter(None, [command]), "--help")
    assert code == 0
    assert "<bool>" not in out
    assert re.search(r"^\s+--help\s{2,}Show this message", out, re.M)


def test_the_kpi_api_flag_reads_as_a_flag() -> None:
    _, out, _ = run("kpi", "--help")
    assert re.search(r"^\s+--api\s{2,}Serve the query API", out, re.M)
    assert "--data-dir <path>" in out
    assert "LINEPULSE_DATA_DIR" in out


def test_relative_state_paths_resolve_against_the_data_dir(tmp_path: Path) -> None:
    plant = with_data_dir(load_config(CLASSIC), tmp_path / "data")
    assert plant.kafka.state_dir == tmp_path / "data" / "kpi" / "checkpoints"
    assert plant.alerts.state_dir == tmp_path / "data" / "alerts"
    assert plant.ingest.state_dir == tmp_path / "data" / "ingest" / "state"
    assert plant.ingest.spool_dir == tmp_path / "data" / "ingest" / "spool"


def test_absolute_and_home_state_paths_are_kept(tmp_path: Path) -> None:
    base = load_config(CLASSIC)
    plant = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"state_dir": tmp_path / "ckpt"}),
            "ingest": base.ingest.model_copy(update={"spool_dir": Path("~/spool")}),
        }
    )
    resolved = with_data_dir(plant, tmp_path / "data")
    assert resolved.kafka.state_dir == tmp_path / "ckpt"
    assert resolved.ingest.spool_dir == Path.home() / "spool"


def test_the_default_data_dir_is_the_user_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_data_dir() == tmp_path / "state" / "linepulse"


@pytest.mark.parametrize("command", SERVICES)
def test_a_data_dir_that_cannot_be_created_is_one_line_and_exit_2(
    command: str, cwd: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run(command, "--config", str(CLASSIC), *NO_BROKER, "--data-dir", str(blocker))
    assert code == 2
    assert re.fullmatch(rf"linepulse: cannot create [^/]+ {blocker}/\S+: .+\n", err), err
    assert "--data-dir" in err
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("command", ["kpi", "alerts"])
def test_an_explicit_state_dir_wins_over_the_data_dir(
    command: str, cwd: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    data = tmp_path / "data"
    args = ["--data-dir", str(data), "--state-dir", str(blocker / "state")]
    code, _, err = run(command, "--config", str(CLASSIC), *NO_BROKER, *args)
    assert code == 2
    assert err.startswith(f"linepulse: cannot create --state-dir {blocker / 'state'}: "), err
    assert not data.exists()
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "state", "holder"),
    [
        ("alerts", Path("alerts"), "linepulse alerts"),
        ("ingest", Path("ingest/spool"), "linepulse ingest"),
        ("api", Path("kpi/history.duckdb"), "linepulse KPI API"),
    ],
)
def test_a_second_process_on_the_same_state_stops_with_one_line(
    command: str, state: Path, holder: str, cwd: Path, tmp_path: Path
) -> None:
    """Two services of one kind on one data dir would both write the outbox, the spool or
    the history: the second stops before touching it. (Workers of one group share
    kpi/checkpoints on purpose and take no lock.)"""
    data = tmp_path / "data"
    held = data / state
    (held if not held.suffix else held.parent).mkdir(parents=True)
    with claim(held, holder):  # as the first process holds it
        code, _, err = run(command, "--config", str(CLASSIC), *NO_BROKER, "--data-dir", str(data))
    assert code == 2
    assert err == (
        f"linepulse: {held} is in use by another {holder} (pid {os.getpid()}); "
        "give each its own --data-dir\n"
    )
    assert list(cwd.iterdir()) == []
