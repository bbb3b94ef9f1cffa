"""`promtool` accepts deploy/prometheus/ and its rule unit tests pass.

promtool comes with Debian's `prometheus` package (`apt-get install -y prometheus`). Without
it this test fails rather than skips: CI installs it, and a skipped check proves nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: install it with `apt-get install -y prometheus`")
    return subprocess.run(  # noqa: S603 - fixed arguments, our own files
        [tool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def files(folder: str) -> list[str]:
    found = sorted(str(p) for p in (PROMETHEUS / folder).glob("*.yml"))
    assert found, f"no files in deploy/prometheus/{folder}"
    return found


def test_check_config() -> None:
    done = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_rules() -> None:
    done = promtool("check", "rules", *files("rules"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests() -> None:
    done = promtool("test", "rules", *files("tests"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The same unit tests with one expected value changed must fail."""
    source = (PROMETHEUS / "tests" / "linepulse-rules.test.yml").read_text()
    broken = source.replace("../rules/", f"{PROMETHEUS / 'rules'}/").replace(
        "value: 0.8", "value: 0.7", 1
    )
    assert broken.count(str(PROMETHEUS)) == 2
    assert "value: 0.7" in broken
    path = tmp_path / "broken.test.yml"
    path.write_text(broken)
    done = promtool("test", "rules", str(path))
    assert done.returncode != 0, done.stdout + done.stderr
