"""The core's records are `KpiRecord`s field for field: every field, in the record's order,
each of its field's kind (an integer field holds an int, a number field a float), open
and final, machine and line, with and without an ideal cycle time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from linepulse.records import RECORD_FIELDS, RECORD_TYPES, FieldType, KpiRecord
from tests.unit.kpi.core.support import ev, plant, run

SHIFT = [{"name": "early", "start": "06:00", "end": "14:00"}]


def holds(kind: FieldType, value: Any) -> bool:
    """`value` is what a field of `kind` holds in a JSON-ready record."""
    if value is None:
        return kind.nullable
    if kind.kind == "datetime":
        return isinstance(value, str) and datetime.fromisoformat(value).utcoffset() is not None
    wanted = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict}
    return type(value) is wanted[kind.kind]


def records() -> list[dict[str, Any]]:
    config = plant(
        SHIFT,
        [
            {"id": "m1", "ideal_cycle_time_s": 1.0},
            {"id": "m2"},  # no ideal cycle time: losses and performance are None
        ],
        lines=[
            {
                "id": "line-1",
                "machines": [{"id": "m1", "ideal_cycle_time_s": 1.0}, {"id": "m2"}],
                "target": {"parts": 20000},
            }
        ],
    )
    events = [
        ev("06:00:00", "state", "running"),
        ev("06:00:00", "total_count", 0),
        ev("06:00:00", "reject_count", 0),
        ev("06:00:00", "product", "A"),
        ev("06:00:00", "state", "running", machine="m2"),
        ev("06:00:00", "total_count", 0, machine="m2"),
        ev("06:20:00", "state", "down", reason="jam"),
        ev("06:25:00", "state", "running"),
        ev("06:40:00", "total_count", 700, machine="m2"),
        ev("06:59:59", "total_count", 3000),
        ev("06:59:59", "reject_count", 30),
        ev("07:10:00", "state", "running"),
    ]
    _, outputs, _ = run(config, [events[:6], events[6:]], windows=("15m", "1h", "shift"))
    return [record for output in outputs for record in output.records]


def test_every_record_has_the_contracts_fields_in_order_and_of_their_kind() -> None:
    emitted = records()
    assert {r["machine"] for r in emitted} == {"m1", "m2", None}
    assert {r["final"] for r in emitted} == {True, False}
    assert any(r["losses"] is None for r in emitted)
    assert any(r["losses"] is not None for r in emitted)
    assert any(r["target_count"] is not None for r in emitted)
    for record in emitted:
        assert list(record) == list(RECORD_FIELDS)
        wrong = {n: record[n] for n, kind in RECORD_TYPES.items() if not holds(kind, record[n])}
        assert wrong == {}, f"{record['machine']} {record['window']} {record['window_start']}"
        assert KpiRecord.model_validate(record).model_dump(mode="json") == record


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        (FieldType("integer", nullable=False), 3, True),
        (FieldType("integer", nullable=False), 3.0, False),
        (FieldType("integer", nullable=False), True, False),
        (FieldType("number", nullable=True), None, True),
        (FieldType("number", nullable=False), None, False),
        (FieldType("datetime", nullable=False), "2026-11-02T06:00:00Z", True),
        (FieldType("datetime", nullable=False), "2026-11-02T06:00:00", False),
    ],
)
def test_the_kind_check_tells_an_int_from_a_float_and_a_bool(
    kind: FieldType, value: Any, ok: bool
) -> None:
    assert holds(kind, value) is ok
