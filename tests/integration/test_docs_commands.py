"""Every shell command in README.md and docs/*.md is run by a test.

A user pastes what the docs say, so a command that no test runs is a command that may
have stopped working. Each command of a fenced `sh`, `bash`, `shell` or `console` block
(console: the lines after `$ `; continuation lines joined; comments dropped) is in exactly
one of three tables here:

- `RUN_HERE`: cheap and needs nothing but the package and `examples/`: this test runs it,
  in document order, in a scratch directory per page that holds `examples/` and a
  `plant.yaml` (the simulated plant), with its own data directory; it must exit 0.
- `RUN_BY`: needs a broker, a server or minutes; the named test (or `.ci/run`) runs it,
  and that file must still contain the text that runs it (checked here).
- `LONG_RUNS`: the benchmarks and long fuzz runs, minutes on real brokers each: the figures
  in docs/operations.md come from them. They are not run; `python -m MODULE --help` must
  list every option the docs give them.

A command in none of them fails, naming the file and the line; an entry that no page
uses any more fails too, so the tables stay the docs' own.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_command import LINEPULSE

ROOT = Path(__file__).parents[2]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_FENCES = frozenset({"sh", "bash", "shell", "console"})
TIMEOUT_S = 300


@dataclass(frozen=True)
class Command:
    page: Path
    line: int  # 1-based line of the command's first line in the page
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class RunBy:
    """The file that runs a command, and text of it that shows it does."""

    path: str
    evidence: tuple[str, ...]


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a `#` after a blank, outside quotes)."""
    quote: str | None = None
    for i, char in enumerate(line):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_in(page: Path) -> list[Command]:
    """The shell commands of a page's fenced blocks, in order."""
    commands: list[Command] = []
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence not in SHELL_FENCES:
            continue
        text = raw
        if fence == "console" and not pending:
            if not stripped.startswith("$ "):
                continue  # output shown after a command
            text = stripped[2:]
        if not pending:
            start = number
        text = strip_comment(text)
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        joined = " ".join([*pending, text.strip()]).strip()
        pending = []
        if joined:
            commands.append(Command(page, start, joined))
    return commands


ALL_COMMANDS = [command for page in PAGES for command in commands_in(page)]

CLASSIC = "--config examples/classic-oee/plant.yaml examples/classic-oee/events.jsonl"
SIMULATED = "examples/simulated-plant/plant.yaml"

RUN_HERE: frozenset[str] = frozenset(
    {
        f"linepulse replay {CLASSIC} --window shift",
        f"linepulse replay {CLASSIC} --window shift --window 1h --output records.jsonl",
        f"linepulse simulate -c {SIMULATED} --scenario bottleneck=capper-1 "
        "--offline 2026-11-02T05:00:00Z/2026-11-02T13:00:00Z --truth shift.jsonl",
        f"linepulse replay -c {SIMULATED} -w shift shift.jsonl --output shift-records.jsonl",
        f"linepulse simulate -c {SIMULATED} --scenario fill=cartoner-3:0.1:60 "
        "--offline 2026-11-02T05:00:00Z/2026-11-02T07:00:00Z --truth fill.jsonl",
        "grep '\"machine\":null' shift-records.jsonl",
        f"linepulse check --config {SIMULATED}",
        "linepulse check --config plant.yaml",
        "linepulse --help",
        "linepulse --version",
    }
)

CI = ".ci/run"
KAFKA_SNIPPET = "tests/integration/snippets/run-on-kafka.sh"
KAFKA_FIXTURE = RunBy(
    "tests/integration/conftest.py", ('KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"',)
)


def snippet_line(text: str) -> tuple[RunBy, ...]:
    """A line of the Kafka block: in the snippet test_data_dir.py runs as bash."""
    return (
        RunBy(KAFKA_SNIPPET, (text,)),
        RunBy("tests/integration/test_data_dir.py", ('"snippets" / "run-on-kafka.sh"',)),
    )


