"""A valid config that leaves KPIs without a figure says so when it is loaded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from linepulse.config import config_warnings, load_config

PLANT = """\
site: plant-a
shifts: [{name: early, start: "06:00", end: "14:00"}]
lines:
  - id: packing
    machines:
      - {id: filler-1, ideal_cycle_time_s: 0.5}
      - {id: labeler-2, products: {sku-a: 0.4}}
      - {id: cartoner-3}
"""


def test_a_machine_without_an_ideal_cycle_time_is_named_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(PLANT, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="linepulse.config"):
        plant = load_config(path)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.startswith(
        f"{path}: lines[0].machines[2] (cartoner-3) has no ideal_cycle_time_s"
    )
    for kpi in ("performance", "OEE", "NEE", "TEEP", "line 'packing'", "ideal_cycle_time_s signal"):
        assert kpi in message
    assert config_warnings(plant) == [message.removeprefix(f"{path}: ")]


def test_a_config_with_every_ideal_cycle_time_loads_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(PLANT.replace("{id: cartoner-3}", "{id: cartoner-3, ideal_cycle_time_s: 2}"))
    with caplog.at_level(logging.WARNING, logger="linepulse.config"):
        plant = load_config(path)
    assert config_warnings(plant) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
