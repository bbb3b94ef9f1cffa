"""Values keep their type end to end (issue 14, item 3): text stays text, integers stay
exact, floats stay floats, through JSON lines, msgpack and Arrow records and columnar files.

Each check goes from the value a producer sent to the value the decoders give back
(`to_json_events`), comparing type and value: 3 == 3.0 in Python, so equality alone would
not catch an int that became a float.
"""

from __future__ import annotations

import io
from typing import Any

import msgpack
import orjson
import polars as pl
import pytest

from linepulse.events import (
    EVENT_SCHEMA,
    EventError,
    decode_event,
    decode_json,
    decode_json_lines,
    normalize_frame,
    reading_as_float,
    to_json_events,
)
from linepulse.wire import ARROW, MSGPACK, decode_records, encode_arrow, encode_msgpack

TS = 1_793_599_200_000  # 2026-11-02T06:00:00Z
# (signal, value): what the issue names, and the edges of each type.
VALUES: list[tuple[str, Any]] = [
    ("product", "0042"),  # a material number with leading zeros
    ("product", "1e3"),  # text that reads as a float
    ("product", "NaN"),  # text that reads as a non-finite float
    ("total_count", 2**53 + 1),  # the first int a float64 cannot hold
    ("total_count", 2**63 - 1),  # a 64-bit counter at its maximum
    ("total_count", -(2**63)),
    ("temperature", 0.1),
    ("temperature", 3.0),  # a float that is a whole number stays a float
    ("door_open", True),
    ("door_open", False),
]


def events() -> list[dict[str, Any]]:
    return [
        {"ts": TS + i, "machine": "m1", "signal": signal, "value": value}
        for i, (signal, value) in enumerate(VALUES)
    ]


def typed(values: list[Any]) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in values]


def values_of(frame: pl.DataFrame) -> list[tuple[type, Any]]:
    return typed([e["value"] for e in to_json_events(frame)])


WANT = typed([value for _, value in VALUES])


def test_json_lines_keep_each_values_type() -> None:
    decoded = decode_json_lines([orjson.dumps(e) for e in events()])
    assert decoded.rejected == []
    assert values_of(decoded.events) == WANT


def test_the_reference_decoder_keeps_each_values_type() -> None:
    frame = pl.DataFrame([decode_event(e) for e in events()], schema=EVENT_SCHEMA, orient="row")
    assert values_of(frame) == WANT


def test_json_records_msgpack_and_arrow_batches_keep_each_values_type() -> None:
    frame = decode_json_lines([orjson.dumps(e) for e in events()]).events
    as_json = [(orjson.dumps(e), None, i) for i, e in enumerate(events())]
    as_msgpack = [(encode_msgpack(events()), [("content-type", MSGPACK.encode())], 0)]
    as_arrow = [(encode_arrow(frame), [("content-type", ARROW.encode())], 0)]
    for records in (as_json, as_msgpack, as_arrow):
        decoded = decode_records(records)
        assert decoded.rejected == []
        assert values_of(decoded.events) == WANT, records[0][1]
        assert decoded.events.equals(frame)


def test_each_value_sets_the_column_of_its_type() -> None:
    frame = decode_json_lines([orjson.dumps(e) for e in events()]).events
    columns = frame.select("value_num", "value_int", "value_str").rows()
    assert columns == [
        (None, None, "0042"),
        (None, None, "1e3"),
        (None, None, "NaN"),
        (None, 2**53 + 1, None),
        (None, 2**63 - 1, None),
        (None, -(2**63), None),
        (0.1, None, None),
        (3.0, None, None),
        (None, 1, "true"),  # a boolean: text for states, 1/0 for sums
        (None, 0, "false"),
    ]
    assert frame.select(reading_as_float()).to_series().to_list() == [
        None,
        None,
        None,
        float(2**53 + 1),
        float(2**63 - 1),
        float(-(2**63)),
        0.1,
        3.0,
        1.0,
        0.0,
    ]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64 - 1, 10**30])
def test_an_integer_beyond_64_bits_is_refused_with_the_reason(value: int) -> None:
    raw = orjson.dumps({"ts": TS, "machine": "m1", "signal": "s", "value": 0}).replace(
        b'"value":0', b'"value":' + str(value).encode()
    )
    with pytest.raises(EventError, match=r"value is outside the 64-bit integer range"):
        decode_json(raw)
    with pytest.raises(EventError, match=r"value is outside the 64-bit integer range"):
        decode_event({"ts": TS, "machine": "m1", "signal": "s", "value": value})
    if -(2**63) <= value < 2**64:  # what msgpack can carry
        packed = msgpack.packb([{"ts": TS, "machine": "m1", "signal": "s", "value": value}])
        decoded = decode_records([(packed, [("content-type", MSGPACK.encode())], 3)])
        assert decoded.events.is_empty()
        assert decoded.rejected[0][1].startswith("value is outside the 64-bit integer range")


# -- columnar inputs: Arrow records and Parquet/Arrow files ---------------------------------


def arrow_record(frame: pl.DataFrame) -> tuple[bytes, list[tuple[str, bytes]], int]:
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer)
    return buffer.getvalue(), [("content-type", ARROW.encode())], 0