RUN_BY: dict[str, tuple[RunBy, ...]] = {
    # README: the install and test lines CI runs, and the demo.
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && linepulse demo": (
        RunBy(CI, ("python3 -m venv .venv", ". .venv/bin/activate", "pip install --quiet -e")),
        RunBy("tests/integration/test_demo.py", ('args = ["demo", "--port"',)),
    ),
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]' && "
    "python -m pytest": (
        RunBy(
            CI,
            (
                "python3 -m venv .venv",
                ". .venv/bin/activate",
                "pip install --quiet -e '.[dev]'",
                'echo "== tests"\npython -m pytest',
            ),
        ),
    ),
    "linepulse demo": (
        RunBy("tests/integration/test_demo.py", ('args = ["demo", "--port"',)),
        RunBy("tests/integration/test_demo_start.py", ('run_cli(["demo"], log)',)),
    ),
    # The demo on a plant file: the user's own (test_demo_start.py writes one and runs it).
    f"linepulse demo --config {SIMULATED}": (
        RunBy("tests/integration/test_demo_start.py", ('args = ["demo", "--config", str(config)',)),
    ),
    "linepulse demo --config plant.yaml": (
        RunBy("tests/integration/test_demo_start.py", ('args = ["demo", "--config", str(config)',)),
    ),
    "ruff check . && ruff format --check . && mypy && lint-imports": (
        RunBy(CI, ("ruff check .", "ruff format --check .", "mypy", "lint-imports")),
    ),
    ". .venv/bin/activate": (RunBy(CI, (". .venv/bin/activate",)),),
    "(cd tests/foreign && npm ci)": (RunBy(CI, ("(cd tests/foreign && npm ci",)),),
    # Connecting a PLC, alerts: the CLI as a child process against real servers.
    "linepulse check --config plant.yaml --connect": (
        RunBy("tests/integration/test_check_connect.py", ('"check",\n        "--config"',)),
        RunBy("tests/integration/test_check_connect.py", ('"--connect",',)),
    ),
    "linepulse kpi --config plant.yaml --api": (
        RunBy(
            "tests/integration/test_data_dir.py",
            ('["kpi", "--api", "--port", str(kpi_port), *common]',),
        ),
        RunBy("tests/integration/test_data_dir.py", ('common = ["--config", str(config)',)),
    ),
    "linepulse report --line line-1 --date 2026-11-02 --shift early -o report.html": (
        RunBy(
            "tests/integration/test_report_cli.py",
            ('ask = ["--url", url, "--line", "line-1", "--date", "2026-11-02"]',),
        ),
        RunBy("tests/integration/test_report_cli.py", ('"--shift", "early", "-o"',)),
    ),
    "linepulse report -c plant.yaml --line line-1 --date 2026-11-02 --shift early "
    "--format pdf -o report.pdf": (
        RunBy(
            "tests/integration/test_report_cli.py",
            ('"-c", str(config), "--line", "line-1", "--shift", "early",',),
        ),
        RunBy("tests/integration/test_report_cli.py", ('"--format", "pdf", "-o", str(pdf)',)),
    ),
    "linepulse report --date 2026-11-02 --period day -o plant.html": (
        RunBy(
            "tests/integration/test_report_cli.py", ('"--date", "2026-11-02", "--period", "day"',)
        ),
    ),
    "linepulse spc events.jsonl -c plant.yaml": (
        RunBy("tests/integration/test_spc_cli.py", ('spc(str(telemetry), "-c", str(config))',)),
    ),
    "linepulse ingest --config plant.yaml": (
        RunBy("tests/integration/test_ingest_e2e.py", ('start_cli(["ingest", "--config"',)),
    ),
    "linepulse alerts --config plant.yaml": (
        RunBy("tests/integration/test_topic_layout_kafka.py", ('["alerts", "--config", path',)),
    ),
    # API replicas (docs/deploy.md): the reason-coding test starts a second one.
    **{
        f"linepulse api --config plant.yaml --port {port} --db /var/lib/linepulse/api-{name}"
        ".duckdb": (
            RunBy("tests/integration/test_reason_coding_kafka.py", ('args = ["api", "--config"',)),
            RunBy("tests/integration/test_reason_coding_kafka.py", ('"--db", str(tmp_path',)),
        )
        for port, name in ((8080, "a"), (8090, "b"))
    },
    # Replicated alerts (docs/alerts-ha.md): the failover drill starts two such instances.
    **{
        f"linepulse alerts --config plant.yaml --port {port} --state-dir "
        f"/var/lib/linepulse/alerts-{name}": (
            RunBy("tests/integration/test_alerts_failover.py", ("run_failover_drill(kafka",)),
            RunBy("bench/alerts_failover.py", ('"alerts",\n                    "--config"',)),
            RunBy("bench/alerts_failover.py", ('"--port",', '"--state-dir",')),
        )
        for port, name in ((8081, "a"), (8082, "b"))
    },
    # Run it on Kafka (docs/deploy.md): the broker as the kafka fixture starts it, then
    # the snippet test_data_dir.py runs.
    "KAFKA_PORT=9092 KAFKA_DATA=/tmp/lp-kafka bash deploy/kafka/kafka.sh start": (
        KAFKA_FIXTURE,
        RunBy("tests/integration/conftest.py", ('"KAFKA_PORT": str(port)', 'kafka_sh("start"')),
    ),
    "KAFKA_DATA=/tmp/lp-kafka bash deploy/kafka/kafka.sh stop": (
        KAFKA_FIXTURE,
        RunBy("tests/integration/conftest.py", ('kafka_sh("stop"',)),
    ),
    "KAFKA_EXTRA_PROPERTIES=security.properties KAFKA_SCRAM_USERS='SCRAM-SHA-512=[name=linepulse,"
    "password=...]' deploy/kafka/kafka.sh start": (
        RunBy(
            "tests/integration/test_kafka_security.py",
            ('"KAFKA_EXTRA_PROPERTIES": str(extra)', '"KAFKA_SCRAM_USERS": f"SCRAM-SHA-512=[name='),
        ),
    ),
    # Atheris targets with libFuzzer flags: what test_atheris_targets.py runs, shorter.
    "python -m tests.fuzz.sparkplug_payload -atheris_runs=1000000": (
        RunBy(
            "tests/unit/fuzz/test_atheris_targets.py", ('f"tests.fuzz.{target}"', "-atheris_runs=")
        ),
    ),
    "python -m tests.fuzz.telemetry_json -atheris_runs=1000000": (
        RunBy(
            "tests/unit/fuzz/test_atheris_targets.py", ('f"tests.fuzz.{target}"', "-atheris_runs=")
        ),
    ),
    "python -m tests.fuzz.config_yaml -max_total_time=3600 -artifact_prefix=fuzz-out/ corpus/": (
        RunBy(
            "tests/unit/fuzz/test_atheris_targets.py",
            ('f"tests.fuzz.{target}"', "-artifact_prefix="),
        ),
    ),
}
for _line in (ROOT / KAFKA_SNIPPET).read_text(encoding="utf-8").splitlines():
    if strip_comment(_line):
        RUN_BY[strip_comment(_line)] = snippet_line(_line)

