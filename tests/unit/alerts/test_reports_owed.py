"""Which reports are owed when (services/alerts/reports.py `owed`), without an API: each
line's shifts once over, the plant's production days and ISO weeks once over; a day no
line works (a Sunday of a Monday-to-Friday plant) gets no day report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
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
