"""Plain MQTT topics, decoded: a topic name and its payload bytes in, one sample or a reason out.

Pure (no broker, no clock, no I/O), so every rule is unit tested without Mosquitto: the
topic patterns say which machine, signal and line a topic is; the payload is JSON (an object
`{"value", "ts"?, "reason"?, "quality"?}` or a bare scalar) or plain text (a number when it
reads as a JSON number, else the text). Whatever cannot be read raises `PayloadError`, whose
message is the dead-letter reason. Sparkplug B payloads are `sparkplug.py`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from linepulse.events import MAX_TEXT
from linepulse.sources import MqttTopic
from services.ingest.errors import PayloadError as PayloadError  # raised here; defined with its kin

_JSON_KEYS: Final = frozenset({"value", "ts", "reason", "quality"})
# RFC 8259 §6: what a JSON number looks like. A plain payload is a number exactly when it
# would be one in JSON; "0042", "NaN", "1_000" or "+5" are text, as a material number is.
_JSON_NUMBER: Final = re.compile(
    r"-?(?:0|[1-9][0-9]*)"  # an int: no leading zero, no sign but minus
    r"(?P<float>(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"  # a fraction or an exponent: a float
)


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a topic's levels say: the machine, the signal (None when the pattern has no
    `{signal}`: the JSON payload names it) and the line (None without `{line}`)."""

    machine: str
    signal: str | None
    line: str | None
    format: str


class TopicPatterns:
    """Matches topic names against the configured patterns, first match wins."""

    def __init__(self, topics: tuple[MqttTopic, ...]) -> None:
        self._patterns = [(t.split(), t.format) for t in topics]

    def match(self, name: str) -> TopicMatch | None:
        levels = name.split("/")
        for pattern, fmt in self._patterns:
            if len(pattern) != len(levels):
                continue
            found: dict[str, str] = {}
            for want, got in zip(pattern, levels, strict=True):
                if want[0:1] == "{":
                    if not got:
                        break
                    found[want] = got
                elif want != got:
                    break
            else:
                return TopicMatch(
                    found["{machine}"], found.get("{signal}"), found.get("{line}"), fmt
                )
        return None


@dataclass(frozen=True, slots=True)
class Reading:
    """One value from a plain-topic payload; `ts` None means "use the receive time"."""

    value: object
    ts: object = None
    reason: str | None = None
    quality: str = "good"
    signal: str | None = None


def parse_json(payload: bytes, *, signal_in_payload: bool = False) -> Reading:
    """A JSON payload: an object `{"value", "ts"?, "reason"?, "quality"?}` (and `"signal"`
    when the topic has no `{signal}` level), or a bare JSON scalar as the value."""
    try:
        # msgspec keeps JSON's types: an int stays an exact int at any size (orjson would
        # turn one beyond 64 bits into a float), 3.0 stays a float, "0042" text.
        doc = msgspec.json.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise PayloadError(f"malformed JSON: {error}") from None
    if not isinstance(doc, dict):
        if signal_in_payload:
            raise PayloadError("the topic has no {signal}: the payload must be an object")
        return Reading(doc)
    allowed = _JSON_KEYS | {"signal"} if signal_in_payload else _JSON_KEYS
    unknown = doc.keys() - allowed
    if unknown:
        raise PayloadError(f"unknown field(s) in payload: {', '.join(sorted(unknown))}")
    if "value" not in doc:
        raise PayloadError("payload object has no value")
    quality = doc.get("quality", "good")
    if not isinstance(quality, str):
        raise PayloadError(f"quality must be a string, got {quality!r}")
    signal = doc.get("signal")
    if signal_in_payload and not isinstance(signal, str):
        raise PayloadError(f"signal must be a string, got {signal!r}")
    return Reading(doc["value"], doc.get("ts"), doc.get("reason"), quality, signal)


def parse_plain(payload: bytes) -> Reading:
    """A text payload: a number when it is a JSON number (an int without fraction or
    exponent, else a float), otherwise the text, kept as it is ("0042" stays text)."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("plain payload is not UTF-8 text") from None
    if not text:
        raise PayloadError("empty payload")
    number = _JSON_NUMBER.fullmatch(text)
    if number is None or len(text) > MAX_TEXT:  # a longer one is refused as text is
        return Reading(text)
    return Reading(float(text) if number.group("float") else int(text))


@dataclass(frozen=True, slots=True)
class PlainSample:
    """One sample read from a plain topic, before the sample batch checks its machine and
    value type. `ts` is as the payload gave it (epoch ms or ISO 8601 text) or the receive
    time in epoch ms when it gave none."""

    ts: object
    machine: str
    signal: str
    value: object
    reason: str | None
    quality: str


class PlainDecoder:
    """Decodes plain-topic messages: the configured patterns, and each machine's line to
    check a `{line}` level against."""

    def __init__(self, topics: tuple[MqttTopic, ...], line_of: Mapping[str, str]) -> None:
        self._patterns = TopicPatterns(topics)
        self._line_of = line_of

    def match(self, name: str) -> TopicMatch | None:
        """What topic `name`'s levels say under the configured patterns; None when no
        pattern matches it."""
        return self._patterns.match(name)

    def decode(self, name: str, payload: bytes, received_ms: int) -> PlainSample:
        """The sample in the message on topic `name`, received at `received_ms` (epoch ms);
        raises `PayloadError` with the dead-letter reason when there is none. An unknown
        machine is not refused here: the sample batch refuses it with the others."""
        found = self._patterns.match(name)
        if found is None:
            raise PayloadError("topic matches no configured pattern")
        return self.decode_match(found, payload, received_ms)

    def decode_match(self, found: TopicMatch, payload: bytes, received_ms: int) -> PlainSample:
        """`decode` for a topic already matched (`match`), as `linepulse probe` does to
        tell an unconfigured topic from an unreadable message."""
        machine = found.machine
        line = self._line_of.get(machine)
        if found.line is not None and line is not None and found.line != line:
            raise PayloadError(
                f"line mismatch: topic says line {found.line!r}, machine {machine!r} is on {line!r}"
            )
        if found.format == "json":
            reading = parse_json(payload, signal_in_payload=found.signal is None)
        else:
            if found.signal is None:
                raise PayloadError("plain payloads need a {signal} level in the pattern")
            reading = parse_plain(payload)
        return PlainSample(
            reading.ts if reading.ts is not None else received_ms,
            machine,
            found.signal or reading.signal or "",
            reading.value,
            reading.reason,
            reading.quality,
        )
