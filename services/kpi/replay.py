"""`linepulse replay`: telemetry from a file, through the core, to final KPI records.

The file is read in batches (linepulse/event_files.py: JSON lines or Parquet) and fed to the
same `step` the streaming worker uses. A final record is written once its window can no
longer be restated (its end is behind the restatement horizon) or at the end of the
input, so each key is written once, with its last revision, and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from linepulse.event_files import read_batches
from linepulse.events import empty_events, reason_kind
from services.kpi.core.engine import Core, CoreStats, initial_state, step

# Each step has a fixed cost (~0.1 s), so batches are large, but not larger: at 10 M
# Parquet events (bench.replay) 2 M use the least CPU (1.5 M and 2.5 M: +6-10 %; 5 M
# and 10 M: no faster) and peak at ~0.8 GiB (2.5 M: ~0.85-0.9; 5 M: 1.25; 10 M: 2 GiB).
BATCH_EVENTS = 2_000_000
RecordKey = tuple[str, str | None, str, str]


@dataclass
class ReplaySummary:
    """What a replay read and wrote; the CLI prints it on stderr."""

    records: int = 0
    malformed: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    stats: CoreStats = field(default_factory=CoreStats)

    def count_reason(self, reason: str) -> None:
        kind = reason_kind(reason)
        self.rejected_by_reason[kind] = self.rejected_by_reason.get(kind, 0) + 1


def replay(
    core: Core,
    path: Path,
    out: IO[bytes],
    *,
    on_reject: Callable[[str, str], None],
    on_progress: Callable[[int], None] | None = None,
    batch_events: int = BATCH_EVENTS,
) -> ReplaySummary:
    summary = ReplaySummary()
    state = initial_state(core)
    pending: dict[RecordKey, dict[str, Any]] = {}

    def write(records: list[dict[str, Any]]) -> None:
        records.sort(key=_order)
        for record in records:
            out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        summary.records += len(records)

    def take(records: list[dict[str, Any]], sealed_before: str | None) -> None:
        for record in records:
            if record["final"]:
                key = (record["line"], record["machine"], record["window"], record["window_start"])
                pending[key] = record
        if sealed_before is not None:
            done = [k for k, r in pending.items() if r["window_end"] <= sealed_before]
            write([pending.pop(k) for k in done])

    for decoded, read in read_batches(path, batch_events):
        for where, reason, _raw in decoded.rejected:
            summary.malformed += 1
            summary.count_reason(reason)
            on_reject(where, reason)
        state, output = step(core, state, decoded.events, open_records=False)
        for ts, machine, signal, reason in output.rejected.iter_rows():
            summary.count_reason(reason)
            on_reject(f"event {machine}/{signal} at {_iso(ts)}", reason)
        for machine, ts, signal, _count, reason in output.jumps.iter_rows():
            on_reject(f"event {machine}/{signal} at {_iso(ts)}", reason)
        take(output.records, _iso(output.sealed_before) if output.sealed_before else None)
        if on_progress:
            on_progress(read)
    state, output = step(core, state, empty_events(), flush=True, open_records=False)
    take(output.records, None)
    write(list(pending.values()))
    summary.stats = state.stats
    return summary


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].removesuffix(".000") + "Z"


def _order(record: dict[str, Any]) -> tuple[str, str, str, int, str]:
    return (
        record["window_start"],
        record["window"],
        record["line"],
        record["machine"] is None,
        record["machine"] or "",
    )
