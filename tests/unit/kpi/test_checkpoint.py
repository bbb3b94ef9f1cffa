"""A checkpoint restored mid-stream continues exactly as if nothing had happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linepulse.config import load_config
from linepulse.events import empty_events
from services.kpi.checkpoint import CheckpointError, DirectoryStore, dump_state, load_state
from services.kpi.core.engine import Core, initial_state, step
from tests.unit.kpi.core.support import frame

CLASSIC = Path(__file__).parents[3] / "examples" / "classic-oee"


def classic() -> tuple[Core, list[dict[str, object]]]:
    core = Core.from_config(load_config(CLASSIC / "plant.yaml"))
    events = [json.loads(line) for line in (CLASSIC / "events.jsonl").read_text().splitlines()]
    return core, events


@pytest.mark.parametrize("cut", [1, 700, 2301, 4000])
def test_restored_state_continues_to_the_same_records(cut: int, tmp_path: Path) -> None:
    core, events = classic()
    batches = [events[i : i + 500] for i in range(0, len(events), 500)]
    split = cut // 500
    # Uninterrupted.
    state = initial_state(core)
    straight = []
    for batch in batches:
        state, out = step(core, state, frame(batch))
        straight += out.records
    state, out = step(core, state, empty_events(), flush=True)
    straight += out.records
    # Checkpointed after `split` batches, through the store, then resumed.
    state = initial_state(core)
    resumed = []
    for batch in batches[:split]:
        state, out = step(core, state, frame(batch))
        resumed += out.records
    store = DirectoryStore(tmp_path)
    store.save("telemetry-0", dump_state(state, offset=split * 500, extra={"k": [1, "v"]}))
    data = store.load("telemetry-0")
    assert data is not None
    state, offset, extra = load_state(core, data)
    assert offset == split * 500
    assert extra == {"k": [1, "v"]}
    for batch in batches[split:]:
        state, out = step(core, state, frame(batch))
        resumed += out.records
    state, out = step(core, state, empty_events(), flush=True)
    resumed += out.records
    assert resumed == straight
    (shift,) = [r for r in resumed if r["window"] == "shift" and r["machine"] and r["final"]]
    assert round(shift["oee"], 6) == 0.747937


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    core, _ = classic()
    with pytest.raises(CheckpointError, match="unreadable"):
        load_state(core, b"\x93not a checkpoint")
    assert DirectoryStore(tmp_path).load("missing") is None
