"""Telemetry records on Kafka: JSON, Arrow IPC and msgpack batches, and bad records."""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl

from linepulse.events import EVENT_SCHEMA, EventError, decode_json
from linepulse.wire import ARROW, MSGPACK, decode_records, encode_arrow, encode_msgpack
from tests.unit.kpi.core.support import ev, frame

EVENTS = [
    ev("06:00:00", "state", "running", reason=None),
    ev("06:00:01", "total_count", 12),
    ev("06:00:02", "temperature", 71.5),
    ev("06:00:03", "state", "down", reason="jam", quality="uncertain"),
]


def test_the_three_formats_decode_to_the_same_events() -> None:
    as_json = [(orjson.dumps(e), None, i) for i, e in enumerate(EVENTS)]
    as_arrow = [(encode_arrow(frame(EVENTS)), [("content-type", ARROW.encode())], 9)]
    as_msgpack = [(encode_msgpack(EVENTS), [("Content-Type", MSGPACK.encode())], 10)]
    want = frame(EVENTS)
    for records in (as_json, as_arrow, as_msgpack):
        decoded = decode_records(records)
        assert decoded.rejected == []
        assert decoded.events.equals(want), records


def test_bad_records_are_rejected_with_reasons_and_good_ones_kept() -> None:
    good = orjson.dumps(EVENTS[0])
    records = [
        (b"{broken", None, 1),
        (orjson.dumps({**EVENTS[1], "value": None}), None, 2),
        (good, None, 3),
        (b"\x00" * 10, [("content-type", b"text/csv")], 4),
        (b"not arrow", [("content-type", ARROW.encode())], 5),
        (encode_msgpack([EVENTS[1], {"ts": "nope"}]), [("content-type", MSGPACK.encode())], 6),
        (None, None, 7),
        (b"x" * (9 * 1024 * 1024), None, 8),
    ]
    decoded = decode_records(records, "p0")
    reasons = {where: reason for where, reason, _ in decoded.rejected}
    assert reasons["p0@1"].startswith("malformed JSON")
    assert reasons["p0@2"] == "value is missing"
    assert reasons["p0@4"] == "unknown content-type 'text/csv'"
    assert reasons["p0@5"].startswith("malformed application/vnd.apache.arrow.stream batch")
    assert reasons["p0@6[1]"] == "ts is not an RFC 3339 timestamp: 'nope'"
    assert reasons["p0@7"] == "empty record (no value)"
    assert "exceeds" in reasons["p0@8"]
    assert decoded.events.height == 2  # the good JSON event and the good msgpack one
    assert sorted(decoded.events.get_column("signal").to_list()) == ["state", "total_count"]


def test_a_poll_of_json_records_decodes_as_each_record_alone() -> None:
    """A poll's one-line JSON records are decoded as one columnar block; a poll with a
    record over several lines one by one. Either way: the events of `decode_json` per
    record, in record order, and each bad record named by its offset with its reason."""
    good = [orjson.dumps(ev(f"06:00:{s:02d}", "total_count", s)) for s in range(40)]
    good += [orjson.dumps(e) for e in EVENTS]
    bad = {
        41: b'{"ts": "06:00", "machine": "m1", "signal": "state", "value": "down"}',
        43: b"[1, 2]",
        44: b"{broken",
    }
    for spread in (False, True):
        values = list(good)
        for offset, value in bad.items():
            values.insert(offset, value)
        if spread:  # a pretty-printed record: the poll is decoded record by record
            values.append(orjson.dumps(EVENTS[2], option=orjson.OPT_INDENT_2))
        decoded = decode_records([(v, None, i) for i, v in enumerate(values)], "p0")
        want: list[tuple[Any, ...]] = []
        reasons = {}
        for offset, value in enumerate(values):
            try:
                want.append(decode_json(value))
            except EventError as error:
                reasons[f"p0@{offset}"] = str(error)
        assert decoded.events.equals(pl.DataFrame(want, schema=EVENT_SCHEMA, orient="row"))
        assert {where: reason for where, reason, _ in decoded.rejected} == reasons
        assert sorted(reasons) == [f"p0@{offset}" for offset in bad]
