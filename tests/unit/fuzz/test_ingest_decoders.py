"""Properties of the decoders at the edge: MQTT payloads, Sparkplug B, JSON telemetry.

For any input: a value or a rejection that says why, never an exception out of the
ingest loop; what is kept survives the frame the Kafka sink sends; every dead letter
serialises for the DLQ. The named tests below the properties are the inputs the fuzzers
found, kept so they stay fixed.
"""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
import orjson
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from linepulse.events import EventError, decode_event, decode_json, decode_json_lines
from linepulse.wire import ARROW, decode_records, encode_arrow
from services.ingest import sparkplug as sp
from services.ingest import sparkplug_b_pb2 as pb
from services.ingest.mqtt_payload import PayloadError, parse_json, parse_plain
from services.ingest.samples import SampleBatch
from tests.fuzz.mqtt_json import INGESTER, TOPICS

SETTINGS = settings(max_examples=300, deadline=None)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
payload_fields = st.sampled_from(["value", "ts", "reason", "quality", "signal", "seq", "x"])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """JSON objects shaped like payloads, bare JSON values, numbers as text, raw bytes."""
    form = draw(st.integers(0, 4))
    if form == 0:
        return draw(st.binary(max_size=60))
    if form == 1:
        number = draw(st.sampled_from(["9" * 400, "1e400", "-0", "nan", "inf", "1_000", " 7 "]))
        return number.encode()
    if form == 2:
        return json.dumps(draw(json_values)).encode()
    doc = draw(st.dictionaries(payload_fields, json_values, max_size=5))
    if draw(st.booleans()):
        doc["value"] = draw(json_scalars)
    return json.dumps(doc, allow_nan=True).encode()


def kept_and_rejected() -> tuple[pl.DataFrame, list[Any]]:
    frame, letters = INGESTER._batch.take()
    for letter in letters:
        assert letter.reason.strip(), letter
        orjson.dumps(letter.as_record())
    return frame, letters


@SETTINGS
@given(topic=st.sampled_from(TOPICS), payload=payloads())
def test_an_mqtt_payload_is_a_sample_or_a_dead_letter_with_a_reason(
    topic: str, payload: bytes
) -> None:
    INGESTER._plain(topic, payload)
    frame, letters = kept_and_rejected()
    assert frame.height + len(letters) == 1
    if frame.height:
        assert frame["value_num"].drop_nulls().is_finite().all()
        decoded = decode_records([(encode_arrow(frame), [("content-type", ARROW.encode())], 0)])
        assert all(reason.strip() for _, reason, _ in decoded.rejected)


@SETTINGS
@given(payload=payloads(), signal_in_payload=st.booleans())
def test_the_payload_parsers_raise_only_payload_errors(
    payload: bytes, signal_in_payload: bool
) -> None:
    for parse in (lambda p: parse_json(p, signal_in_payload=signal_in_payload), parse_plain):
        reason = "parsed"
        try:
            parse(payload)
        except PayloadError as error:
            reason = str(error)
        assert reason.strip()


# -- Sparkplug B -----------------------------------------------------------------------------

VALUE_FIELDS = ("int_value", "long_value", "float_value", "double_value", "boolean_value",
                "string_value", "bytes_value")  # fmt: skip
field_values = {
    "int_value": st.integers(0, 2**32 - 1),
    "long_value": st.integers(0, 2**64 - 1),
    "float_value": st.floats(width=32),
    "double_value": st.floats(),
    "boolean_value": st.booleans(),
    "string_value": st.text(max_size=10),
    "bytes_value": st.binary(max_size=10),
}


@st.composite
def sparkplug_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A Sparkplug message with any datatype over any value field, names, aliases, seq."""
    kind = draw(st.sampled_from([sp.NBIRTH, sp.NDATA, sp.DBIRTH, sp.DDATA, sp.DDEATH, sp.NDEATH]))
    message = pb.Payload()
    if draw(st.booleans()):
        message.timestamp = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        message.seq = draw(st.integers(0, 300))
    for _ in range(draw(st.integers(0, 4))):
        metric = message.metrics.add()
        if draw(st.booleans()):
            metric.name = draw(st.sampled_from([sp.BDSEQ, "state", "total_count", "speed", ""]))
        if draw(st.booleans()):
            metric.alias = draw(st.integers(0, 5))
        metric.datatype = draw(st.integers(0, 25))
        if draw(st.integers(0, 5)) == 0:
            metric.is_null = True
        elif draw(st.booleans()):
            name = draw(st.sampled_from(VALUE_FIELDS))
            setattr(metric, name, draw(field_values[name]))
        if draw(st.booleans()):
            metric.timestamp = draw(st.integers(0, 2**64 - 1))
    raw = message.SerializeToString()
    if draw(st.integers(0, 5)) == 0:  # corrupt some: a flipped byte or a cut
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=3))
    return kind, raw


@SETTINGS
@given(messages=st.lists(sparkplug_messages(), max_size=6))
def test_sparkplug_sessions_never_raise_out_of_the_host(messages: list[tuple[str, bytes]]) -> None:
    machines = ("edge-1", "press")
    host = sp.SparkplugHost("g", devices={}, metrics={}, machines=machines)
    batch = SampleBatch(machines, "fuzz")
    for number, (kind, raw) in enumerate(messages):
        try:
            payload = sp.decode_payload(raw)
        except sp.SparkplugError as error:
            batch.reject(str(error), raw)  # as the ingester does; checked below
            continue
        device = "press" if kind.startswith("D") else None
        host.handle(sp.SparkplugTopic("g", kind, "edge-1", device), payload, number, batch, raw)
    frame, letters = batch.take()
    assert frame["value_num"].drop_nulls().is_finite().all()
    for letter in letters:
        assert letter.reason.strip()
        orjson.dumps(letter.as_record())


# -- JSON telemetry --------------------------------------------------------------------------

event_like = st.fixed_dictionaries(
    {"ts": json_scalars, "machine": json_scalars, "signal": json_scalars, "value": json_scalars},
    optional={"quality": json_scalars, "reason": json_scalars, "seq": json_scalars,
              "line": json_scalars, "other": json_scalars},
)  # fmt: skip


@SETTINGS
@example(event={"ts": 0, "machine": "0", "signal": "0", "value": -(2**63) - 1})
@example(event={"ts": 0, "machine": "0", "signal": "0", "value": 2**64, "quality": "poor"})
@given(event=event_like)
def test_the_fast_and_the_careful_json_decoders_agree(event: dict[str, Any]) -> None:
    """msgspec's fast path and `decode_event` must keep the same row or both refuse."""
    raw = json.dumps(event).encode()  # Infinity and NaN included, as Python writes them
    fast: object
    try:
        fast = decode_json(raw)
    except EventError as error:
        fast = str(error)
    try:  # an exact parse, as decode_json's own fallback (orjson makes 2**64 a float)
        careful: object = decode_event(msgspec.json.decode(raw))
    except (EventError, msgspec.DecodeError) as error:
        careful = str(error)
    if isinstance(fast, str):
        assert fast.strip()
        assert isinstance(careful, str), careful
    else:
        assert careful == fast