def old_record(values: list[str]) -> pl.DataFrame:
    """A record as LinePulse wrote it before the typed columns: one text `value` column."""
    return pl.DataFrame(
        {
            "ts": [TS + i for i in range(len(values))],
            "machine": ["m1"] * len(values),
            "signal": ["s"] * len(values),
            "value": values,
            "reason": [None] * len(values),
            "quality": ["good"] * len(values),
        }
    )


def test_records_of_the_old_single_text_column_read_as_before() -> None:
    # The old encoder wrote numbers as Polars formats floats ("500009.0"); text as it was.
    decoded = decode_records([arrow_record(old_record(["running", "500009.0", "71.5", "7"]))])
    assert decoded.rejected == []
    assert values_of(decoded.events) == typed(["running", 500009.0, 71.5, 7])


def test_old_and_new_records_in_one_poll_decode_in_record_order() -> None:
    new = decode_json_lines([orjson.dumps(e) for e in events()[:4]]).events
    old = old_record(["down", "12.0"]).with_columns(pl.col("ts") + 100)
    records = [
        (encode_arrow(new.head(2)), [("content-type", ARROW.encode())], 0),
        (arrow_record(old)[0], [("content-type", ARROW.encode())], 1),
        (encode_arrow(new.tail(2)), [("content-type", ARROW.encode())], 2),
    ]
    decoded = decode_records(records)
    assert decoded.rejected == []
    assert values_of(decoded.events) == typed(["0042", "1e3", "down", 12.0, "NaN", 2**53 + 1])


@pytest.mark.parametrize(
    ("column", "want"),
    [
        (pl.Series([7, 2**63 - 1], dtype=pl.Int64), [7, 2**63 - 1]),
        (pl.Series([7, 2**63 - 1], dtype=pl.UInt64), [7, 2**63 - 1]),
        (pl.Series([7, 9], dtype=pl.Int32), [7, 9]),
        (pl.Series([3.0, 0.1], dtype=pl.Float64), [3.0, 0.1]),
        (pl.Series([True, False]), [True, False]),
        (pl.Series(["running", "down"]), ["running", "down"]),
    ],
)
def test_a_files_value_column_is_read_by_its_dtype(column: pl.Series, want: list[Any]) -> None:
    frame = old_record(["x"] * len(want)).with_columns(value=column)
    decoded = normalize_frame(frame)
    assert decoded.rejected == []
    assert values_of(decoded.events) == typed(want)


def test_a_uint64_value_beyond_int64_is_refused_with_the_reason() -> None:
    frame = old_record(["x", "x"]).with_columns(value=pl.Series([5, 2**64 - 1], dtype=pl.UInt64))
    decoded = normalize_frame(frame, where="row")
    assert values_of(decoded.events) == typed([5])
    assert decoded.rejected == [
        ("row 1", "value is outside the 64-bit integer range -2**63..2**63-1", "")
    ]


def test_a_file_with_typed_columns_keeps_text_that_reads_as_a_number() -> None:
    frame = pl.DataFrame(
        {
            "ts": [TS, TS + 1, TS + 2],
            "machine": ["m1"] * 3,
            "signal": ["product", "total_count", "temperature"],
            "value_str": ["0042", None, None],
            "value_int": pl.Series([None, 2**53 + 1, None], dtype=pl.UInt64),
            "value_num": pl.Series([None, None, 3.0], dtype=pl.Float32),
        }
    )
    decoded = normalize_frame(frame)
    assert decoded.rejected == []
    assert values_of(decoded.events) == typed(["0042", 2**53 + 1, 3.0])


def test_typed_columns_that_contradict_each_other_are_refused_row_by_row() -> None:
    frame = pl.DataFrame(
        {
            "ts": [TS] * 5,
            "machine": ["m1"] * 5,
            "signal": ["s"] * 5,
            "value_num": [1.0, None, None, None, None],
            "value_int": [1, 1, 0, 2, None],
            "value_str": [None, "true", "false", "true", None],
        }
    )
    decoded = normalize_frame(frame, where="row")
    assert values_of(decoded.events) == typed([True, False])
    conflict = (
        "more than one of value_num, value_int, value_str is set (only a boolean has two: "
        "value_int 1/0 with value_str true/false)"
    )
    assert decoded.rejected == [
        ("row 0", conflict, ""),
        ("row 3", conflict, ""),
        ("row 4", "value is missing", ""),
    ]


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"value_int": pl.Series([1.5])}, "value_int must be a column of integers, got Float64"),
        ({"value_num": pl.Series(["1.5"])}, "value_num must be a column of floats, got String"),
        ({"value_str": pl.Series([1])}, "value_str must be a column of text, got Int64"),
        (
            {"value": pl.Series(["a"]), "value_str": pl.Series(["a"])},
            "unknown column(s): value_str (the reading goes in `value` or in "
            "value_num/value_int/value_str)",
        ),
    ],
)
def test_a_frame_of_the_wrong_shape_is_refused_whole(
    columns: dict[str, pl.Series], reason: str
) -> None:
    frame = pl.DataFrame({"ts": [TS], "machine": ["m1"], "signal": ["s"], **columns})
    decoded = normalize_frame(frame, where="file")
    assert decoded.events.is_empty()
    assert decoded.rejected == [("file", reason, "1 rows")]
