"""What the alerts service passes between its parts: alerts, silences and notifications.

The rule engine turns observations into `Alert` state changes and `Notification`s; the
outbox delivers notifications through channels; the API shows alerts and takes acks and
silences. All times are epoch milliseconds (UTC), passed in, never read from a clock
inside the engine, so that recorded sequences replay the same way in tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class AlertState(StrEnum):
    PENDING = "pending"  # the condition holds, not yet for the rule's `for`
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"  # still firing; somebody is on it: no more escalation
    RESOLVED = "resolved"


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    """Stable id of an alert: the rule and its labels (site, line, machine, ...)."""
    text = rule + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Alert:
    fingerprint: str
    rule: str
    labels: dict[str, str]  # alertname, severity, site, line, machine (if any), rule labels
    state: AlertState
    severity: str
    summary: str
    runbook: str | None
    value: float | str | None  # the observed value that made it pending/firing
    pending_since: int
    fired_at: int | None = None
    resolved_at: int | None = None
    acked_by: str | None = None
    acked_at: int | None = None
    ack_comment: str | None = None
    escalation: int = 0  # 0 the lead on duty, 1 the backup, 2 the operations manager
    last_notified_at: int | None = None
    updated_at: int = 0

    @property
    def line(self) -> str | None:
        return self.labels.get("line")

    @property
    def machine(self) -> str | None:
        return self.labels.get("machine")

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "labels": dict(self.labels),
            "state": self.state.value,
            "severity": self.severity,
            "summary": self.summary,
            "runbook": self.runbook,
            "value": self.value,
            "pending_since": self.pending_since,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "acked_by": self.acked_by,
            "acked_at": self.acked_at,
            "ack_comment": self.ack_comment,
            "escalation": self.escalation,
            "last_notified_at": self.last_notified_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Matcher:
    """A silence matcher on an alert label (`alertname` is the rule's name)."""

    name: str
    value: str
    regex: bool = False


@dataclass
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: int
    ends_at: int
    created_by: str
    comment: str


# `report`: a shift report (services/alerts/reports.py), not an alert's state change.
NotificationKind = Literal["firing", "repeat", "escalated", "acknowledged", "resolved", "report"]


@dataclass(frozen=True)
class Notification:
    """One message to deliver: to a person on one of their channels, or to a broadcast
    channel (`recipient` None). `key` is unique per (alert state change, channel,
    recipient), so enqueuing the same notification twice delivers it once."""

    key: str
    kind: NotificationKind
    channel: str  # a channel id from alerts.channels
    recipient: str | None  # a person id
    alerts: tuple[dict[str, Any], ...]  # Alert.as_dict() of each alert in the group
    group: str  # the group key (rule + line): alerts paged together
    created_at: int
    escalation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