@SETTINGS
@given(
    lines=st.lists(
        st.binary(max_size=40) | event_like.map(lambda e: json.dumps(e).encode()), max_size=8
    )
)
def test_json_lines_are_rows_or_numbered_rejections(lines: list[bytes]) -> None:
    decoded = decode_json_lines(lines)
    blank = sum(1 for line in lines if not line.strip())
    assert decoded.events.height + len(decoded.rejected) == len(lines) - blank
    assert all(where.startswith("line ") and reason for where, reason, _ in decoded.rejected)


# -- what the fuzzers found, kept --------------------------------------------------------------


def test_a_400_digit_number_is_refused_not_an_overflow() -> None:
    digits = b"9" * 400
    with pytest.raises(EventError, match="outside the 64-bit integer range"):
        decode_json(b'{"ts": 1, "machine": "m", "signal": "s", "value": ' + digits + b"}")
    batch = SampleBatch(["m1"], "fuzz")
    assert not batch.add(1, "m1", "speed", parse_plain(digits).value)
    assert "value is longer than 256 characters" in batch.letters[0].reason


def test_json_with_a_key_that_is_not_utf8_is_malformed_json() -> None:
    raw = b'{"ts": 1, "machine": "m", "sign\x95l": "s", "value": 1}'
    with pytest.raises(EventError, match="malformed JSON"):
        decode_json(raw)
    assert decode_json_lines([raw]).rejected[0][0] == "line 1"


def test_a_corrupt_compressed_arrow_record_is_a_rejection() -> None:
    frame = pl.DataFrame({"ts": [1], "machine": ["m"], "signal": ["s"], "value": ["x"] * 1})
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="lz4")
    body = bytearray(buffer.getvalue())
    body[-40:] = bytes(40)  # the compressed body, zeroed
    decoded = decode_records([(bytes(body), [("content-type", ARROW.encode())], 7)])
    assert decoded.events.is_empty()
    assert decoded.rejected[0][0] == "record@7"
    assert decoded.rejected[0][1].startswith(f"malformed {ARROW} batch: ")


def test_an_arrow_batch_of_the_wrong_column_types_is_refused_alone() -> None:
    def ipc(frame: pl.DataFrame) -> bytes:
        buffer = io.BytesIO()
        frame.write_ipc_stream(buffer)
        return buffer.getvalue()

    good = ipc(pl.DataFrame({"ts": [1_793_599_200_000], "machine": ["m"], "signal": ["s"],
                             "value": [1]}))  # fmt: skip
    bad = ipc(pl.DataFrame({"ts": [1], "machine": [[1, 2]], "signal": ["s"], "value": ["x"]}))
    headers = [("content-type", ARROW.encode())]
    decoded = decode_records([(good, headers, 0), (bad, headers, 1)])
    assert decoded.events["machine"].to_list() == ["m"]
    assert [(where, reason.split(":")[0]) for where, reason, _ in decoded.rejected] == [
        ("record@1", f"unusable {ARROW} batch")
    ]


def sparkplug_metric(**fields: Any) -> bytes:
    message = pb.Payload(timestamp=1_793_599_200_000, seq=0)
    metric = message.metrics.add()
    for name, value in fields.items():
        setattr(metric, name, value)
    return message.SerializeToString()


def test_a_sparkplug_name_that_is_not_utf8_is_a_payload_error() -> None:
    raw = sparkplug_metric(name="aa", datatype=sp.STRING, string_value="running")
    with pytest.raises(sp.SparkplugError, match="not valid UTF-8"):
        sp.decode_payload(raw.replace(b"aa", b"\xed\xa0"))
    with pytest.raises(sp.SparkplugError, match="not valid UTF-8"):
        sp.decode_payload(raw.replace(b"running", b"runn\xffng"))


def test_a_double_too_large_for_a_float_metric_is_kept_as_sent() -> None:
    raw = sparkplug_metric(name="speed", datatype=sp.FLOAT, double_value=1e300)
    assert sp.decode_payload(raw).metrics[0].value == 1e300
