"""The event decoders agree: the msgspec fast path and the reference `decode_event`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linepulse.events import EventError, decode_event, decode_json

texts = st.text(max_size=6) | st.text(min_size=250, max_size=260)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | texts
FIELDS = ["ts", "machine", "signal", "value", "reason", "quality", "line", "seq", "extra"]
events = st.dictionaries(
    st.sampled_from(FIELDS),
    scalars
    | st.sampled_from(["2026-11-02T06:00:00Z", "2026-11-02T06:00:00.5+01:00", "good", "bad"])
    | st.lists(scalars, max_size=2),
    max_size=8,
)


def reference(raw: bytes) -> Any:
    try:
        return decode_event(orjson.loads(raw))
    except EventError as error:
        return ("rejected", str(error))


def fast(raw: bytes) -> Any:
    try:
        return decode_json(raw)
    except EventError as error:
        return ("rejected", str(error))


@settings(max_examples=500, deadline=None)
@given(events)
def test_fast_path_agrees_with_the_reference_decoder(event: dict[str, Any]) -> None:
    try:
        raw = orjson.dumps(event)
    except (TypeError, orjson.JSONEncodeError):
        return  # not representable as JSON (e.g. a huge int): nothing to compare
    assert fast(raw) == reference(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ts": 1, "machine": "m", "signal": "s", "value": 1e400}', "infinity"),
        (b'{"ts": 1, "machine": "m", "signal": "s", "value": 1, "x": 2}', r"unknown field\(s\): x"),
        (
            b'{"ts": "2026-11-02T06:00:00", "machine": "m", "signal": "s", "value": 1}',
            "no UTC offset",
        ),
        (b'{"ts": 1, "machine": "m"', "malformed JSON"),
    ],
)
def test_refusals_name_the_problem(raw: bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        decode_json(raw)
