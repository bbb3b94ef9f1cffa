"""The ingesters' sink as lists in memory, for tests of an ingester alone: what it hands
over is kept at once (`kept` returns at once), as a bus that acknowledges instantly would."""

from __future__ import annotations

import polars as pl

from services.ingest.samples import DeadLetter


class ListSink:
    """Every frame and dead letter an ingester hands over, in order."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.letters: list[DeadLetter] = []
        self.samples = 0
        self._handed = 0  # puts and dead_letter calls so far

    async def put(self, events: pl.DataFrame) -> None:
        self.frames.append(events)
        self.samples += events.height
        self._handed += 1

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)
        self._handed += 1

    def position(self) -> int:
        return self._handed - 1

    async def kept(self, position: int) -> None:
        """Everything handed over is kept already."""
