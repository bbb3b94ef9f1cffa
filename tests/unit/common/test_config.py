"""The plant config loader: what users write in YAML, and the errors they get back."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from linepulse.config import ConfigError, load_config, parse_config

MINIMAL = """
site: plant-a
timezone: Europe/Berlin
shifts:
  - name: night
    start: 22:00
    end: 06:00
    days: [Monday, tue]
    breaks:
      - {start: 02:00, end: 02:30}
lines:
  - id: line-1
    machines:
      - id: filler-1
        ideal_cycle_time_s: 1.5
        products: {small: 1.0, large: {ideal_cycle_time_s: 2.5}}
        state_map: {6: running, 9: down, "Held": idle}
        counter_max: 2147483647
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


def test_a_plain_yaml_file_loads_with_unquoted_times_and_numeric_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    shift = config.shifts[0]
    assert (shift.start, shift.end) == (time(22, 0), time(6, 0))  # YAML reads 22:00 as 1320
    assert shift.days == ("mon", "tue")
    assert shift.length_min == 8 * 60
    machine = config.lines[0].machines[0]
    assert machine.state_map == {"6": "running", "9": "down", "Held": "idle"}
    assert machine.products["large"].ideal_cycle_time_s == 2.5
    assert machine.counter_max == {
        "total_count": 2147483647,
        "good_count": 2147483647,
        "reject_count": 2147483647,
        "rework_count": 2147483647,
    }
    assert config.kpi.lateness_s == 10
    assert config.day_start == time(0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("end: 06:00", "end: 23:00"), "shifts[0]: breaks[0] (02:00-02:30) must lie inside"),
        (
            ("timezone: Europe/Berlin", "timezone: Berlin"),
            "timezone: unknown IANA timezone 'Berlin'",
        ),
        (
            ("ideal_cycle_time_s: 1.5", "ideal_cycle_time_s: fast"),
            "lines[0].machines[0].ideal_cycle_time_s",
        ),
        (("9: down", "9: broken"), "lines[0].machines[0].state_map.9: Input should be 'running'"),
        (("days: [Monday, tue]", "days: [funday]"), "shifts[0].days[0]"),
        (("site: plant-a", "site: plant-a\nsite_name: x"), "site_name: unknown key"),
        (("counter_max: 2147483647", "counter_max: 0"), "counter_max"),
    ],
)
def test_errors_name_the_key_at_fault(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL.replace(*change)))
    assert message in str(caught.value)
    assert str(tmp_path / "plant.yaml") in str(caught.value)


def test_overlapping_shifts_and_duplicate_ids_are_refused() -> None:
    base = {"site": "s", "lines": [{"id": "l", "machines": [{"id": "m"}]}]}
    with pytest.raises(ConfigError, match="shifts 'a' and 'b' overlap on mon"):
        parse_config(
            {
                **base,
                "shifts": [
                    {"name": "a", "start": "06:00", "end": "14:30"},
                    {"name": "b", "start": "14:00", "end": "22:00"},
                ],
            }
        )
    with pytest.raises(ConfigError, match=r"lines\[1\].machines\[0\].id: machine 'm' is already"):
        parse_config(
            {
                "site": "s",
                "lines": [
                    {"id": "l", "machines": [{"id": "m"}]},
                    {"id": "k", "machines": [{"id": "m"}]},
                ],
            }
        )


def test_a_night_shift_and_the_next_morning_shift_do_not_overlap() -> None:
    config = parse_config(
        {
            "site": "s",
            "shifts": [
                {"name": "night", "start": "22:00", "end": "06:00"},
                {"name": "early", "start": "06:00", "end": "14:00"},
                {"name": "late", "start": "14:00", "end": "22:00"},
            ],
            "lines": [{"id": "l", "machines": [{"id": "m"}]}],
        }
    )
    assert [s.name for s in config.shifts] == ["night", "early", "late"]


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read plant config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(tmp_path, "site: [unclosed"))
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_per_line_shifts_override_the_site_calendar() -> None:
    config = parse_config(
        {
            "site": "s",
            "shifts": [{"name": "day", "start": "08:00", "end": "16:00"}],
            "lines": [
                {"id": "a", "machines": [{"id": "m1"}]},
                {
                    "id": "b",
                    "machines": [{"id": "m2"}],
                    "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
                    "days_off": ["2026-12-25"],
                },
            ],
        }
    )
    assert [s.name for s in config.shifts_for(config.lines[0])] == ["day"]
    assert [s.name for s in config.shifts_for(config.lines[1])] == ["early"]
    assert [str(d) for d in config.days_off_for(config.lines[1])] == ["2026-12-25"]


def test_a_config_dumped_by_the_model_loads_again(tmp_path: Path) -> None:
    import yaml

    config = load_config(write(tmp_path, MINIMAL))
    again = write(tmp_path, yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(again) == config
