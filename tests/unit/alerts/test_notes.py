"""Shift notes (services/alerts/notes.py): a note belongs to the shift named, else the one
running, else the last one ended; notes of a shift come back oldest first and only
theirs; old ones are pruned; the report's section escapes what people write."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from linepulse.calendar import Calendar
from linepulse.config import PlantConfig, parse_config
from linepulse.report_page import notes_html, notes_text
from services.alerts.errors import InvalidNote
from services.alerts.notes import DAY_MS, KEEP_DAYS, ShiftNotes
from services.alerts.store import AlertStore

DAY = date(2026, 11, 2)


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "plant1",
            "shifts": [
                {"name": "early", "start": "06:00", "end": "14:00"},
                {"name": "late", "start": "14:00", "end": "22:00"},
            ],
            "lines": [
                {"id": "L1", "machines": [{"id": "M1"}]},
                {"id": "L2", "machines": [{"id": "M2"}]},
            ],
        }
    )


def at(clock: str, day: date = DAY) -> int:
    hours, minutes = (int(part) for part in clock.split(":"))
    return int(
        datetime(day.year, day.month, day.day, hours, minutes, tzinfo=UTC).timestamp() * 1000
    )


@pytest.fixture
def notes(tmp_path: Path) -> ShiftNotes:
    return ShiftNotes(AlertStore.in_dir(tmp_path), Calendar(plant()))


@pytest.mark.parametrize(
    ("written", "named", "belongs"),
    [
        ("10:00", (None, None), ("2026-11-02", "early")),  # running
        ("14:30", (None, None), ("2026-11-02", "late")),
        ("23:10", (None, None), ("2026-11-02", "late")),  # the handover after the late shift
        ("05:00", (None, None), ("2026-11-01", "late")),  # before the early one: last night's
        ("15:00", (DAY, "early"), ("2026-11-02", "early")),  # named
    ],
)
def test_a_note_belongs_to_the_shift_named_running_or_last_ended(
    notes: ShiftNotes,
    written: str,
    named: tuple[date | None, str | None],
    belongs: tuple[str, str],
) -> None:
    note = notes.add("L1", "text", "ann", at(written), *named)
    assert (note["date"], note["shift"]) == belongs
    assert note["at"] == f"2026-11-02T{written}:00Z"


def test_a_shift_named_wrong_or_by_half_is_refused(notes: ShiftNotes) -> None:
    with pytest.raises(
        InvalidNote, match="L1 has no shift 'night' on 2026-11-02; its shifts: early, late"
    ):
        notes.add("L1", "text", "ann", at("10:00"), DAY, "night")
    with pytest.raises(InvalidNote, match="both `date` and `shift`"):
        notes.add("L1", "text", "ann", at("10:00"), DAY, None)


def test_a_shifts_notes_are_its_own_oldest_first(notes: ShiftNotes) -> None:
    second = notes.add("L1", "spare ordered", "bob", at("13:00"))
    first = notes.add("L1", "nozzle 3 drips", "ann", at("09:00"))
    notes.add("L2", "other line", "ann", at("09:30"))
    notes.add("L1", "late shift", "cem", at("15:00"))
    assert notes.of_shift("L1", DAY, "early") == [first, second]
    assert [n["text"] for n in notes.of_shift("L1", DAY, "late")] == ["late shift"]
    assert notes.of_shift("L1", date(2026, 11, 3), "early") == []


def test_notes_older_than_the_keep_are_pruned(notes: ShiftNotes) -> None:
    notes.add("L1", "old", "ann", at("09:00"))
    later = at("09:00") + (KEEP_DAYS + 1) * DAY_MS
    notes.add("L1", "new", "ann", later)
    assert notes.of_shift("L1", DAY, "early") == []


def test_the_reports_section_escapes_and_keeps_lines() -> None:
    written = [{"by": "ann <x>", "text": "drips\n<script>alert(1)</script>", "at": "", "id": "1"}]
    page = notes_html(written)
    assert "<script>" not in page
    assert "drips<br>&lt;script&gt;" in page
    assert "ann &lt;x&gt;" in page
    assert notes_html([]) == ""
    assert notes_text(written) == "note by ann <x>: drips\n  <script>alert(1)</script>\n"
