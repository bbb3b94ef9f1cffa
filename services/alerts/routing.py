"""Who hears about an alert, and when: the shift lead on duty, escalation, grouping.

Alerts of one rule and line that start firing within `group_wait` of each other form a
`Group`, paged as one notification per recipient and channel. A group's page goes to
the lead of the line's shift on duty now (then the backup, then `alerts.manager`, one
step per `escalate_after` without an ack), plus every broadcast channel; it is repeated
every `repeat_interval` while unacknowledged; acks and resolves go to everyone paged.

A group remembers what it has sent (escalation level, repeat count, who was paged), and
every notification key is derived from those counters, so an engine restarted on the
same store re-derives the same keys and never pages twice for one step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linepulse.alerting import Rule
from linepulse.calendar import Calendar
from linepulse.config import PlantConfig, Shift
from services.alerts.model import Alert, AlertState, Notification, NotificationKind, Silence

Target = tuple[str | None, str]  # (person id or None for a broadcast channel, channel id)


class Duty:
    """The shift calendar as alerting sees it: who is on duty, and is this planned time."""

    def __init__(self, plant: PlantConfig) -> None:
        self.plant = plant
        self.calendar = Calendar(plant)
        self._lines = {line.id: line for line in plant.lines}

    def shift_on(self, line: str, now: int) -> Shift | None:
        """The shift of `line` that contains `now` (breaks included: the lead is still on
        duty during a break), or None outside its shifts."""
        spans = self.calendar.spans(line, now, now + 1)
        if not spans:
            return None
        shifts = self.plant.shifts_for(self._lines[line])
        return next((s for s in shifts if s.name == spans[0].name), None)

    def planned(self, line: str, now: int) -> bool:
        """Whether `now` is planned production time of `line`: inside a shift and not in a
        break. A line without any shifts configured has no calendar to go by: always."""
        if not self.plant.shifts_for(self._lines[line]):
            return True
        return bool(self.calendar.planned_intervals(line, now, now + 1))

    def chain(self, line: str | None, now: int) -> list[str]:
        """Person ids to page in order: the lead on duty, the backup, the manager; the
        missing ones skipped (no lead on duty -> the backup first; outside shifts there is
        neither, so the manager)."""
        shift = None if line is None else self.shift_on(line, now)
        people = [] if shift is None else [shift.lead, shift.backup]
        people.append(self.plant.alerts.manager)
        return list(dict.fromkeys(p for p in people if p is not None))


def silenced(silences: Iterable[Silence], labels: Mapping[str, str], now: int) -> bool:
    """Whether a silence active at `now` matches all of its matchers on `labels`."""
    for silence in silences:
        if not silence.starts_at <= now < silence.ends_at:
            continue
        if all(
            _fullmatch(m.value, labels.get(m.name, ""))
            if m.regex
            else labels.get(m.name, "") == m.value
            for m in silence.matchers
        ):
            return True
    return False


def _fullmatch(pattern: str, value: str) -> bool:
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return False


@dataclass
class Group:
    """Alerts paged together, and what has been sent for them.

    `id` is the rule, the line and the instant the first alert fired (epoch ms): unique
    per incident and the same after a restart. `level_at` is when the current escalation
    level was paged; `sent_at` when anything was last paged (for repeats).
    """

    id: str
    rule: str
    line: str | None
    opened_at: int
    members: list[str] = field(default_factory=list)  # alert ids
    notified_at: int | None = None
    level: int = 0
    level_at: int = 0
    sent_at: int = 0
    repeats: int = 0
    paged: list[Target] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # members sent in a firing page
    acked: list[str] = field(default_factory=list)  # members whose ack was sent
    resolved: list[str] = field(default_factory=list)  # members whose resolve was sent

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "paged": [list(t) for t in self.paged],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Group:
        data = dict(doc)
        data["paged"] = [(p, c) for p, c in data["paged"]]
        return cls(**data)

    def accepts(self, rule: str, line: str | None, now: int, group_wait_ms: int) -> bool:
        """A newly firing alert joins this group while its first page is still waiting."""
        return (
            self.rule == rule
            and self.line == line
            and self.notified_at is None
            and now <= self.opened_at + group_wait_ms
        )


def notification_key(group: str, kind: str, level: int, seq: int, part: str, target: Target) -> str:
    """Deterministic id of one notification: the same inputs after a restart give the
    same key, so the outbox can drop what it has already delivered."""
    text = "\x00".join([group, kind, str(level), str(seq), part, target[0] or "", target[1]])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Router:
    """Turns a group's members' states into notifications, advancing its bookkeeping."""

    def __init__(self, plant: PlantConfig, duty: Duty) -> None:
        self.plant = plant
        self.duty = duty
        self.settings = plant.alerts

    def step(
        self,
        group: Group,
        rule: Rule,
        members: list[Alert],
        quiet: Callable[[Alert], bool],
        now: int,
    ) -> list[Notification]:
        """Notifications due for `group` at `now`. `quiet(alert)` is true for an alert that
        must not page now (silenced, or its machine in a planned stop / off shift)."""
        out: list[Notification] = []
        loud = [m for m in members if m.state is AlertState.FIRING and not quiet(m)]
        if group.notified_at is None:
            wait_ms = round(self.settings.group_wait * 1000)
            if now < group.opened_at + wait_ms or not loud:
                return out
            targets = self._targets(group.line, 0, now)
            out += self._send(group, "firing", loud, targets, 0, 0, "", now)
            group.notified_at = group.level_at = now
            group.fired += [alert_id(m) for m in loud]
            return out
        # Members that were quiet at the first page (e.g. silenced) page once loud.
        for m in loud:
            if alert_id(m) not in group.fired:
                out += self._send(group, "firing", [m], group.paged, 0, 0, alert_id(m), now)
                group.fired.append(alert_id(m))
        for m in members:
            if (
                m.acked_at is not None
                and alert_id(m) in group.fired
                and alert_id(m) not in group.acked
            ):
                out += self._send(group, "acknowledged", [m], group.paged, 0, 0, alert_id(m), now)
                group.acked.append(alert_id(m))
            if m.state is AlertState.RESOLVED and alert_id(m) in group.fired:
                if alert_id(m) not in group.resolved:
                    out += self._send(group, "resolved", [m], group.paged, 0, 0, alert_id(m), now)
                    group.resolved.append(alert_id(m))
        attention = [m for m in loud if alert_id(m) in group.fired]
        if not attention:
            return out
        escalate_ms = round(rule.escalate_after * 1000)
        repeat_s = rule.repeat_interval or self.settings.repeat_interval
        if now - group.level_at >= escalate_ms and group.level < 2:
            targets = self._targets(group.line, group.level + 1, now)
            group.level += 1
            group.level_at = now
            for m in attention:
                m.escalation = group.level
            if targets:
                out += self._send(group, "escalated", attention, targets, group.level, 0, "", now)
        elif now - group.sent_at >= round(repeat_s * 1000):
            group.repeats += 1
            out += self._send(
                group, "repeat", attention, group.paged, group.level, group.repeats, "", now
            )
        return out

    def _targets(self, line: str | None, level: int, now: int) -> list[Target]:
        """Level 0: the first person of the chain and the broadcast channels; level n: the
        n-th person of the chain alone (nobody when the chain is shorter)."""
        chain = self.duty.chain(line, now)
        people = self.settings.people
        out: list[Target] = []
        if level < len(chain):
            pid = chain[level]
            out += [(pid, c) for c in people[pid].channels]
        if level == 0:
            out += [(None, c) for c in self.settings.broadcast]
        return out

    def _send(
        self,
        group: Group,
        kind: NotificationKind,
        alerts: list[Alert],
        targets: Iterable[Target],
        level: int,
        seq: int,
        part: str,
        now: int,
    ) -> list[Notification]:
        targets = list(dict.fromkeys(targets))
        if not targets:
            return []
        if kind in ("firing", "escalated", "repeat"):  # pages; acks and resolves are not
            group.sent_at = now
            for m in alerts:
                m.last_notified_at = now
        docs = tuple(m.as_dict() for m in alerts)
        for t in targets:
            if t not in group.paged:
                group.paged.append(t)
        return [
            Notification(
                key=notification_key(group.id, kind, level, seq, part, t),
                kind=kind,
                channel=t[1],
                recipient=t[0],
                alerts=docs,
                group=group.id,
                created_at=now,
                escalation=level,
            )
            for t in targets
        ]


def alert_id(alert: Alert) -> str:
    """An alert incident: its fingerprint and when it went pending (a fingerprint recurs
    after a resolve; the incident does not)."""
    return f"{alert.fingerprint}:{alert.pending_since}"
