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
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    environment = compose["services"]["kafka"]["environment"]
    # The apache/kafka image turns KAFKA_X_Y into x.y; Kafka's own default is true.
    assert str(environment.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE")).lower() == "false"


def test_the_development_broker_does_not_auto_create_topics() -> None:
    script = (DEPLOY / "kafka" / "kafka.sh").read_text()
    settings = re.findall(r"^auto\.create\.topics\.enable=(\S+)$", script, flags=re.MULTILINE)
    assert settings == ["false"]
