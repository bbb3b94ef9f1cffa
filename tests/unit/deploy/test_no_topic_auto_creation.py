"""Both brokers LinePulse ships (deploy/kafka/kafka.sh for development and tests, the compose
stack's) refuse to create a topic because a client named it: a topic comes only from a
LinePulse service creating it with the plant config's layout (issue 14, item 8)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).parents[3] / "deploy"


def test_the_compose_broker_does_not_auto_create_topics() -> None:
    """The stack's broker is the image deploy/images.sh builds, which runs kafka.sh (below)."""
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == "localhost/linepulse-kafka:latest"
    assert "KAFKA_EXTRA_PROPERTIES" not in compose["services"]["kafka"].get("environment", {})
    containerfile = (DEPLOY / "images" / "Containerfile").read_text()
    target = containerfile.split("FROM apt AS kafka", 1)[1].split("\nFROM ", 1)[0]
    assert 'ENTRYPOINT ["/opt/kafka/kafka.sh", "run"]' in target


def test_the_development_broker_does_not_auto_create_topics() -> None:
    script = (DEPLOY / "kafka" / "kafka.sh").read_text()
    settings = re.findall(r"^auto\.create\.topics\.enable=(\S+)$", script, flags=re.MULTILINE)
    assert settings == ["false"]
