"""The `alerts` section of the plant config: durations, rule shapes, and names that exist."""

from __future__ import annotations

from typing import Any

import pytest

from linepulse.alerting import (
    FORECAST_SUMMARY,
    Rule,
    check_forecast_rules,
    parse_duration,
)
from linepulse.config import ConfigError, PlantConfig, parse_config


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


# -- forecast rules -----------------------------------------------------------------------

FORECAST = {"name": "behind", "forecast": "target_miss"}


def test_forecast_rule_defaults() -> None:
    rule = Rule.model_validate({**FORECAST, "margin": 0.1, "for": "10m"})
    assert (rule.forecast, rule.margin, rule.for_, rule.window) == (
        "target_miss",
        0.1,
        600,
        "shift",
    )
    assert rule.summary == FORECAST_SUMMARY
    assert "{projected}" in rule.summary
    assert "{shortfall}" in rule.summary
    assert Rule.model_validate(FORECAST).margin == 0.05
    assert Rule.model_validate({**FORECAST, "summary": "{line} behind"}).summary == "{line} behind"
    assert (
        Rule.model_validate({"name": "s", "no_data": 5}).summary == "{rule} on {machine}: {value}"
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({**FORECAST, "forecast": "target_hit"}, "forecast"),
        ({**FORECAST, "kpi": "oee", "op": "<", "threshold": 1}, "exactly one of kpi, signal"),
        ({**FORECAST, "margin": 1}, "less than 1"),
        ({**FORECAST, "margin": -0.1}, "greater than or equal to 0"),
        ({**FORECAST, "op": "<"}, "drop ['op']"),
        ({**FORECAST, "threshold": 100, "clear": 120}, "drop ['threshold', 'clear']"),
        ({**FORECAST, "window": "1h"}, "window must be shift"),
        ({**FORECAST, "scope": {"machines": ["m1"]}}, "use scope.lines"),
        ({"name": "r", "kpi": "oee", "op": "<", "threshold": 1, "margin": 0.1}, "margin is for"),
    ],
)
def test_bad_forecast_rules_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(plant({"rules": [rule]}))
    assert "alerts.rules[0]" in str(caught.value)
    assert message in str(caught.value)


def targeted(*rules: dict[str, Any], target: bool = True) -> PlantConfig:
    """A two-line plant, L1 with a shift target when `target`, L2 without; the rules are
    put in after validation, so that check_forecast_rules is tested on its own."""
    data = plant({})
    data["lines"] = [
        {"id": "L1", "machines": [{"id": "m1"}], **({"target": {"parts": 900}} if target else {})},
        {"id": "L2", "machines": [{"id": "m2"}]},
    ]
    config = parse_config(data)
    parsed = tuple(Rule.model_validate(r) for r in rules)
    return config.model_copy(update={"alerts": config.alerts.model_copy(update={"rules": parsed})})


def test_a_forecast_rule_needs_targets_on_its_lines() -> None:
    check_forecast_rules(targeted(FORECAST))  # every line with a target: L1
    check_forecast_rules(targeted({**FORECAST, "scope": {"lines": ["L1"]}}))
    with pytest.raises(
        ValueError,
        match=r"^alerts\.rules\[1\]\.scope\.lines\[1\]: line 'L2' has no"
        r" target \(lines\[1\]\.target\), which forecast rule 'behind' needs$",
    ):
        check_forecast_rules(
            targeted({"name": "s", "no_data": 5}, {**FORECAST, "scope": {"lines": ["L1", "L2"]}})
        )
    with pytest.raises(ValueError, match=r"^alerts\.rules\[0\]\.forecast: no line has a target"):
        check_forecast_rules(targeted(FORECAST, target=False))
    check_forecast_rules(targeted({"name": "s", "no_data": 5}, target=False))  # no forecast


def test_the_config_loader_checks_forecast_targets() -> None:
    data = plant({"rules": [{**FORECAST, "scope": {"lines": ["L1"]}}]})
    with pytest.raises(ConfigError, match=r"alerts\.rules\[0\]\.scope\.lines\[0\]: line 'L1'"):
        parse_config(data)
    data["lines"][0]["target"] = {"parts": {"day": 900}}
    assert parse_config(data).alerts.rules[0].forecast == "target_miss"
