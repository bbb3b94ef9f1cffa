"""The columnar JSON-lines decoder equals the per-line one, and takes its fast path.

`decode_json_block` decodes chunks of lines in bulk and falls back to `decode_json_lines`
for a chunk it cannot prove; whatever the lines (every value type, every `ts` form that
`parse_ts` accepts or refuses, bad and blank lines, lines that are only valid when read
together), its frame and its rejections must be those of `decode_json_lines`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from linepulse.event_files import read_batches
from linepulse.events import _columnar_events, decode_json_block, decode_json_lines

# Every form of ts: RFC 3339 the columnar path reads (Z, offsets, fractions of 1-9 digits),
# forms only `datetime.fromisoformat` reads, dates and times that do not exist, times
# outside 1970..9999 (after the offset too), and epoch ms as ints and floats.
TS_TEXT = [
    "2026-11-02T06:00:00Z",
    "2026-11-02T06:00:00.5Z",
    "2026-11-02T06:00:00.123456789+01:00",
    "2026-11-02T06:00:00.9999-00:00",
    "2026-11-02T06:00:00+23:59",
    "2026-11-02T06:00:00-05:30",
    "2026-11-02 06:00:00Z",
    "2026-11-02T06:00:00,25Z",
    "2026-11-02T06:00:00z",
    "2026-11-02T06:00:00",
    "2026-11-02T06:00Z",
    "20261102T060000Z",
    "2026-02-30T06:00:00Z",
    "2024-02-29T23:59:59.999Z",
    "2026-11-02T24:00:00Z",
    "2026-11-02T06:60:00Z",
    "2026-11-02T06:00:60Z",
    "2026-11-02T06:00:00+24:00",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:30:00+01:00",
    "1969-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:00:00-02:00",
    "0000-01-01T00:00:00Z",
    "٢٠٢٦-11-02T06:00:00Z",
    "",
]
ts_values = (
    st.sampled_from(TS_TEXT)
    | st.integers(-10, 253_402_300_799_999 + 10)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([10**100, -(10**400)])  # Polars refuses these with OverflowError
    | st.sampled_from([1.5e12 + 0.5, 1.5e12 + 1.5, -0.4, 0.5, 2.5, 253_402_300_799_999.4, 1e300])
    | st.floats(0, 2.6e14)
    | st.booleans()
    | st.none()
)
texts = st.text(max_size=6) | st.sampled_from(["true", "0042", "x" * 256, "y" * 257, "é"])
values = (
    texts
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([-(2**63), 2**63 - 1, 2**63, -(2**63) - 1, 3.0, -0.0, 1e308])
    | st.sampled_from([10**100, -(10**400)])  # beyond ~330 bits Polars raises OverflowError
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
    | st.lists(st.integers(), max_size=1)
)
events = st.fixed_dictionaries(
    {"ts": ts_values, "machine": texts, "signal": texts, "value": values},
    optional={
        "reason": texts | st.none(),
        "quality": st.sampled_from(["good", "bad", "uncertain", "poor"]),
        "line": texts,
        "seq": st.integers(-(2**64), 2**64) | st.booleans(),
        "extra": st.integers(),
    },
)
# Lines that are not one event each: raw bytes, JSON that is not an object, two events on
# one line, one event cut over two lines, blank lines, leading blanks, CRLF, NaN, 1e400.
GOOD = b'{"ts":"2026-11-02T06:00:00Z","machine":"m","signal":"s","value":1}'
HEAD, TAIL = GOOD[:28], GOOD[29:]  # one event cut at a comma: an object only together
ODD_LINES = [
    b"",
    b"   ",
    b"\t\r",
    b"\x0c",
    b"[]",
    b"1",
    b"{",
    b"}",
    b"not json",
    GOOD + b"," + GOOD,
    GOOD[:30],
    HEAD,
    TAIL,
    b"{" + GOOD[31:],
    b'"machine":"m","signal":"s","value":1}',
    b" " + GOOD,
    GOOD + b"\r",
    GOOD + b" x",
    b'{"ts":1,"machine":"m","signal":"s","value":NaN}',
    b'{"ts":1,"machine":"m","signal":"s","value":1e400}',
    b'{"ts":1,"machine":"m","signal":"s","value":"\xff"}',
    b'{"ts":1,"machine":"m","signal":"s","value":"tab\there"}',
    b'{"ts":1,"machine":"m","signal":"s","value":"a}\\n,{"}',
]


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(ODD_LINES))
    if kind == 1:
        return draw(st.binary(max_size=20)).replace(b"\n", b"")
    if kind == 2:  # spaces between tokens, as json.dumps writes them
        return json.dumps(draw(events), ensure_ascii=draw(st.booleans())).encode()
    return compact(draw(events))


def compact(event: dict[str, Any]) -> bytes:
    """One JSON line as most producers write it: no spaces, UTF-8, ints of any size."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def assert_same(block: bytes, first_line: int, chunk_bytes: int) -> None:
    columnar = decode_json_block(block, first_line=first_line, chunk_bytes=chunk_bytes)
    per_line = decode_json_lines(block.split(b"\n"), first_line=first_line)
    assert_frame_equal(columnar.events, per_line.events, check_exact=True)
    assert columnar.rejected == per_line.rejected


