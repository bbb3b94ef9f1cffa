"""Two replicated `linepulse alerts` on the real Kafka (bench/alerts_failover.py's drill,
asserted here): the active one is killed with SIGKILL in the middle of an incident and
the standby takes over within 10 s, pages what was pending and the resolves, every page
exactly once by its key; an ack made through the standby holds; the killed instance
comes back a standby with the same alerts; a frozen active instance, let go after its
successor took over, is fenced and pages nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.alerts_failover import run_failover_drill

pytestmark = pytest.mark.integration


async def test_sigkill_of_the_active_instance_hands_over_and_pages_once(
    kafka: str, tmp_path: Path
) -> None:
    drill = await run_failover_drill(kafka, tmp_path)
    logs = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in drill.logs)
    assert drill.handover_s is not None, logs
    assert drill.handover_s <= 10.0, logs
    assert drill.freeze_handover_s is not None, logs
    assert drill.missing == {}, logs
    assert drill.extra == {}, logs
    assert drill.repeated == {}, logs
    assert drill.ack_forwarded, logs
    assert drill.ack_kept, logs
    assert drill.standby_agrees, logs
    assert drill.zombie_stepped_down, logs
