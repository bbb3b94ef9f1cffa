"""Which reports are owed when (services/alerts/reports.py `owed`), without an API: each
line's shifts once over, the plant's production days and ISO weeks once over; a day no
line works (a Sunday of a Monday-to-Friday plant) gets no day report. And who gets a
shift's report: the line's own recipients, else the shift's, else `to`."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from linepulse.calendar import Calendar
from linepulse.config import ConfigError, PlantConfig, parse_config
from services.alerts.metrics import AlertMetrics
from services.alerts.outbox import Outbox
from services.alerts.reports import ShiftReportSender

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "s",
            "shifts": [{"name": "early", "start": "06:00", "end": "14:00", "days": WEEKDAYS}],
            "lines": [{"id": "L1", "machines": [{"id": "M1"}]}],
            "alerts": {
                "channels": [{"id": "log", "type": "console"}],
                "people": {"max": {"name": "Max", "channels": ["log"]}},
                "manager": "max",
                "reports": {"api_url": "http://127.0.0.1:1", "after": "5m", "lookback": "30h"},
            },
        }
    )


def owed_at(tmp_path: Path, moment: datetime) -> list[str]:
    config = plant()
    assert config.alerts.reports is not None
    metrics = AlertMetrics.create(CollectorRegistry())
    outbox = Outbox(tmp_path / "outbox.sqlite", config.alerts, metrics)
    try:
        sender = ShiftReportSender(config, config.alerts.reports, outbox, printer=None)
        return sorted(due.name for due in sender.owed(int(moment.timestamp() * 1000)))
    finally:
        outbox.close()


def test_a_working_day_owes_its_shift_and_its_day(tmp_path: Path) -> None:
    # Tuesday 2026-11-03, 00:10: Monday's early shift and Monday's day are over; week 44
    # ended on Monday at 00:00, within the lookback (30 h) still.
    assert owed_at(tmp_path, datetime(2026, 11, 3, 0, 10, tzinfo=UTC)) == [
        "L1 early 2026-11-02",
        "plant day 2026-11-02",
        "plant week 2026-W44",
    ]


def test_a_sunday_owes_no_day_report_but_the_week_is_over(tmp_path: Path) -> None:
    # Monday 2026-11-09, 00:10: Sunday the 8th was no working day; week 45 is over; the
    # lookback (30 h) still reaches Saturday's end, but Saturday had no shift either.
    assert owed_at(tmp_path, datetime(2026, 11, 9, 0, 10, tzinfo=UTC)) == ["plant week 2026-W45"]


def test_a_shifts_own_recipients_replace_to_and_a_lines_come_first(tmp_path: Path) -> None:
    """`alerts.reports.shifts` (the night shift's report to the maintenance lead too):
    that shift's reports go to its list instead of `to`; a line's own list (`lines`)
    still comes first."""
    data = plant().model_dump(mode="json", by_alias=True, exclude_none=True)
    data["shifts"].append({"name": "night", "start": "22:00", "end": "06:00", "days": WEEKDAYS})
    data["lines"].append({"id": "L2", "machines": [{"id": "M2"}]})
    data["alerts"]["people"]["kai"] = {"name": "Kai", "channels": ["log"]}
    data["alerts"]["reports"] |= {"shifts": {"night": ["kai", "manager"]}, "lines": {"L2": ["kai"]}}
    config = parse_config(data)
    assert config.alerts.reports is not None
    outbox = Outbox(
        tmp_path / "outbox.sqlite", config.alerts, AlertMetrics.create(CollectorRegistry())
    )
    try:
        sender = ShiftReportSender(config, config.alerts.reports, outbox, printer=None)
        calendar = Calendar(config)

        def who(line: str, shift: str) -> list[str]:
            (span,) = [s for s in calendar.spans_on(line, date(2026, 11, 3)) if s.name == shift]
            return [person for person, _ in sender.recipients(span)]

        assert who("L1", "early") == ["max"]  # `to`: next_lead (none) and the manager
        assert who("L1", "night") == ["kai", "max"]
        assert who("L2", "night") == ["kai"]
    finally:
        outbox.close()


def test_a_shift_named_for_recipients_must_exist() -> None:
    data = plant().model_dump(mode="json", by_alias=True, exclude_none=True)
    data["alerts"]["reports"]["shifts"] = {"nite": ["max"]}
    with pytest.raises(
        ConfigError, match=r"alerts\.reports\.shifts: unknown shift 'nite' \(there are: early\)"
    ):
        parse_config(data)
    data["alerts"]["reports"]["shifts"] = {"early": ["bob"]}
    with pytest.raises(ConfigError, match=r"alerts\.reports\.shifts\.early: 'bob' is neither"):
        parse_config(data)
