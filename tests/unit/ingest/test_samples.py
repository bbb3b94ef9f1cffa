"""SampleBatch: what ingesters hand to the Kafka side, and what becomes a dead letter."""

from __future__ import annotations

from datetime import UTC, datetime

from linepulse.events import EVENT_SCHEMA
from services.ingest.samples import RAW_KEEP_BYTES, DeadLetter, SampleBatch


def test_good_samples_become_one_frame_of_the_event_schema() -> None:
    batch = SampleBatch(["m1"], "src")
    assert batch.add(1_700_000_000_000, "m1", "state", "running", reason=None)
    assert batch.add(datetime(2024, 1, 1, tzinfo=UTC), "m1", "total_count", 5)
    assert batch.add(datetime(2024, 1, 1), "m1", "temperature", 20.5, quality="uncertain")  # noqa: DTZ001 - naive OPC-UA time is UTC
    assert batch.add("2024-01-01T00:00:01Z", "m1", "door_open", True)
    frame, letters = batch.take()
    assert letters == []
    assert frame.schema == EVENT_SCHEMA
    assert frame.rows() == [
        (1_700_000_000_000, "m1", "state", None, None, "running", None, "good"),
        (1_704_067_200_000, "m1", "total_count", None, 5, None, None, "good"),
        (1_704_067_200_000, "m1", "temperature", 20.5, None, None, None, "uncertain"),
        (1_704_067_201_000, "m1", "door_open", None, 1, "true", None, "good"),
    ]
    assert len(batch) == 0  # take() empties it


def test_unusable_samples_become_dead_letters_with_their_reason_and_raw_payload() -> None:
    batch = SampleBatch(["m1"], "src")
    cases = [
        (("2024-01-01T00:00:00Z", "ghost", "state", "running"), "unknown machine 'ghost'"),
        (("2024-01-01T00:00:00Z", "m1", "temperature", float("nan")), "value must be finite"),
        (("2024-01-01T00:00:00Z", "m1", "total_count", "many"), "total_count must be a number"),
        (("yesterday", "m1", "state", "running"), "ts is not an RFC 3339 timestamp"),
        (("2024-01-01T00:00:00Z", "m1", "state", None), "value is missing"),
        (
            ("2024-01-01T00:00:00Z", "m1", "state", [1, 2]),
            "value must be a string, number or boolean",
        ),
    ]
    for args, _ in cases:
        assert not batch.add(*args, raw=b"raw-bytes", where="topic/x")
    assert batch.add("2024-01-01T00:00:00Z", "m1", "state", "running")
    frame, letters = batch.take()
    assert frame.height == 1
    assert [letter.source for letter in letters] == ["src:topic/x"] * len(cases)
    for letter, (_, reason) in zip(letters, cases, strict=True):
        assert reason in letter.reason
        assert letter.raw == b"raw-bytes"


def test_a_dead_letter_record_keeps_text_or_base64_and_the_full_size() -> None:
    text = DeadLetter("s", "why", "x" * (RAW_KEEP_BYTES + 10)).as_record()
    assert text["raw_bytes"] == RAW_KEEP_BYTES + 10
    assert len(text["raw"]) == RAW_KEEP_BYTES
    binary = DeadLetter("s", "why", b"\xff\xfe\x00").as_record()
    assert binary["raw_base64"] == "//4A"
    assert "raw" not in DeadLetter("s", "why").as_record()
