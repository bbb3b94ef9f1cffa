"""Routing pieces on their own: who is on duty, silences, keys, group bookkeeping."""

from __future__ import annotations

from linepulse.config import PlantConfig
from services.alerts.model import Matcher, Silence
from services.alerts.routing import Duty, Group, notification_key, silenced
from tests.unit.alerts.test_engine import DAY, MIN, make_plant

HOUR = 60 * MIN


def test_lead_on_duty_then_backup_then_manager() -> None:
    duty = Duty(make_plant())
    assert duty.chain("L1", DAY + 7 * HOUR) == ["ann", "bob", "max"]
    # During a break the lead is still on duty, but it is not planned time.
    assert duty.chain("L1", DAY + 10 * HOUR + 5 * MIN) == ["ann", "bob", "max"]
    assert duty.planned("L1", DAY + 10 * HOUR + 5 * MIN) is False
    assert duty.planned("L1", DAY + 10 * HOUR + 15 * MIN) is True


def test_no_lead_or_no_shift() -> None:
    duty = Duty(make_plant())
    assert duty.chain("L1", DAY + 15 * HOUR) == ["bob", "max"]  # late shift: backup only
    assert duty.chain("L1", DAY + 23 * HOUR) == ["max"]  # outside shifts
    assert duty.shift_on("L1", DAY + 23 * HOUR) is None
    assert duty.planned("L1", DAY + 23 * HOUR) is False


def test_line_shifts_override_the_site_shifts() -> None:
    data = make_plant().model_dump(by_alias=True)
    data["lines"][1]["shifts"] = [
        {"name": "night", "start": "22:00", "end": "06:00", "lead": "max"}
    ]
    plant = PlantConfig.model_validate(data)
    duty = Duty(plant)
    assert duty.chain("L2", DAY + 23 * HOUR) == ["max"]
    assert duty.shift_on("L2", DAY + 23 * HOUR) is not None
    assert duty.shift_on("L2", DAY + 7 * HOUR) is None
    assert duty.chain("L1", DAY + 7 * HOUR) == ["ann", "bob", "max"]


def _silence(*matchers: Matcher, start: int = 0, end: int = 100) -> Silence:
    return Silence("s1", matchers, start, end, "ann", "pm")


def test_silence_matchers() -> None:
    labels = {"alertname": "oee-low", "line": "L1", "machine": "M12"}
    assert silenced([_silence(Matcher("line", "L1"))], labels, 50)
    assert not silenced([_silence(Matcher("line", "L1"))], labels, 100)  # ended
    assert not silenced([_silence(Matcher("line", "L1"), start=60)], labels, 50)  # not yet
    both = _silence(Matcher("line", "L1"), Matcher("machine", "M1"))
    assert not silenced([both], labels, 50)  # every matcher must match
    assert silenced([_silence(Matcher("machine", "M1.*", regex=True))], labels, 50)
    assert not silenced([_silence(Matcher("machine", "M1", regex=True))], labels, 50)  # full
    assert not silenced([_silence(Matcher("machine", "(", regex=True))], labels, 50)  # bad re
    assert not silenced([_silence(Matcher("shift", "day"))], labels, 50)  # missing label


def test_notification_key_is_deterministic_and_distinct() -> None:
    base = ("g", "firing", 0, 0, "", ("ann", "pager"))
    variants = [
        ("g2", "firing", 0, 0, "", ("ann", "pager")),
        ("g", "repeat", 0, 0, "", ("ann", "pager")),
        ("g", "firing", 1, 0, "", ("ann", "pager")),
        ("g", "firing", 0, 1, "", ("ann", "pager")),
        ("g", "firing", 0, 0, "fp:1", ("ann", "pager")),
        ("g", "firing", 0, 0, "", ("ann", "mail")),
        ("g", "firing", 0, 0, "", (None, "pager")),
    ]
    key = notification_key(*base)
    assert key == notification_key(*base)
    assert len({key, *(notification_key(*v) for v in variants)}) == 1 + len(variants)


def test_group_round_trip_and_joining() -> None:
    group = Group("r|L1|0", "r", "L1", 0, members=["a:0"], paged=[("ann", "pager"), (None, "am")])
    assert Group.from_dict(group.as_dict()) == group
    assert group.accepts("r", "L1", 5_000, 5_000)
    assert not group.accepts("r", "L1", 5_001, 5_000)
    assert not group.accepts("r", "L2", 0, 5_000)
    assert not group.accepts("other", "L1", 0, 5_000)
    group.notified_at = 1
    assert not group.accepts("r", "L1", 1, 5_000)
