"""Where the KPI worker's consume loop spends its time: a log line every `LOG_EVERY_S`
with the share of poll, process, publish and checkpoint. What an operator looks at first
when KPIs lag behind the events; kept apart from the loop so the loop reads as its steps.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)


class LoopClock:
    """Time per named phase of a loop, logged every LOG_EVERY_S (monotonic seconds) and
    then started afresh; each poll's phases in milliseconds at DEBUG."""

    LOG_EVERY_S = 10.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.spent: dict[str, float] = {}
        self.loops = self.records = 0
        self.started = time.monotonic()
        self._last = ""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - begin
            self.spent[name] = self.spent.get(name, 0.0) + took
            self._last = f"{self._last} {name} {took * 1000:.0f} ms"

    def tick(self, records: int) -> None:
        """One pass of the loop done, having read `records`."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("poll: %d records;%s", records, self._last)
        self._last = ""
        self.loops += 1
        self.records += records
        elapsed = time.monotonic() - self.started
        if elapsed >= self.LOG_EVERY_S:
            phases = ", ".join(f"{k} {v / elapsed:.0%}" for k, v in sorted(self.spent.items()))
            log.info(
                "loop: %d polls, %d records in %.0f s (%.2f s a poll); %s",
                self.loops,
                self.records,
                elapsed,
                elapsed / self.loops,
                phases,
            )
            self._reset()
