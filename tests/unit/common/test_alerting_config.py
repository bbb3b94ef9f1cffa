"""The `alerts` section of the plant config: durations, rule shapes, and names that exist."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from linepulse.alerting import KpiField, Rule, parse_duration
from linepulse.config import ConfigError, parse_config
from services.kpi.core.engine import VALUE_COLUMNS


def plant(alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "site": "s",
        "lines": [{"id": "L1", "machines": [{"id": "m1"}]}],
        "alerts": {
            "channels": [{"id": "log", "type": "console"}],
            "people": {"ann": {"name": "Ann", "channels": ["log"]}},
            **alerts,
        },
        **extra,
    }


def test_durations_read_as_seconds() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("10m") == 600
    assert parse_duration("2h") == 7200
    assert parse_duration("500ms") == 0.5
    assert parse_duration(45) == 45
    for bad in ("10 minutes", "-5s", -1, "m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_a_kpi_rule_can_watch_every_numeric_field_of_the_record() -> None:
    assert set(get_args(KpiField)) == set(VALUE_COLUMNS)


def test_rules_load_with_for_and_hysteresis() -> None:
    rule = Rule.model_validate(
        {"name": "low", "kpi": "oee", "window": "1h", "op": "<", "threshold": 0.6,
         "clear": 0.65, "for": "10m"}
    )  # fmt: skip
    assert (rule.for_, rule.clear, rule.escalate_after) == (600.0, 0.65, 900.0)


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        ({"rules": [{"name": "r", "op": "<", "threshold": 1}]}, "exactly one of kpi, signal"),
        ({"rules": [{"name": "r", "kpi": "oee", "threshold": 1}]}, "op is required"),
        ({"rules": [{"name": "r", "kpi": "oee", "op": "<"}]}, "exactly one of threshold"),
        ({"rules": [{"name": "r", "signal": "state", "op": "<", "value": "down"}]}, "== or !="),
        (
            {"rules": [{"name": "r", "kpi": "oee", "op": "<", "threshold": 0.6, "clear": 0.5}]},
            "clear must be at or above the threshold",
        ),
        ({"rules": [{"name": "r", "no_data": "2m", "scope": {"lines": ["L9"]}}]}, "unknown line"),
        (
            {"rules": [{"name": "r", "no_data": "2m"}, {"name": "r", "no_data": "5m"}]},
            "rule name 'r' is used twice",
        ),
        ({"manager": "zoe"}, "alerts.manager: unknown person 'zoe'"),
        ({"broadcast": ["nope"]}, "alerts.broadcast: unknown channel 'nope'"),
        ({"channels": [{"id": "w", "type": "webhook"}]}, "a webhook channel needs url"),
        ({"channels": [{"id": "p", "type": "pagerduty"}]}, "routing_key_env"),
    ],
)
def test_bad_alert_settings_are_refused_naming_the_key(
    alerts: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(plant(alerts))
    assert message in str(caught.value)


def test_a_shift_lead_must_be_a_known_person() -> None:
    shifts = [{"name": "day", "start": "06:00", "end": "14:00", "lead": "ghost"}]
    with pytest.raises(ConfigError, match=r"shifts\[0\]\.lead: unknown person 'ghost'"):
        parse_config(plant({}, shifts=shifts))
