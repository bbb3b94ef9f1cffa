"""Shift notes: what a shift lead writes for the next one ("filler-1 nozzle 3 drips, spare
ordered"), kept with the shift they belong to and mailed in its report.

A note belongs to one shift of one line: the one named (`date`, `shift`), else the one
running when it is written, else the last one that ended (a lead writes the handover just
after the shift). Notes are rows of the alerts service's store (table `notes`), so a
replicated service carries them to its standbys like its alerts and silences
(services/alerts/replication.py), and a write made on a standby is passed to the active
instance (services/alerts/forwarding.py). They are kept `KEEP_DAYS`.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any, Final

from linepulse.calendar import Calendar, ShiftSpan, utc_text
from services.alerts.errors import InvalidNote
from services.alerts.store import AlertStore

KEEP_DAYS: Final = 400  # a year of handovers, and the same month of the year before
DAY_MS: Final = 86_400_000
MAX_TEXT: Final = 2000


class ShiftNotes:
    """Notes per line and shift, in the alerts store."""

    def __init__(self, store: AlertStore, calendar: Calendar) -> None:
        self.store = store
        self.calendar = calendar

    def shift_of(self, line: str, at_ms: int, day: date | None, name: str | None) -> ShiftSpan:
        """The shift a note of `line` written at `at_ms` belongs to (module docstring)."""
        if day is not None or name is not None:
            if day is None or name is None:
                raise InvalidNote("name the shift with both `date` and `shift`, or neither")
            spans = self.calendar.spans_on(line, day)
            found = next((s for s in spans if s.name == name), None)
            if found is None:
                there = ", ".join(s.name for s in spans) or "none (a day off)"
                raise InvalidNote(f"{line} has no shift {name!r} on {day}; its shifts: {there}")
            return found
        recent = self.calendar.spans(line, at_ms - 7 * DAY_MS, at_ms + 1)
        started = [s for s in recent if s.start <= at_ms]
        if not started:
            raise InvalidNote(f"{line} has had no shift in the last week to write a note for")
        return started[-1]  # running, else the last one ended

    def add(
        self,
        line: str,
        text: str,
        by: str,
        at_ms: int,
        day: date | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        span = self.shift_of(line, at_ms, day, name)
        note = {
            # Time first (ms, hex), so notes of one second keep the order written.
            "id": f"{at_ms:012x}{uuid.uuid4().hex[:12]}",
            "line": line,
            "date": span.day.isoformat(),
            "shift": span.name,
            "text": text,
            "by": by,
            "at": utc_text(at_ms),
        }
        key = f"{line}/{note['date']}/{span.name}/{note['id']}"
        self.store.commit({"notes": {key: (at_ms, note)}}, prune_before=self._prune(at_ms))
        return note

    def of_shift(self, line: str, day: date, name: str) -> list[dict[str, Any]]:
        """The notes of one shift, oldest first."""
        prefix = f"{line}/{day.isoformat()}/{name}/"
        notes = [doc for key, doc in self.store.load("notes").items() if key.startswith(prefix)]
        return sorted(notes, key=lambda note: note["id"])

    @staticmethod
    def _prune(now_ms: int) -> dict[Any, int]:
        return {"notes": now_ms - KEEP_DAYS * DAY_MS}
