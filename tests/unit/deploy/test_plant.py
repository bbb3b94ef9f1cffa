"""The compose stack's plant (deploy/linepulse/plant.yaml) is the example plant with only
the hosts, the state folders and the alerts changed, as its header says: an operator who
starts the stack sees the same lines, targets, reasons and KPI settings as the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).parents[3]
# Where the two differ on purpose.
STACK_ONLY = {"kafka", "ingest", "alerts"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return data


def test_the_stack_plant_is_the_example_with_compose_hosts() -> None:
    example = load(REPO / "examples" / "simulated-plant" / "plant.yaml")
    stack = load(REPO / "deploy" / "linepulse" / "plant.yaml")
    for key in set(example) | set(stack):
        if key in STACK_ONLY or key == "sources":
            continue
        assert stack.get(key) == example.get(key), key
    assert set(stack) - set(example) <= STACK_ONLY
    hosts = {"127.0.0.1:4840": "simulate:4840", "127.0.0.1:4841": "simulate:4841"}
    for ours, theirs in zip(stack["sources"]["opcua"], example["sources"]["opcua"], strict=True):
        endpoint = theirs["endpoint"]
        for local, service in hosts.items():
            endpoint = endpoint.replace(local, service)
        assert ours == {**theirs, "endpoint": endpoint}
    for ours, theirs in zip(stack["sources"]["mqtt"], example["sources"]["mqtt"], strict=True):
        assert ours == {**theirs, "host": "mosquitto"}
    assert set(stack["sources"]) == set(example["sources"])
