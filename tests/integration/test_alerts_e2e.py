"""End to end on the real Kafka: machines go down on the telemetry topic, `linepulse alerts`
pages the shift lead's receiver once per machine after the rule's `for`, and sends the
resolve once each runs again (bench/alerts.py's drill, asserted here; timed there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.alerts import run_drill

pytestmark = pytest.mark.integration


async def test_a_machine_down_pages_the_lead_once_and_resolves(kafka: str, tmp_path: Path) -> None:
    drill = await run_drill(kafka, tmp_path, machines=4, rounds=2)
    log = drill.log.read_text()[-3000:]
    assert drill.missing_pages == 0, log
    assert drill.missing_resolves == 0, log
    assert drill.repeated == 0, log
    # Not before the `for` duration: a page is never early (times are seconds after it).
    assert min(drill.pages) >= -0.5, drill.pages
