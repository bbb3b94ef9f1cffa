"""`linepulse check` without --connect: what a plant config means, as the services read it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from linepulse.config import parse_config
from linepulse.config_report import Report, build_report, render_text, warnings, zone_changes
from services.alerts.routing import Duty
from services.app.cli import app

# Wednesday of the week whose Sunday is the spring-forward change in Berlin (2026-03-29).
NOW = datetime(2026, 3, 25, 10, 0, tzinfo=UTC)


def plant_data() -> dict[str, Any]:
    return {
        "site": "plant-a",
        "timezone": "Europe/Berlin",
        "days_off": ["2026-03-27"],
        "shifts": [
            {"name": "day", "start": "06:00", "end": "18:00", "lead": "ann", "backup": "bob"},
            {
                "name": "night",
                "start": "22:00",
                "end": "06:00",
                "days": ["sat"],
                "breaks": [{"start": "01:00", "end": "01:30"}],
                "lead": "bob",
            },
        ],
        "lines": [
            {
                "id": "line-1",
                "machines": [
                    {"id": "filler", "ideal_cycle_time_s": 0.5},
                    {"id": "cartoner", "counters": ["good_count", "reject_count"]},
                ],
            },
            {
                "id": "line-2",
                "shifts": [{"name": "office", "start": "08:00", "end": "16:00", "days": ["mon"]}],
                "machines": [{"id": "press", "products": {"a": 2.0, "b": 3.0}}],
            },
        ],
        "sources": {
            "opcua": [
                {
                    "id": "plc",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "machines": [{"machine": "filler", "nodes": {"state": "ns=2;s=F.State"}}],
                }
            ]
        },
        "alerts": {
            "channels": [
                {"id": "pager", "type": "console"},
                {"id": "hook", "type": "webhook", "url": "http://127.0.0.1:9/x"},
            ],
            "people": {
                "ann": {"name": "Ann", "channels": ["pager"]},
                "bob": {"name": "Bob", "channels": ["pager", "hook"]},
                "max": {"name": "Max", "channels": ["hook"]},
            },
            "manager": "max",
            "broadcast": ["hook"],
            "rules": [
                {"name": "low-oee", "kpi": "oee", "op": "<", "threshold": 0.5},
                {"name": "silent", "no_data": "2m", "escalate_after": "5m"},
            ],
        },
    }


@pytest.fixture
def report() -> Report:
    plant = parse_config(plant_data())
    return build_report(plant, Duty(plant), NOW)


def test_the_week_runs_monday_to_sunday_with_local_and_utc_times(report: Report) -> None:
    assert report.week_start == date(2026, 3, 23)
    line_1 = [s for s in report.shifts if s.lines == ("line-1",)]
    # day shifts Mon-Sun but Friday (a day off), one night shift on Saturday
    assert [(s.day.day, s.name) for s in line_1] == [
        (23, "day"),
        (24, "day"),
        (25, "day"),
        (26, "day"),
        (28, "day"),
        (28, "night"),
        (29, "day"),
    ]
    monday = line_1[0]
    assert (monday.local_start.hour, monday.utc_start.hour) == (6, 5)  # CET, UTC+1
    sunday = line_1[-1]
    assert (sunday.local_start.hour, sunday.utc_start.hour) == (6, 4)  # CEST, UTC+2
    # line-2 has shifts of its own but the site's days off
    assert [(d.lines, d.day) for d in report.days_off] == [
        (("line-1",), date(2026, 3, 27)),
        (("line-2",), date(2026, 3, 27)),
    ]


def test_a_night_shift_over_the_spring_forward_change_is_an_hour_shorter(report: Report) -> None:
    night = next(s for s in report.shifts if s.name == "night")
    assert night.local_start == datetime(2026, 3, 28, 22, tzinfo=ZoneInfo("Europe/Berlin"))
    assert night.utc_start == datetime(2026, 3, 28, 21, tzinfo=UTC)
    assert night.utc_end == datetime(2026, 3, 29, 4, tzinfo=UTC)
    assert (night.length_min, night.planned_min) == (7 * 60, 6 * 60 + 30)
    assert night.notes == ("crosses midnight", "DST: 7 h instead of 8 h")


def test_dst_changes_ahead_name_the_shifts_they_change(report: Report) -> None:
    spring, autumn = report.dst
    assert spring.at_utc == datetime(2026, 3, 29, 1, tzinfo=UTC)
    assert (spring.local_before.hour, spring.local_after.hour) == (2, 3)
    assert (spring.offset_before, spring.offset_after) == ("+01:00", "+02:00")
    assert spring.affected == ("night of Sat 2026-03-28 (line-1): 7 h",)
    assert autumn.at_utc == datetime(2026, 10, 25, 1, tzinfo=UTC)
    assert (autumn.local_before.hour, autumn.local_after.hour) == (3, 2)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Asia/Tokyo", []),
        ("America/New_York", [datetime(2026, 11, 1, 6, tzinfo=UTC)]),
        # Lord Howe Island moves its clocks by 30 minutes, at 02:00 local (UTC+11).
        ("Australia/Lord_Howe", [datetime(2026, 10, 3, 15, 30, tzinfo=UTC)]),
    ],
)
def test_zone_changes_are_found_to_the_minute(zone: str, expected: list[datetime]) -> None:
    start = datetime(2026, 4, 10, tzinfo=UTC)
    end = datetime(2026, 12, 31, tzinfo=UTC)
    found = zone_changes(ZoneInfo(zone), int(start.timestamp() * 1000), int(end.timestamp() * 1000))
    assert [datetime.fromtimestamp(ms / 1000, tz=UTC) for ms in found] == expected


def test_routing_lists_who_is_paged_per_shift_and_channel(report: Report) -> None:
    pages = {
        (r.lines, r.shift): [(p.step, p.person, p.channels) for p in r.pages]
        for r in report.routing
    }
    assert pages[("line-1",), "day"] == [
        ("first page", "ann", ("pager (console)",)),
        ("escalation 1", "bob", ("pager (console)", "hook (webhook)")),
        ("escalation 2", "max", ("hook (webhook)",)),
    ]
    assert pages[("line-1",), "night"] == [
        ("first page", "bob", ("pager (console)", "hook (webhook)")),
        ("escalation 1", "max", ("hook (webhook)",)),
    ]
    assert pages[("line-1",), "(off shift)"] == [("first page", "max", ("hook (webhook)",))]
    # line-2's own shift has no lead: the manager is paged first
    assert pages[("line-2",), "office"] == [("first page", "max", ("hook (webhook)",))]
    assert report.broadcast == ("hook (webhook)",)
    assert report.escalate_after == ("5m", "15m")


def test_machines_show_cycle_times_roles_sources_and_warnings(report: Report) -> None:
    filler, cartoner = report.lines[0].machines
    assert (filler.ideal_cycle_time_s, filler.roles, filler.source) == (0.5, ("constraint",), "plc")
    assert cartoner.roles == ("output",)
    assert cartoner.counters == ("good_count", "reject_count")
    assert report.lines[1].calendar == "own"
    assert report.warnings[0].startswith(
        "lines[0].machines[1] (cartoner) has no ideal_cycle_time_s"
    )
    assert report.warnings[1:] == (
        "lines[0].machines[1] (cartoner): no source reads it (sources.opcua, sources.mqtt)",
        "lines[1].machines[0] (press): no source reads it (sources.opcua, sources.mqtt)",
    )


def test_the_text_is_aligned_and_names_every_section(report: Report) -> None:
    text = render_text(report)
    for heading in ("Lines and machines", "Shifts this week", "DST changes", "Alert routing"):
        assert heading in text
    assert "Warnings (3)" in text
    night = next(line for line in text.splitlines() if " night " in line)
    assert "22:00-06:00 (+1d)" in night
    assert "21:00-04:00 (+1d)" in night
    header = next(line for line in text.splitlines() if line.strip().startswith("lines  "))
    row = next(line for line in text.splitlines() if "Sat 03-28" in line)
    assert row.index("Sat") == header.index("day")  # columns line up
    assert row.index("06:00-18:00") == header.index("local")
    assert row.index("05:00-17:00") == header.index("UTC")


def test_the_check_command_prints_the_report_and_json(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(plant_data()))
    runner = CliRunner()
    text = runner.invoke(app, ["check", "--config", str(config)])
    assert text.exit_code == 0, text.output
    assert "cartoner" in text.output
    assert "Alert routing" in text.output
    as_json = runner.invoke(app, ["check", "--config", str(config), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert '"site": "plant-a"' in as_json.output


def test_the_check_command_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    data = plant_data()
    data["lines"][0]["machines"][0]["ideal_cycle_time_s"] = -1
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["check", "--config", str(config)])
    assert result.exit_code == 2
    assert "lines[0].machines[0].ideal_cycle_time_s" in result.output


def test_a_chart_of_a_signal_its_opcua_source_does_not_read_is_warned() -> None:
    """press-1 is on OPC-UA with a temperature node and no fill weight; cartoner-3 is on
    MQTT, which publishes any signal."""
    path = Path(__file__).parents[3] / "examples" / "simulated-plant" / "plant.yaml"
    data = yaml.safe_load(path.read_text("utf-8"))
    data["spc"] = [
        {"machine": "press-1", "signal": "fill_g"},
        {"machine": "press-1", "signal": "temperature", "chart": "imr"},
        {"machine": "cartoner-3", "signal": "fill_g"},
    ]
    found = [w for w in warnings(parse_config(data)) if w.startswith("spc")]
    assert found == [
        "spc[0] (press-1/fill_g): press-1's OPC-UA source has no 'fill_g' node, so the "
        "chart gets no sample"
    ]
