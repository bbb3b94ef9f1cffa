"""The LinePulse image (../Dockerfile), built by deploy/images.sh: it runs as its own
non-root user, and `linepulse demo` in it serves the plant's KPIs to the host."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from linepulse.runtime import free_loopback_ports
from tests.deploy.conftest import podman, report

IMAGE = "localhost/linepulse:latest"
DEMO_MACHINES = 20  # the packaged demo plant's


@pytest.mark.usefixtures("images")
def test_the_image_runs_as_uid_and_gid_10001() -> None:
    ids = podman("run", "--rm", "--entrypoint", "id", IMAGE).stdout.strip()
    assert ids.startswith("uid=10001(linepulse) gid=10001(linepulse)"), ids


@pytest.mark.usefixtures("images")
def test_the_demo_in_the_image_serves_every_machine_to_the_host() -> None:
    (port,) = free_loopback_ports(1)
    name = f"lp-demo-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", IMAGE,
        "demo", "--host", "0.0.0.0", "--port", "8080",  # noqa: S104 - inside the container
    )  # fmt: skip
    started = time.monotonic()
    try:
        machines: set[str] = set()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(machines) < DEMO_MACHINES:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/kpis/current?window=1m", timeout=5)
                if answer.status_code == 200:
                    machines = {r["machine"] for r in answer.json() if r["machine"]}
            except httpx.TransportError:
                pass
            time.sleep(2)
        logs = podman("logs", "--tail", "40", name, check=False)
        assert len(machines) == DEMO_MACHINES, (sorted(machines), logs.stdout + logs.stderr)
        report(f"image: `linepulse demo` served {len(machines)} machines after "
               f"{time.monotonic() - started:.0f} s")  # fmt: skip
        # The board too, from the host, through the published port only.
        board = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert board.status_code == 200
        assert "LinePulse" in board.text
    finally:
        podman("rm", "-f", "-t", "10", name, check=False)
