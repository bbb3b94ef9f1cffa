"""What the deploy tests need: podman with the project's engine settings, and the images
built by deploy/images.sh --offline (no image registry), once per session.

Nothing is skipped, as in the integration tests: without podman, debootstrap or root
(which debootstrap needs) the fixture fails and says what to install; `.ci/run` installs them.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"


def _engine_conf() -> Path:
    """The engine settings of the tests' own, never the machine's (podman reads
    CONTAINERS_CONF instead of /etc/containers/containers.conf): deploy/podman-containers.conf
    with its limits lowered to what this host allows, if it allows less."""
    text = (DEPLOY / "podman-containers.conf").read_text("utf-8")
    nofile = min(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    # runc refused a process limit equal to the hard one here; half of it is plenty.
    nproc = min(32768, resource.getrlimit(resource.RLIMIT_NPROC)[1] // 2)
    text = re.sub(
        r"^default_ulimits = .*$",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
        text,
        flags=re.M,
    )
    path = Path(tempfile.gettempdir()) / f"linepulse-tests-containers-{os.getuid()}.conf"
    path.write_text(text, "utf-8")
    return path


@functools.cache
def engine_env() -> dict[str, str]:
    """The environment podman runs with: the tests' engine settings, written once, when a
    deploy test first needs them (not when the suite is collected)."""
    return {**os.environ, "CONTAINERS_CONF": str(_engine_conf())}


BUILD_TIMEOUT_S = 900


def _missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman runc)"
    if os.geteuid() != 0:
        return "the Debian base image is made by debootstrap, which needs root"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (Debian: apt-get install debootstrap)"
    return None


# What the deploy tests measured (build and stage durations, `podman ps`), printed at the end
# of the run whether they passed or not: CI's log carries them.
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("deploy: images and compose stack")
        for line in REPORT:
            terminalreporter.write_line(line)


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with the tests' engine settings; raises with its output if it fails
    and `check`."""
    done = subprocess.run(  # noqa: S603 - podman with the tests' own arguments
        ["podman", *args],  # noqa: S607 - podman from PATH, as CI installs it
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def images() -> None:
    """Every image of the stack, built as an operator without a registry would."""
    missing = _missing()
    if missing is not None:
        pytest.fail(f"the deploy tests cannot run: {missing}")
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own script
        ["bash", str(DEPLOY / "images.sh"), "--offline"],  # noqa: S607 - bash from PATH
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    for line in done.stderr.splitlines():
        if line.startswith("images.sh:"):
            report(line)
    report(
        f"deploy/images.sh --offline: exit {done.returncode} in {time.monotonic() - started:.0f} s"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
