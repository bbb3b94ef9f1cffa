"""Run every fuzz target for a time budget and report executions per second and findings.

    python -m tests.fuzz --seconds 60 [--artifacts DIR] [--only mqtt_json ...]

Each target runs in its own process (atheris instruments the interpreter it runs in),
with libFuzzer's `-timeout` so a hang is a finding too. Crashing inputs are kept under
`--artifacts` (`crash-*`, `timeout-*`, `oom-*`) for `python -m tests.fuzz.<target> FILE`
to replay. Exits 1 if any target found something.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import TARGETS

_DONE = re.compile(r"Done (\d+) (?:runs )?in (\d+) second")
_EXEC = re.compile(r"exec/s: (\d+)")


@dataclass(frozen=True)
class Outcome:
    target: str
    runs: int
    seconds: int
    exec_per_s: int
    findings: list[Path]
    exit_code: int


def run_target(target: str, seconds: int, artifacts: Path, hang_s: int = 10) -> Outcome:
    folder = artifacts / target
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        f"tests.fuzz.{target}",
        f"-max_total_time={seconds}",
        f"-timeout={hang_s}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={folder}/",
    ]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        command, capture_output=True, text=True, errors="replace", check=False
    )
    log = done.stdout + done.stderr
    (folder / "fuzz.log").write_text(log)
    match = _DONE.search(log)
    runs, took = (int(match[1]), int(match[2])) if match else (0, seconds)
    rates = _EXEC.findall(log)
    rate = int(rates[-1]) if rates else (runs // took if took else 0)
    found = sorted(p for p in folder.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    return Outcome(target, runs, took, rate, found, done.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="time budget per target")
    parser.add_argument("--artifacts", type=Path, help="where crashing inputs are kept")
    parser.add_argument("--only", nargs="*", choices=TARGETS, help="run only these targets")
    args = parser.parse_args(argv)
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="linepulse-fuzz-"))
    out = sys.stdout
    out.write(f"{'target':<20} {'runs':>9} {'s':>4} {'exec/s':>7}  findings\n")
    failed = False
    for target in args.only or TARGETS:
        outcome = run_target(target, args.seconds, artifacts)
        found = ", ".join(str(p) for p in outcome.findings) or "none"
        if outcome.exit_code != 0 and not outcome.findings:
            found = f"exit {outcome.exit_code}, see {artifacts / target / 'fuzz.log'}"
        failed |= outcome.exit_code != 0 or bool(outcome.findings)
        rate = outcome.exec_per_s
        out.write(f"{target:<20} {outcome.runs:>9} {outcome.seconds:>4} {rate:>7}  {found}\n")
        out.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
