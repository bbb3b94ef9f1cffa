"""Each atheris target, run in its own process for a bounded number of inputs, ends clean.

atheris instruments the interpreter it runs in and ends the process on a finding, so a
target never runs inside pytest: it runs as `python -m tests.fuzz.<target>`, as a user
would, with a fixed seed so a failure here reproduces with the same command.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import TARGETS
from tests.fuzz.harness import check_reason

ROOT = Path(__file__).parents[3]
# The config target validates a 250-line plant per input (~50 inputs/s); the others
# decode one small message (~1,000/s).
RUNS = {"config_yaml": 300}


@pytest.mark.parametrize("target", TARGETS)
def test_the_fuzz_target_finds_nothing_in_a_bounded_run(target: str, tmp_path: Path) -> None:
    runs = RUNS.get(target, 3000)
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            f"tests.fuzz.{target}",
            f"-atheris_runs={runs}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert re.search(rf"Done {runs} (runs )?in \d+ second", log), log[-2000:]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("crash-")]


def test_a_rejection_without_a_reason_is_a_finding() -> None:
    check_reason(ValueError("ts is missing"))
    with pytest.raises(AssertionError, match="without a reason"):
        check_reason(ValueError("  "))
