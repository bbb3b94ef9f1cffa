"""The ground-truth log: every event the simulator put on the wire, as telemetry JSON lines.

One line per event in the form of schemas/telemetry-event.schema.json (`ts` in epoch ms,
the same time the wire carries), so `linepulse replay --config PLANT.yaml truth.jsonl`
computes the KPIs the ingest path should reproduce. Lines are appended (a restarted
simulator continues the log) and flushed after every tick, so a test can read the file
while the simulator runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import orjson

from services.ingest.simulator.model import Event


class TruthLog:
    """Append-only JSON-lines file of true events; `flush()` makes them visible to readers."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab")
        self.written = 0

    def write(self, events: Iterable[Event]) -> None:
        lines = [orjson.dumps(e.as_json()) for e in events]
        if lines:
            self._file.write(b"\n".join(lines) + b"\n")
            self.written += len(lines)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TruthLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
