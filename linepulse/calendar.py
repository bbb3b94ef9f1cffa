"""The shift calendar in UTC: shift instances, breaks and planned time per line.

Shifts are configured in local wall-clock time; here they become UTC intervals for each
production date, which is where DST is applied: a night shift over a spring-forward
change is an hour shorter, over a fall-back change an hour longer. A local time that
does not exist (inside a spring-forward gap) moves forward by the gap; an ambiguous one
takes its first occurrence. A night shift belongs to the date it starts on.

All times are epoch milliseconds, UTC; every boundary is a whole minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from linepulse.config import WEEKDAYS, PlantConfig

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def local_to_ms(wall: datetime, zone: ZoneInfo) -> int:
    """Epoch ms of a naive local wall-clock time (fold=0: gap moves forward, overlap first)."""
    aware = wall.replace(tzinfo=zone, fold=0)
    offset = aware.utcoffset()
    assert offset is not None  # noqa: S101 - ZoneInfo always yields an offset
    naive_utc = wall - offset
    delta = naive_utc - datetime(1970, 1, 1)  # noqa: DTZ001 - naive UTC arithmetic
    return delta.days * DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000


def ms_to_local_date(ms: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone).date()


def iso_week(day: date) -> str:
    """`2026-W45`: the ISO week (Monday to Sunday) of a production day."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def rfc3339(epoch_ms: int) -> str:
    """`2024-05-01T06:00:00.000Z` from epoch milliseconds: to the millisecond, where two
    instants of one second must stay apart (a key, an alert's start)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text(ms: int) -> str:
    """Epoch ms as RFC 3339 in UTC to the second (`2026-11-02T06:00:00Z`)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")[:-6] + "Z"


def text_ms(text: str) -> int:
    """RFC 3339 text with an offset (as the store serves times) as epoch ms."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass(frozen=True)
class ShiftSpan:
    """One occurrence of a shift on one production date."""

    line: str
    name: str
    day: date
    start: int
    end: int
    breaks: tuple[tuple[int, int], ...]

    def planned(self) -> list[tuple[int, int]]:
        """The span less its breaks: disjoint, sorted [start, end) intervals."""
        out, cursor = [], self.start
        for begin, end in self.breaks:
            if begin > cursor:
                out.append((cursor, begin))
            cursor = max(cursor, end)
        if cursor < self.end:
            out.append((cursor, self.end))
        return out

    @property
    def slug(self) -> str:
        """`line-1_2026-05-04_early`: names a file of this shift (a report's PDF)."""
        parts = (self.line, self.day.isoformat(), self.name)
        return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", part) for part in parts)


@dataclass
class Calendar:
    """Shift spans per line and date, memoised: a pure function of the frozen config."""

    plant: PlantConfig
    _by_day: dict[tuple[str, date], tuple[ShiftSpan, ...]] = field(default_factory=dict)
    # Memos of pure lookups made by windows.py (minute grids, live window keys).
    memo: dict[object, Any] = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        return self.plant.zone

    def spans_on(self, line_id: str, day: date) -> tuple[ShiftSpan, ...]:
        key = (line_id, day)
        cached = self._by_day.get(key)
        if cached is not None:
            return cached
        line = next(li for li in self.plant.lines if li.id == line_id)
        spans: list[ShiftSpan] = []
        if day not in self.plant.days_off_for(line):
            weekday = WEEKDAYS[day.weekday()]
            for shift in self.plant.shifts_for(line):
                if weekday not in shift.days:
                    continue
                begin = datetime.combine(day, shift.start)
                breaks = tuple(
                    sorted(
                        (
                            local_to_ms(
                                begin + timedelta(minutes=shift.offset_min(b.start)), self.zone
                            ),
                            local_to_ms(
                                begin
                                + timedelta(minutes=shift.offset_min(b.end) or shift.length_min),
                                self.zone,
                            ),
                        )
                        for b in shift.breaks
                    )
                )
                spans.append(
                    ShiftSpan(
                        line=line_id,
                        name=shift.name,
                        day=day,
                        start=local_to_ms(begin, self.zone),
                        end=local_to_ms(begin + timedelta(minutes=shift.length_min), self.zone),
                        breaks=breaks,
                    )
                )
        result = tuple(sorted(spans, key=lambda s: s.start))
        self._by_day[key] = result
        return result

    def spans(self, line_id: str, start: int, end: int) -> list[ShiftSpan]:
        """Shift spans of a line that overlap [start, end), in time order."""
        first = ms_to_local_date(start, self.zone) - timedelta(days=1)
        last = ms_to_local_date(max(start, end - 1), self.zone)
        out: list[ShiftSpan] = []
        day = first
        while day <= last:
            out.extend(s for s in self.spans_on(line_id, day) if s.start < end and s.end > start)
            day += timedelta(days=1)
        return out

    def planned_intervals(self, line_id: str, start: int, end: int) -> list[tuple[int, int]]:
        """Planned (in a shift, not in a break) intervals clipped to [start, end)."""
        out = []
        for span in self.spans(line_id, start, end):
            for begin, finish in span.planned():
                lo, hi = max(begin, start), min(finish, end)
                if lo < hi:
                    out.append((lo, hi))
        return out

    def planned_ms(self, line_id: str, start: int, end: int) -> int:
        """Calendar planned time in [start, end), ms (before planned stops are taken off)."""
        if end <= start:
            return 0
        return sum(hi - lo for lo, hi in self.planned_intervals(line_id, start, end))

    def day_bounds(self, day: date) -> tuple[int, int]:
        """The production day `day`: from `day_start` local to the next, 23-25 h long."""
        start = datetime.combine(day, self.plant.day_start)
        return local_to_ms(start, self.zone), local_to_ms(start + timedelta(days=1), self.zone)

    @property
    def day_start_ms(self) -> int:
        t: time = self.plant.day_start
        return (t.hour * 60 + t.minute) * MINUTE_MS
