"""`kafka.open_deadline_s`, `kafka.open_cadence_s` and the earlier `kafka.open_interval_s`:
the cadence each window kind's open records get, and configs of either kind still load."""

from __future__ import annotations

from typing import Any

import pytest

from linepulse.config import WINDOW_KINDS, ConfigError, KafkaSettings, parse_config


def plant(kafka: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": "s",
        "lines": [{"id": "l", "machines": [{"id": "m", "ideal_cycle_time_s": 1}]}],
        "kafka": kafka,
    }


def cadences(kafka: KafkaSettings) -> dict[str, float]:
    return {kind: kafka.open_cadence(kind) for kind in WINDOW_KINDS}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kafka", "expected"),
    [
        ({}, {"1m": 0.2, "15m": 0.2, "1h": 1.0, "shift": 5.0, "day": 5.0}),
        ({"open_deadline_s": 0.1}, {"1m": 0.1, "15m": 0.1, "1h": 1.0, "shift": 5.0, "day": 5.0}),
        # A kind given replaces its default; the other defaults stay.
        (
            {"open_cadence_s": {"15m": 1, "day": 60}},
            {"1m": 0.2, "15m": 1, "1h": 1.0, "shift": 5.0, "day": 60},
        ),
        # Earlier configs: one interval for every kind, as before (0: with every batch).
        ({"open_interval_s": 1}, dict.fromkeys(WINDOW_KINDS, 1.0)),
        ({"open_interval_s": 0}, dict.fromkeys(WINDOW_KINDS, 0.0)),
        # ... also beside the newer keys, as a dumped config holds all three.
        (
            {"open_interval_s": 0.5, "open_deadline_s": 0.2, "open_cadence_s": {"day": 9}},
            dict.fromkeys(WINDOW_KINDS, 0.5),
        ),
    ],
)
def test_each_kind_gets_its_cadence(kafka: dict[str, Any], expected: dict[str, float]) -> None:
    assert cadences(parse_config(plant(kafka)).kafka) == expected


@pytest.mark.parametrize(
    ("kafka", "message"),
    [
        ({"open_cadence_s": {"2m": 1}}, "kafka.open_cadence_s.2m"),
        ({"open_cadence_s": {"1h": -1}}, "kafka.open_cadence_s.1h"),
        ({"open_deadline_s": -0.1}, "kafka.open_deadline_s"),
    ],
)
def test_bad_open_settings_are_refused_by_name(kafka: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(plant(kafka))


def test_a_dumped_config_loads_as_it_was() -> None:
    for kafka in ({}, {"open_interval_s": 0.2}, {"open_cadence_s": {"shift": 30}}):
        config = parse_config(plant(kafka))
        again = parse_config(config.model_dump(mode="json"))
        assert cadences(again.kafka) == cadences(config.kafka)