LONG_RUNS: frozenset[str] = frozenset(
    {
        *(
            f"python -m bench.{name} --quick"
            for name in ("replay", "stream", "ingest", "spool", "alerts", "peers", "scale", "soak")
        ),
        "python -m bench.soak",
        "python -m bench.soak --no-faults",
        "python -m bench.alerts_failover",
        "python -m bench.soak --minutes 5 --faults kafka:kill,ingest:term",
        "python -m bench.scale",
        "python -m bench.scale --workers 1,2 --events 2000000 --partitions 8 --per-line 10",
        "python -m tests.fuzz --seconds 600",
        "python -m tests.fuzz --seconds 3600 --only sparkplug_payload --artifacts fuzz-out",
    }
)


def is_pytest_run(text: str) -> bool:
    """`python -m pytest PATHS`: the suite CI runs holds these tests (checked apart)."""
    return text.startswith("python -m pytest ")


def test_every_command_in_the_docs_is_run_by_a_test() -> None:
    known = RUN_HERE | RUN_BY.keys() | LONG_RUNS
    unknown = [
        f"{c.where}: {c.text}"
        for c in ALL_COMMANDS
        if c.text not in known and not is_pytest_run(c.text)
    ]
    assert not unknown, "commands no test runs (add a test, or list the test that runs it):\n" + (
        "\n".join(unknown)
    )


def test_every_listed_command_is_still_in_the_docs() -> None:
    used = {c.text for c in ALL_COMMANDS}
    snippet_only = {k for k, v in RUN_BY.items() if v[0].path == KAFKA_SNIPPET}
    stale = sorted((RUN_HERE | (RUN_BY.keys() - snippet_only) | LONG_RUNS) - used)
    assert not stale, "listed here but in no page any more:\n" + "\n".join(stale)


