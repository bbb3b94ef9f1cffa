"""Fuzz target: telemetry records as the KPI worker reads them from Kafka.

One input is one record value; its first byte picks the `content-type` header (none,
JSON, msgpack, Arrow IPC, something unknown). Contract: `decode_records` never raises;
each rejection carries a reason; the kept events are a frame of `EVENT_SCHEMA` with finite
numbers and times inside 1970..9999. For JSON it also checks the two decoders against each
other: msgspec's fast path and the `decode_event` fallback must keep the same row.

    python -m tests.fuzz.telemetry_json -atheris_runs=100000
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["linepulse", "services"]):
    import orjson
    import polars as pl

    from linepulse.events import EVENT_SCHEMA, EventError, decode_event, decode_json
    from linepulse.wire import ARROW, JSON, MSGPACK, decode_records, encode_arrow

from tests.fuzz.harness import check_reason, fuzz

HEADERS: tuple[list[tuple[str, bytes]] | None, ...] = (
    None,
    [("content-type", JSON.encode())],
    [("content-type", MSGPACK.encode())],
    [("content-type", ARROW.encode())],
    [("Content-Type", b"text/csv; charset=utf-8")],
)
MAX_TS_MS = 253_402_300_799_999


def seeds() -> list[bytes]:
    events = [
        {"ts": "2026-11-02T06:00:00Z", "machine": "m1", "signal": "state", "value": "running"},
        {"ts": 1_793_599_200_000, "machine": "m1", "signal": "total_count", "value": 12},
        {"ts": "2026-11-02T07:00:00+01:00", "machine": "m2", "signal": "speed", "value": 1.5,
         "quality": "uncertain", "reason": "jam", "line": "l1", "seq": 4},
    ]  # fmt: skip
    frame = pl.DataFrame([decode_event(e) for e in events], schema=EVENT_SCHEMA, orient="row")
    import msgpack

    return [
        *(bytes([1]) + orjson.dumps(e) for e in events),
        bytes([2]) + msgpack.packb(events),
        bytes([3]) + encode_arrow(frame),
    ]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    headers, value = HEADERS[data[0] % len(HEADERS)], data[1:]
    decoded = decode_records([(value, headers, 0)])
    for _, reason, _ in decoded.rejected:
        check_reason(ValueError(reason))
    events = decoded.events
    assert events.schema == EVENT_SCHEMA
    if events.height:
        assert events["ts"].is_between(0, MAX_TS_MS).all()
        numbers = events["value_num"].drop_nulls()
        assert numbers.is_finite().all()
    if headers is None or headers[0][1] == JSON.encode():
        fast_and_slow_agree(value)


def fast_and_slow_agree(raw: bytes) -> None:
    try:
        row = decode_json(raw)
    except EventError as error:
        check_reason(error)
        return
    slow = decode_event(orjson.loads(raw))
    assert slow == row, (slow, row)


def main() -> None:
    fuzz(test_one_input, seeds())


if __name__ == "__main__":
    main()
    sys.exit(0)
