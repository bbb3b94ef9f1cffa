"""Fuzz target: plain MQTT topics, JSON and text payloads, through the ingester's own path.

One input is a topic (picked from patterns that match, mismatch or half-match the plant)
and a payload. Contract: `MqttIngester._plain` never raises; whatever it keeps survives
`SampleBatch.take()`, the Arrow encoding the Kafka sink sends and the KPI worker's decode
of it; every dead letter has a reason and serialises to JSON for the DLQ topic.

    python -m tests.fuzz.mqtt_json -atheris_runs=100000
"""

from __future__ import annotations

import sys

import atheris
from prometheus_client import CollectorRegistry

with atheris.instrument_imports(include=["linepulse", "services"]):
    import orjson
    import polars as pl

    from linepulse.config import PlantConfig, parse_config
    from linepulse.wire import ARROW, decode_records, encode_arrow
    from services.ingest.metrics import IngestMetrics
    from services.ingest.mqtt import MqttIngester
    from services.ingest.samples import DeadLetter

from tests.fuzz.harness import check_reason, fuzz

TOPICS = (
    "plant/line-1/m1/state",
    "plant/line-1/m1/total_count",
    "plant/line-2/m1/state",  # the wrong line for m1
    "plant/line-1/ghost/state",  # not a machine of the plant
    "plain/m2/speed",
    "plain/m2/good_count",
    "bare/m1",  # the signal comes from the payload
    "plant//m1/state",
    "elsewhere/m1",
)
SEEDS = (
    b'{"value": "running", "ts": "2026-11-02T06:00:00Z"}',
    b'{"value": 17, "ts": 1793599200000, "quality": "uncertain", "reason": "jam"}',
    b'{"value": true}',
    b'{"signal": "state", "value": "down", "reason": "jam"}',
    b"12.5",
    b'"idle"',
)


class _NoSink:
    """The ingester is driven synchronously here: nothing reaches a sink."""

    async def put(self, events: pl.DataFrame) -> None:  # pragma: no cover - never flushed
        raise AssertionError("not flushed in the fuzz target")

    async def dead_letter(self, letters: list[DeadLetter]) -> None:  # pragma: no cover
        raise AssertionError("not flushed in the fuzz target")

    def position(self) -> int:  # pragma: no cover - never flushed
        raise AssertionError("nothing is flushed")

    async def kept(self, position: int) -> None:  # pragma: no cover - never flushed
        raise AssertionError("nothing is flushed")


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "fuzz",
            "lines": [
                {"id": "line-1", "machines": [{"id": "m1"}]},
                {"id": "line-2", "machines": [{"id": "m2", "counters": ["good_count"]}]},
            ],
            "sources": {
                "mqtt": [
                    {
                        "id": "broker",
                        "topics": [
                            {"pattern": "plant/{line}/{machine}/{signal}"},
                            {"pattern": "plain/{machine}/{signal}", "format": "plain"},
                            {"pattern": "bare/{machine}"},
                        ],
                    }
                ]
            },
        }
    )


INGESTER = MqttIngester(
    plant().sources.mqtt[0], plant(), _NoSink(), IngestMetrics.create(CollectorRegistry())
)


def split_topic(data: bytes) -> tuple[str, bytes]:
    """The first byte picks a known topic; 0xFF means the topic is the text up to the
    first newline, so the mutator can also reach topics nobody configured."""
    if not data:
        return TOPICS[0], b""
    if data[0] == 0xFF:
        name, _, payload = data[1:].partition(b"\n")
        return name.decode("utf-8", "replace"), payload
    return TOPICS[data[0] % len(TOPICS)], data[1:]


def test_one_input(data: bytes) -> None:
    topic, payload = split_topic(data)
    INGESTER._plain(topic, payload)
    frame, letters = INGESTER._batch.take()
    for letter in letters:
        assert letter.reason.strip(), letter
        orjson.dumps(letter.as_record())
    if frame.height:
        decoded = decode_records([(encode_arrow(frame), [("content-type", ARROW.encode())], 0)])
        for _, reason, _ in decoded.rejected:
            check_reason(ValueError(reason))


def main() -> None:
    fuzz(test_one_input, [bytes([n]) + seed for n in range(len(TOPICS)) for seed in SEEDS])


if __name__ == "__main__":
    main()
    sys.exit(0)