def test_the_kafka_block_is_the_snippet_its_test_runs() -> None:
    """docs/deploy.md's block holds every line of the snippet, in the same order."""
    snippet = [
        line
        for line in (ROOT / KAFKA_SNIPPET).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "\n".join(snippet) in page


# Commands whose feature or test is being built while these docs are written: expected
# to fail until it lands (strict: once it passes, the entry must go).
PENDING: dict[str, str] = {}


def _runs_by() -> list[object]:
    params: list[object] = []
    for command, runners in RUN_BY.items():
        for runner in runners:
            reason = PENDING.get(command)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            params.append(pytest.param(command, runner, marks=marks))
    return params


@pytest.mark.parametrize(
    ("command", "runner"),
    _runs_by(),
    ids=lambda value: value if isinstance(value, str) else value.path,
)
def test_the_file_named_for_a_command_runs_it(command: str, runner: RunBy) -> None:
    path = ROOT / runner.path
    assert path.is_file(), f"{command!r}: {runner.path} does not exist"
    text = path.read_text(encoding="utf-8")
    missing = [evidence for evidence in runner.evidence if evidence not in text]
    assert not missing, f"{command!r}: {runner.path} no longer contains {missing}"


PYTEST_RUNS = [c for c in ALL_COMMANDS if is_pytest_run(c.text)]


@pytest.mark.parametrize("command", PYTEST_RUNS, ids=lambda c: c.where)
def test_a_pytest_command_names_tests_the_suite_runs(command: Command) -> None:
    """CI runs `python -m pytest` over `tests/`: a path the docs name must be a test there."""
    paths = [arg for arg in shlex.split(command.text)[3:] if not arg.startswith("-")]
    assert paths, command.where
    for arg in paths:
        path = ROOT / arg
        assert path.exists(), f"{command.where}: {arg} does not exist"
        assert path.is_relative_to(ROOT / "tests"), f"{command.where}: {arg} is not under tests/"


HERE = [c for c in ALL_COMMANDS if c.text in RUN_HERE]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """A scratch directory per page: `examples/` linked in, `plant.yaml` copied."""
    dirs: dict[Path, Path] = {}
    for page in PAGES:
        where = tmp_path_factory.mktemp(page.stem)
        (where / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
        shutil.copy(ROOT / SIMULATED, where / "plant.yaml")
        dirs[page] = where
    return dirs


@pytest.mark.parametrize("command", HERE, ids=lambda c: c.where)
def test_a_cheap_command_runs_as_written(command: Command, scratch: dict[Path, Path]) -> None:
    cwd = scratch[command.page]
    before = {p.name for p in cwd.iterdir()}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LINEPULSE_DATA_DIR": str(cwd.parent / f"{cwd.name}-data"),
    }
    done = subprocess.run(  # noqa: S603 - the docs' own command, in a scratch directory
        ["bash", "-c", f"set -euo pipefail\n{command.text}"],  # noqa: S607
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{command.where}: {command.text}\n{done.stderr[-3000:]}"
    assert done.stdout or done.stderr or len({p.name for p in cwd.iterdir()}) > len(before)


def test_readme_example_gives_the_classic_oee() -> None:
    """The README's replay shows OEE 0.747937, as it says (and as .ci/run asserts)."""
    done = subprocess.run(  # noqa: S603 - our own CLI on the packaged example
        [*LINEPULSE, *shlex.split(f"replay {CLASSIC} --window shift")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert re.search(r'"machine":"filler-1".*"oee":0\.7479', done.stdout)
    assert "OEE 0.747937" in (ROOT / "README.md").read_text(encoding="utf-8")


LONG = [c for c in ALL_COMMANDS if c.text in LONG_RUNS]


@pytest.mark.parametrize("command", LONG, ids=lambda c: c.where)
def test_a_long_run_takes_the_options_shown(command: Command) -> None:
    words = shlex.split(command.text)
    assert words[:2] == ["python", "-m"], command.where
    done = subprocess.run(  # noqa: S603 - our own module's --help
        [sys.executable, "-m", words[2], "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{command.where}: {done.stderr[-2000:]}"
    options = [w.split("=")[0] for w in words[3:] if w.startswith("--")]
    missing = [option for option in options if option not in done.stdout]
    assert not missing, f"{command.where}: {words[2]} --help does not list {missing}"
