"""The disk spool on its own: order, acknowledgement, rotation, restart, torn writes, limits."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from linepulse.events import EVENT_SCHEMA, to_json_events
from services.ingest.samples import SampleBatch
from services.ingest.spool import (
    HEADER,
    SUFFIX,
    Entry,
    Kind,
    Spool,
    decode_letters,
    decode_samples,
    encode_letters,
    encode_samples,
)

MIB = 1024 * 1024


def samples(first: int, count: int) -> pl.DataFrame:
    """`count` samples whose `ts` numbers them from `first`, so order is easy to check."""
    return pl.DataFrame(
        {
            "ts": list(range(first, first + count)),
            "machine": [f"m{i % 7}" for i in range(first, first + count)],
            "signal": ["total_count"] * count,
            "value_num": [float(i) for i in range(first, first + count)],
            "value_int": [None] * count,
            "value_str": [None] * count,
            "reason": [None] * count,
            "quality": ["good"] * count,
        },
        schema=EVENT_SCHEMA,
    )


def fill(spool: Spool, entries: int, per_entry: int = 100, first_seq: int = 0) -> None:
    for n in range(entries):
        seq = first_seq + n
        spool.append(Kind.SAMPLES, seq, per_entry, encode_samples(samples(seq * per_entry, 100)))


def drain(spool: Spool) -> list[Entry]:
    """Read and acknowledge everything, in order."""
    out = []
    while (entry := spool.next_unread()) is not None:
        out.append(entry)
        spool.ack(entry)
    return out


def ts_of(entries: list[Entry]) -> list[int]:
    frames = [decode_samples(e.payload) for e in entries if e.kind is Kind.SAMPLES]
    return pl.concat(frames)["ts"].to_list() if frames else []


def test_entries_come_back_in_order_and_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 5)
    letters = [{"source": "mqtt-1", "reason": "unknown machine 'x'", "raw": "{}"}]
    spool.append(Kind.LETTERS, 5, 1, encode_letters(letters))
    assert spool.samples == 500
    assert spool.letters == 1
    entries = drain(spool)
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4, 5]
    assert ts_of(entries) == list(range(500))
    assert decode_samples(entries[0].payload).equals(samples(0, 100))
    assert decode_letters(entries[5].payload) == letters
    assert spool.is_empty
    assert spool.samples == spool.letters == 0
    assert list(tmp_path.iterdir()) == []  # every segment deleted once acknowledged


def test_segments_rotate_are_named_in_order_and_deleted_only_when_fully_acked(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=8 * MIB, segment_bytes=1)  # floor: 64 KiB a segment
    payload = os.urandom(40_000)  # incompressible: two entries fill a segment
    for seq in range(6):
        spool.append(Kind.LETTERS, seq, 1, payload)
    names = [p.name for p in spool.segments]
    assert names == sorted(names) == [f"{s:020d}{SUFFIX}" for s in (0, 2, 4)]
    first = spool.next_unread()
    assert first is not None
    spool.ack(first)
    assert (tmp_path / names[0]).exists()  # one of its two entries is still unacknowledged
    second = spool.next_unread()
    assert second is not None
    spool.ack(second)
    assert not (tmp_path / names[0]).exists()
    assert spool.entries == 4
    spool.close()


def test_acks_must_follow_the_read_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 3)
    first, second = spool.next_unread(), spool.next_unread()
    assert first is not None
    assert second is not None
    with pytest.raises(ValueError, match="out of order"):
        spool.ack(second)
    spool.ack(first)
    spool.ack(second)
    assert spool.entries == 1
    spool.close()


def test_rewind_hands_out_unacknowledged_entries_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 3)
    first = spool.next_unread()
    assert first is not None
    spool.ack(first)
    spool.next_unread()
    spool.rewind()
    assert [e.seq for e in drain(spool)] == [1, 2]
    spool.close()


def test_a_restart_finds_the_unacknowledged_entries_and_continues_the_sequence(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 4)
    first = spool.next_unread()
    assert first is not None
    spool.ack(first)
    spool.next_unread()  # handed out, never acknowledged: must come back
    spool.close()

    again = Spool(tmp_path, max_bytes=MIB)
    assert again.next_seq == 4
    assert again.samples == 300
    again.append(Kind.SAMPLES, again.next_seq, 100, encode_samples(samples(400, 100)))
    entries = drain(again)
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert ts_of(entries) == list(range(100, 500))


def test_close_keeps_only_the_undelivered_rest_of_a_half_sent_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 3)
    entry = spool.next_unread()
    assert entry is not None
    rest = decode_samples(entry.payload).slice(60)
    spool.settle(entry, rest.height, encode_samples(rest))
    spool.close()

    again = Spool(tmp_path, max_bytes=MIB)
    assert again.samples == 240
    assert ts_of(drain(again)) == list(range(60, 300))


def test_prepend_puts_an_older_entry_ahead_of_a_rewritten_head(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 3, first_seq=10)
    entry = spool.next_unread()
    assert entry is not None
    spool.ack(entry)
    spool.close()  # rewrites the head without entry 10, under the same name
    again = Spool(tmp_path, max_bytes=MIB)
    with pytest.raises(ValueError, match="below 10"):
        again.prepend(Kind.SAMPLES, 10, 100, encode_samples(samples(0, 100)))
    again.prepend(Kind.SAMPLES, 7, 100, encode_samples(samples(0, 100)))
    again.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{7:020d}{SUFFIX}", f"{10:020d}{SUFFIX}"]
    entries = drain(Spool(tmp_path, max_bytes=MIB))
    assert [e.seq for e in entries] == [7, 11, 12]
    assert ts_of(entries) == list(range(100)) + list(range(1100, 1300))


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(HEADER.size // 2, id="inside-the-header"),
        pytest.param(HEADER.size + 10, id="inside-the-payload"),
    ],
)
def test_a_torn_last_entry_is_cut_and_earlier_entries_kept(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 3)
    spool.close()
    (segment,) = spool.segments
    third = segment.stat().st_size - HEADER.size - len(encode_samples(samples(200, 100)))
    # A crash mid-write: the third entry is only partly on disk.
    with segment.open("r+b") as file:
        file.truncate(third + cut)

    again = Spool(tmp_path, max_bytes=MIB)
    assert again.entries == 2
    assert again.dropped_bytes == cut
    assert segment.stat().st_size == third  # cut back to the last whole entry
    again.append(Kind.SAMPLES, again.next_seq, 100, encode_samples(samples(900, 100)))
    entries = drain(again)
    assert [e.seq for e in entries] == [0, 1, 2]
    assert ts_of(entries) == [*range(200), *range(900, 1000)]
    again.close()


def test_a_corrupt_entry_ends_its_segment_but_not_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=8 * MIB, segment_bytes=1)
    payload = os.urandom(40_000)
    for seq in range(4):
        spool.append(Kind.LETTERS, seq, 1, payload)
    spool.close()
    first = spool.segments[0]
    with first.open("r+b") as file:  # flip a byte in the second entry's payload
        file.seek(2 * HEADER.size + len(payload) + 5)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))

    again = Spool(tmp_path, max_bytes=8 * MIB)
    assert [e.seq for e in drain(again)] == [0, 2, 3]


def test_files_that_are_not_segments_or_hold_nothing_are_handled(tmp_path: Path) -> None:
    (tmp_path / f"{5:020d}{SUFFIX}").write_bytes(b"LP")  # a segment torn in its first header
    (tmp_path / f"{3:020d}{SUFFIX}.tmp").write_bytes(b"half a rewrite")
    spool = Spool(tmp_path, max_bytes=MIB)
    assert spool.is_empty
    assert list(tmp_path.iterdir()) == []


def test_full_when_the_files_reach_the_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    payload = os.urandom(100_000)
    seq = 0
    while not spool.full:
        spool.append(Kind.LETTERS, seq, 1, payload)
        seq += 1
    assert seq == -(-MIB // (HEADER.size + len(payload)))
    assert spool.size_bytes >= MIB
    assert sum(p.stat().st_size for p in spool.segments) == spool.size_bytes
    # Acknowledging frees space a segment at a time.
    while spool.full:
        entry = spool.next_unread()
        assert entry is not None
        spool.ack(entry)
    assert spool.size_bytes < MIB
    spool.close()
    assert Spool(tmp_path / "other", max_bytes=MIB).full is False


def test_sequence_numbers_must_grow(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MIB)
    fill(spool, 2)
    with pytest.raises(ValueError, match="must grow"):
        spool.append(Kind.SAMPLES, 1, 1, b"")
    spool.close()


# -- value types (issue 14, item 3) ----------------------------------------------------------


def test_values_keep_their_type_across_a_restart(tmp_path: Path) -> None:
    values = ["0042", "1e3", "NaN", 2**53 + 1, 2**63 - 1, 0.1, 3.0, True]
    batch = SampleBatch(["m1"], "src")
    for i, value in enumerate(values):
        assert batch.add(1_793_599_200_000 + i, "m1", "reading", value)
    frame, _ = batch.take()
    spool = Spool(tmp_path, max_bytes=MIB)
    spool.append(Kind.SAMPLES, 0, frame.height, encode_samples(frame))
    spool.close()

    again = Spool(tmp_path, max_bytes=MIB)  # a restart: recovered from disk
    entry = again.next_unread()
    assert entry is not None
    back = [e["value"] for e in to_json_events(decode_samples(entry.payload))]
    assert [(type(v), v) for v in back] == [(type(v), v) for v in values]


def test_an_entry_spooled_before_value_int_existed_still_reads(tmp_path: Path) -> None:
    """An ingester upgraded with samples in its spool: they were written without
    `value_int`, numbers as floats, and are sent as they were."""
    old = pl.DataFrame(
        {
            "ts": [1, 2],
            "machine": ["m1", "m1"],
            "signal": ["state", "total_count"],
            "value_num": [None, 12.0],
            "value_str": ["running", None],
            "reason": [None, None],
            "quality": ["good", "good"],
        }
    )
    frame = decode_samples(encode_samples(old))
    assert frame.schema == EVENT_SCHEMA
    assert frame.select("value_num", "value_int", "value_str").rows() == [
        (None, None, "running"),
        (12.0, None, None),
    ]
