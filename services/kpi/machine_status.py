"""Machine status: each machine's latest state, reason, `since` and `last_seen`, as the
status topic carries it, stepped batch by batch like the core.

The worker publishes what `step` returns and checkpoints the statuses with the core's
state, so this is the same pure shape as the core (`step(state, batch) -> (state, out)`,
no I/O, no clock): a test can feed it any batches in any arrival order. The status topic
is what the API's stop log is built from, so every change of (state, reason) is a record,
not only the latest one of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import polars as pl

# "Last heard from" to the nearest few seconds is enough: a machine whose only news is a
# later `last_seen` is published again once it has moved on this far (epoch ms).
LAST_SEEN_STEP_MS: Final = 5_000

StatusRecord = dict[str, Any]
"""A status topic record: machine, line, state, reason, since, last_seen (epoch ms)."""


def status_key(record: StatusRecord) -> bytes:
    """A status record's key on the compacted status topic: `machine@since` (epoch ms; `-`
    before any state). One key per state a machine entered, so compaction keeps every
    state change (an API replica started from nothing rebuilds the stops from them) and
    the latest heartbeat of each (the machine's current state and when it was heard)."""
    since = record.get("since")
    return f"{record['machine']}@{'-' if since is None else since}".encode()


@dataclass(frozen=True)
class MachineStatus:
    """A machine's latest state, as the status topic carries it. Checkpoints hold these
    as `vars()`; a field added later needs a default (older checkpoints lack it)."""

    line: str
    state: str | None = None
    since: int | None = None  # epoch ms the current state began
    last_seen: int | None = None  # epoch ms of the latest event of any signal
    published_seen: int | None = None  # last_seen as last published
    reason: str | None = None  # the current state sample's reason code

    def as_record(self, machine: str, last_seen: int | None = None) -> StatusRecord:
        """The status topic record; `last_seen` overrides the status's own."""
        return {
            "machine": machine,
            "line": self.line,
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "last_seen": self.last_seen if last_seen is None else last_seen,
        }


def step(
    lines: Mapping[str, str],
    statuses: Mapping[str, MachineStatus],
    events: pl.DataFrame,
    states: pl.DataFrame,
) -> tuple[dict[str, MachineStatus], list[StatusRecord]]:
    """The statuses after a batch, and the status records to publish for it.

    `lines` maps each configured machine to its line (events of other machines are
    ignored); `statuses` is the previous result (not changed); `events` are the batch's
    events the core stepped (`machine`, `ts`); `states` the core's usable state samples of
    the batch (`StepOutput.states`: `machine`, `ts`, `state`, `reason`, sorted by `ts`).

    Records: one per change of (state, reason), so that every stop reaches the stop log;
    a state sample older than the machine's current `since` (it arrived after a later
    one, in an earlier batch) changes nothing. A change that is not the machine's latest
    in the batch carries `last_seen` at its own time, the latest one the machine's
    `last_seen`. A machine with no change is published again only when its `last_seen`
    moved on by `LAST_SEEN_STEP_MS` since it was last published. Records come in event
    time order (`since`, else `last_seen`), then by machine.
    """
    after = dict(statuses)
    if events.is_empty():
        return after, []
    seen_moved: set[str] = set()
    for machine, ts in events.group_by("machine").agg(pl.col("ts").max()).iter_rows():
        if machine not in lines:
            continue
        status = after.get(machine) or MachineStatus(lines[machine])
        if status.last_seen is None or ts > status.last_seen:
            status = after[machine] = replace(status, last_seen=ts)
            if status.published_seen is None or ts - status.published_seen >= LAST_SEEN_STEP_MS:
                seen_moved.add(machine)
    changes: dict[str, list[StatusRecord]] = {}
    for machine, ts, state, reason in states.select("machine", "ts", "state", "reason").iter_rows():
        status = after.get(machine) or MachineStatus(lines[machine])
        if status.since is not None and ts < status.since:
            continue
        if (state, reason) != (status.state, status.reason):
            status = after[machine] = replace(status, state=state, reason=reason, since=ts)
            changes.setdefault(machine, []).append(status.as_record(machine, last_seen=ts))
    out: list[tuple[int, str, StatusRecord]] = []
    for machine in seen_moved | changes.keys():
        status = after[machine] = replace(after[machine], published_seen=after[machine].last_seen)
        records = changes.get(machine) or [status.as_record(machine)]
        records[-1] = status.as_record(machine)
        out += [(r["since"] or r["last_seen"] or 0, machine, r) for r in records]
    out.sort(key=lambda item: item[:2])
    return after, [record for _, _, record in out]