@settings(max_examples=400, deadline=None)
@given(
    body=st.lists(lines(), max_size=12),
    trailing_newline=st.booleans(),
    first_line=st.integers(1, 10**6),
    chunk_bytes=st.integers(1, 600),
)
def test_columnar_decoding_equals_the_per_line_decoder(
    body: list[bytes], trailing_newline: bool, first_line: int, chunk_bytes: int
) -> None:
    block = b"\n".join(body) + (b"\n" if trailing_newline and body else b"")
    assert_same(block, first_line, chunk_bytes)


@settings(max_examples=200, deadline=None)
@given(stamps=st.lists(ts_values, min_size=1, max_size=30), chunk_bytes=st.integers(1, 4000))
def test_every_ts_form_gives_the_same_epoch_ms(stamps: list[Any], chunk_bytes: int) -> None:
    """Chunks of otherwise good events, so that most of them take the columnar path."""
    block = b"\n".join(
        compact({"ts": ts, "machine": "m", "signal": "s", "value": 1}) for ts in stamps
    )
    assert_same(block, 1, chunk_bytes)


def test_a_chunk_of_good_lines_takes_the_columnar_path() -> None:
    """Every value type and every ts form the fast path reads, blank lines between: proven
    equal without the per-line decoder (else the fast path would silently never run)."""
    stamps = [
        "2026-11-02T06:00:00Z",
        "2026-11-02T06:00:00.123456789+01:00",
        "2026-11-02T06:00:00.5-05:30",
        1_793_685_600_000,
        1_793_685_600_000.5,
        1_793_685_601_000.5,
    ]
    source = [True, False, 2**63 - 1, -(2**63), 3.0, -0.0, "0042", "true", "x" * 256]
    events = [
        {"ts": ts, "machine": "m1", "signal": "s", "value": value, "reason": "r", "seq": 1}
        for ts in stamps
        for value in source
    ]
    block = b"\n\n  \n".join(compact(e) for e in events) + b"\r\n"
    fast = _columnar_events(block)
    assert fast is not None
    per_line = decode_json_lines(block.split(b"\n"))
    assert not per_line.rejected
    assert_frame_equal(fast, per_line.events, check_exact=True)


@pytest.mark.parametrize("blank", [[], [b""], [b"  "]])
def test_lines_that_are_json_only_read_together_are_each_rejected(blank: list[bytes]) -> None:
    """Two events on one line and one event over two lines make as many events as lines
    when the lines are joined into one array; each line alone is still bad."""
    block = b"\n".join([GOOD + b"," + GOOD, *blank, HEAD, TAIL, GOOD])
    assert_same(block, 1, 1 << 20)
    decoded = decode_json_block(block)
    assert decoded.events.height == 1
    skipped = len(blank)
    assert [where for where, _, _ in decoded.rejected] == [
        "line 1",
        f"line {2 + skipped}",
        f"line {3 + skipped}",
    ]


def test_a_bad_line_is_reported_by_number_and_its_chunk_kept() -> None:
    good = [GOOD.replace(b'"value":1', b'"value":%d' % n) for n in range(6)]
    block = b"\n".join([*good[:3], b'{"ts":1,"machine":"m"}', *good[3:]]) + b"\n"
    decoded = decode_json_block(block, first_line=10, chunk_bytes=1 << 20)
    assert decoded.events["value_int"].to_list() == list(range(6))
    assert decoded.rejected == [("line 13", "signal is missing", '{"ts":1,"machine":"m"}')]


@pytest.mark.parametrize("batch_events", [1, 3, 1000])
def test_read_batches_numbers_lines_across_batches(tmp_path: Path, batch_events: int) -> None:
    """Batches end at line ends: no event is split, and line numbers run on across them."""
    good = GOOD.replace(b"2026-11-02T06:00:00Z", b"2026-11-02T06:00:00.250+01:00")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([good, good, b"{bad", good, b"", good, b"[]"]))
    batches = list(read_batches(path, batch_events))
    events = pl.concat([decoded.events for decoded, _ in batches])
    rejected = [r[0] for decoded, _ in batches for r in decoded.rejected]
    assert events.height == 4
    assert events["ts"].unique().to_list() == [1_793_595_600_250]
    assert rejected == ["line 3", "line 7"]
    assert batches[-1][1] == path.stat().st_size
