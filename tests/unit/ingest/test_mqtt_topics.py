"""Plain MQTT topics: pattern matching and payload parsing (pure; the broker is elsewhere)."""

from __future__ import annotations

import re

import pytest

from linepulse.sources import MqttTopic
from services.ingest.mqtt_payload import (
    PayloadError,
    PlainDecoder,
    PlainSample,
    Reading,
    TopicMatch,
    TopicPatterns,
    parse_json,
    parse_plain,
)


def patterns(*specs: tuple[str, str]) -> TopicPatterns:
    return TopicPatterns(tuple(MqttTopic(pattern=p, format=f) for p, f in specs))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plant/L1/press1/state", TopicMatch("press1", "state", "L1", "json")),
        ("plant/L2/oven/temperature", TopicMatch("oven", "temperature", "L2", "json")),
        ("raw/press1/speed", TopicMatch("press1", "speed", None, "plain")),
        ("counts/press1", TopicMatch("press1", None, None, "json")),
        ("plant/L1/press1", None),  # too few levels
        ("plant/L1/press1/state/extra", None),  # too many
        ("other/L1/press1/state", None),  # literal level differs
        ("plant//press1/state", None),  # an empty level fills no placeholder
    ],
)
def test_topic_levels_give_machine_signal_and_line(name: str, expected: TopicMatch | None) -> None:
    matcher = patterns(
        ("plant/{line}/{machine}/{signal}", "json"),
        ("raw/{machine}/{signal}", "plain"),
        ("counts/{machine}", "json"),
    )
    assert matcher.match(name) == expected


def test_first_matching_pattern_wins() -> None:
    matcher = patterns(("a/{machine}/{signal}", "plain"), ("a/{machine}/{signal}", "json"))
    found = matcher.match("a/m/s")
    assert found is not None
    assert found.format == "plain"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"value": 3}', Reading(3)),
        (b'{"value": "running", "reason": "jam"}', Reading("running", reason="jam")),
        (
            b'{"value": 1.5, "ts": "2024-01-01T00:00:00Z", "quality": "uncertain"}',
            Reading(1.5, "2024-01-01T00:00:00Z", quality="uncertain"),
        ),
        (b'{"value": true, "ts": 1700000000000}', Reading(True, 1_700_000_000_000)),
        (b"42", Reading(42)),
        (b'"idle"', Reading("idle")),
        (b"false", Reading(False)),
        (b"null", Reading(None)),  # SampleBatch says "value is missing"
        (b"[1, 2]", Reading([1, 2])),  # SampleBatch says the type is wrong
    ],
)
def test_json_payloads(payload: bytes, expected: Reading) -> None:
    assert parse_json(payload) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"value": ', "malformed JSON"),
        (b'{"value": NaN}', "malformed JSON"),  # NaN is not JSON
        (b"\xff\xfe", "malformed JSON"),
        (b'{"ts": 1}', "payload object has no value"),
        (b'{"value": 1, "unit": "C"}', "unknown field(s) in payload: unit"),
        (b'{"value": 1, "quality": 3}', "quality must be a string"),
    ],
)
def test_bad_json_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        parse_json(payload)


def test_signal_from_the_payload_when_the_topic_has_none() -> None:
    reading = parse_json(b'{"signal": "good_count", "value": 7}', signal_in_payload=True)
    assert (reading.signal, reading.value) == ("good_count", 7)
    with pytest.raises(PayloadError, match="must be an object"):
        parse_json(b"7", signal_in_payload=True)
    with pytest.raises(PayloadError, match="signal must be a string"):
        parse_json(b'{"value": 7}', signal_in_payload=True)


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"12", 12),
        (b" 12.5\n", 12.5),
        (b"-3", -3),
        (b"1e3", 1000.0),
        (b"3.0", 3.0),
        (b"9223372036854775807", 2**63 - 1),  # exact, not the float 2**63
        (b"running", "running"),
        (b"true", "true"),  # text, not a boolean: plain payloads carry numbers or text
        # Not JSON numbers, so text as sent: a material number keeps its zeros.
        (b"0042", "0042"),
        (b"NaN", "NaN"),
        (b"nan", "nan"),
        (b"inf", "inf"),
        (b"1_000", "1_000"),
        (b"+5", "+5"),
        (b".5", ".5"),
    ],
)
def test_plain_payloads_are_numbers_when_they_are_json_numbers(
    payload: bytes, value: object
) -> None:
    parsed = parse_plain(payload)
    assert parsed.value == value
    assert type(parsed.value) is type(value)


@pytest.mark.parametrize(("payload", "reason"), [(b"", "empty payload"), (b"\xff", "not UTF-8")])
def test_bad_plain_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_plain(payload)


def decoder() -> PlainDecoder:
    topics = (
        MqttTopic(pattern="plant/{line}/{machine}/{signal}", format="json"),
        MqttTopic(pattern="raw/{machine}", format="plain"),
    )
    return PlainDecoder(topics, {"press1": "L1"})


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("nowhere/press1", b"1", "topic matches no configured pattern"),
        (
            "plant/L2/press1/state",
            b'{"value": "idle"}',
            "line mismatch: topic says line 'L2', machine 'press1' is on 'L1'",
        ),
        ("raw/press1", b"1", "plain payloads need a {signal} level in the pattern"),
        ("plant/L1/press1/state", b"{", "malformed JSON"),
    ],
)
def test_decoder_gives_the_dead_letter_reason(name: str, payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        decoder().decode(name, payload, received_ms=5)


def test_decoder_uses_the_receive_time_only_when_the_payload_has_none() -> None:
    assert decoder().decode("plant/L1/press1/state", b'{"value": "down", "ts": 7}', 5) == (
        PlainSample(7, "press1", "state", "down", None, "good")
    )
    assert decoder().decode("plant/L1/oven/temp", b"181.5", 5) == PlainSample(
        5, "oven", "temp", 181.5, None, "good"
    )
