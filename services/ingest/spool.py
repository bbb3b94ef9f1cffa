"""The disk spool: what waits for Kafka while the broker is away, in put order, across restarts.

The spool is a folder of append-only segment files named by the sequence number of their
first entry (`00000000000000000042.spool`), so `ls` shows the send order. Each entry is a
small header (magic, kind, sequence number, count, length, CRC-32) and a payload: an Arrow
IPC stream of `EVENT_SCHEMA` samples (zstd, ~6 bytes a sample on plant data; each value in
its typed column, so "0042" stays text and 2**63 - 1 exact across a restart) or the JSON
records of dead letters. The kind marker lets dead letters share the spool, and so its
ordering, durability and size limit, instead of needing a second mechanism.

Rules that keep it correct:

- Entries are appended with increasing sequence numbers and read in that order. A
  segment is fsync'd when it is rotated (and on `close()`); only the open tail segment
  can be torn by a crash, and recovery keeps every entry up to the first bad one
  (short header, bad magic, short payload, CRC mismatch), truncating the rest.
- An entry is handed out by `next_unread()` and forgotten only after `ack()`; a
  segment's file is deleted once every entry in it is acknowledged. `rewind()` hands the
  unacknowledged entries out again (after a producer was recreated).
- `close()` rewrites the head segment without its acknowledged entries (and with what is
  left of a half-sent one, `settle()`), so a restart sends nothing twice. `prepend()`
  writes entries older than all others (taken from memory before anything was spooled)
  as a segment ahead of the rest.

Everything here is plain synchronous file I/O with no clock and no asyncio, so the unit
tests drive it directly; the Kafka side (`spooled_sink.py`) decides when to call it.
"""

from __future__ import annotations

import enum
import io
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl

from linepulse.events import EVENT_SCHEMA
from services.ingest.errors import SpoolError as SpoolError  # raised here; defined with its kin

log = logging.getLogger(__name__)

MAGIC: Final = b"LPS1"
# magic, kind, sequence number, count (samples or letters), payload length, CRC-32 of payload
HEADER: Final = struct.Struct("<4sBQIII")
SUFFIX: Final = ".spool"
DEFAULT_SEGMENT_BYTES: Final = 32 * 1024 * 1024
# An entry larger than this cannot be ours: a corrupt length field, not a huge write.
MAX_ENTRY_BYTES: Final = 1024 * 1024 * 1024


class Kind(enum.IntEnum):
    SAMPLES = 1  # payload: Arrow IPC stream of EVENT_SCHEMA rows
    LETTERS = 2  # payload: JSON array of DeadLetter.as_record() objects


@dataclass(frozen=True)
class Entry:
    """One spooled unit, as handed out for sending."""

    kind: Kind
    seq: int
    count: int  # samples (SAMPLES) or letters (LETTERS)
    payload: bytes


@dataclass
class _Slot:
    offset: int
    size: int  # header + payload
    kind: Kind
    seq: int
    count: int


@dataclass
class _Segment:
    path: Path
    slots: list[_Slot] = field(default_factory=list)
    size: int = 0
    acked: int = 0  # leading slots acknowledged
    writer: io.RawIOBase | None = None  # open for appending: the tail

    @property
    def first_seq(self) -> int:
        return self.slots[0].seq


def segment_name(seq: int) -> str:
    return f"{seq:020d}{SUFFIX}"


def encode_samples(frame: pl.DataFrame) -> bytes:
    """`EVENT_SCHEMA` rows as an Arrow IPC stream (zstd: about half lz4's size, same speed)."""
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="zstd")
    return buffer.getvalue()


def decode_samples(payload: bytes) -> pl.DataFrame:
    """The `EVENT_SCHEMA` rows of a samples entry, with the types they were spooled with.

    An entry spooled before `value_int` existed (an ingester upgraded with a full spool)
    has its integers as floats in `value_num`, which is how they were then: it reads with
    an empty `value_int`, rather than failing the spool."""
    frame = pl.read_ipc_stream(io.BytesIO(payload))
    if "value_int" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.Int64).alias("value_int"))
    return frame.select(EVENT_SCHEMA.names()).cast(EVENT_SCHEMA)


def encode_letters(records: Sequence[dict[str, Any]]) -> bytes:
    return orjson.dumps(list(records))


def decode_letters(payload: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = orjson.loads(payload)
    return records


def _entry_bytes(kind: Kind, seq: int, count: int, payload: bytes) -> bytes:
    header = HEADER.pack(MAGIC, kind, seq, count, len(payload), zlib.crc32(payload))
    return header + payload


class Spool:
    """Segments in `folder`, recovered on construction; at most `max_bytes` before `full`."""

    def __init__(
        self, folder: Path, max_bytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        # Backpressure lifts a segment at a time: keep segments small against the limit.
        self.segment_bytes = max(64 * 1024, min(segment_bytes, max_bytes // 8))
        self._segments: list[_Segment] = []
        self._read = 0  # entries handed out, counted from the first unacknowledged
        self._pending: dict[Kind, int] = {Kind.SAMPLES: 0, Kind.LETTERS: 0}
        self._replacement: Entry | None = None
        self.next_seq = 0
        self.recovered_entries = 0
        self.dropped_bytes = 0  # torn or corrupt bytes cut at recovery
        folder.mkdir(parents=True, exist_ok=True)
        self._recover()

    # -- figures -------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in segment files, acknowledged entries included until deleted."""
        return sum(segment.size for segment in self._segments)

    @property
    def full(self) -> bool:
        return self.size_bytes >= self.max_bytes

    @property
    def samples(self) -> int:
        """Samples not yet acknowledged."""
        return self._pending[Kind.SAMPLES]

    @property
    def letters(self) -> int:
        return self._pending[Kind.LETTERS]

    @property
    def entries(self) -> int:
        """Entries not yet acknowledged."""
        return sum(len(s.slots) - s.acked for s in self._segments)

    @property
    def is_empty(self) -> bool:
        return not self._segments

    @property
    def segments(self) -> list[Path]:
        return [segment.path for segment in self._segments]

    # -- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        for stale in self.folder.glob(f"*{SUFFIX}.tmp"):
            stale.unlink()  # an interrupted rewrite: the original is still in place
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            segment = self._scan(path)
            if not segment.slots:
                log.warning("spool: %s holds no complete entry; removed", path.name)
                path.unlink()
                continue
            self._segments.append(segment)
            for slot in segment.slots:
                self._pending[slot.kind] += slot.count
            self.recovered_entries += len(segment.slots)
            self.next_seq = max(self.next_seq, segment.slots[-1].seq + 1)
        if self._segments:
            log.info(
                "spool: recovered %d entries (%d samples, %d dead letters, %d bytes) in %d "
                "segments from %s",
                self.recovered_entries,
                self.samples,
                self.letters,
                self.size_bytes,
                len(self._segments),
                self.folder,
            )

    def _scan(self, path: Path) -> _Segment:
        """The complete entries of a segment; a torn or corrupt tail is cut off the file."""
        data = path.read_bytes()
        segment = _Segment(path)
        offset = 0
        problem = ""
        while offset < len(data):
            if len(data) - offset < HEADER.size:
                problem = "a partial entry header"
                break
            magic, kind, seq, count, length, crc = HEADER.unpack_from(data, offset)
            start = offset + HEADER.size
            if magic != MAGIC or kind not in (Kind.SAMPLES, Kind.LETTERS):
                problem = "a bad entry header"
                break
            if length > MAX_ENTRY_BYTES or start + length > len(data):
                problem = "a partial entry"
                break
            if zlib.crc32(data[start : start + length]) != crc:
                problem = "an entry whose checksum does not match"
                break
            if segment.slots and seq <= segment.slots[-1].seq:
                problem = "an entry out of sequence"
                break
            segment.slots.append(_Slot(offset, HEADER.size + length, Kind(kind), seq, count))
            offset = start + length
        segment.size = offset
        if problem:
            cut = len(data) - offset
            self.dropped_bytes += cut
            log.warning(
                "spool: %s ends in %s (a write cut short by a crash?): kept %d entries, "
                "cut %d bytes",
                path.name,
                problem,
                len(segment.slots),
                cut,
            )
            with path.open("r+b") as file:
                file.truncate(offset)
                os.fsync(file.fileno())
        return segment

    # -- writing -------------------------------------------------------------------------

    def append(self, kind: Kind, seq: int, count: int, payload: bytes) -> None:
        """Add an entry behind all others; rotates (fsync, new file) past `segment_bytes`."""
        if seq < self.next_seq:
            raise ValueError(f"spool sequence must grow: got {seq}, next is {self.next_seq}")
        tail = self._segments[-1] if self._segments else None
        if tail is not None and tail.writer is not None:
            writer = tail.writer
        else:
            path = self.folder / segment_name(seq)
            writer = path.open("xb", buffering=0)
            tail = _Segment(path, writer=writer)
            self._segments.append(tail)
        data = _entry_bytes(kind, seq, count, payload)
        writer.write(data)
        tail.slots.append(_Slot(tail.size, len(data), kind, seq, count))
        tail.size += len(data)
        self._pending[kind] += count
        self.next_seq = seq + 1
        if tail.size >= self.segment_bytes:
            self._seal(tail)

    def _seal(self, segment: _Segment) -> None:
        """Make a segment durable and closed for appends."""
        if segment.writer is None:
            return
        os.fsync(segment.writer.fileno())
        segment.writer.close()
        segment.writer = None
        self._sync_folder()

    def _sync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prepend(self, kind: Kind, seq: int, count: int, payload: bytes) -> None:
        """Write an entry older than every spooled one, as a segment of its own ahead of them
        (what was in flight from memory when the process closed)."""
        if self._segments:
            head = self._segments[0]
            # A rewritten head keeps its name (the sequence of an entry it no longer holds).
            floor = min(head.first_seq, int(head.path.name.removesuffix(SUFFIX)))
            if seq >= floor:
                raise ValueError(f"prepend needs a sequence below {floor}, got {seq}")
        if self._read:
            raise ValueError("prepend while entries are handed out")
        path = self.folder / segment_name(seq)
        data = _entry_bytes(kind, seq, count, payload)
        with path.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        self._sync_folder()
        self._segments.insert(0, _Segment(path, [_Slot(0, len(data), kind, seq, count)], len(data)))
        self._pending[kind] += count
        self.next_seq = max(self.next_seq, seq + 1)

    # -- reading and acknowledging -------------------------------------------------------

    def _position(self, index: int) -> tuple[_Segment, _Slot] | None:
        """The `index`-th unacknowledged entry."""
        for segment in self._segments:
            left = len(segment.slots) - segment.acked
            if index < left:
                return segment, segment.slots[segment.acked + index]
            index -= left
        return None

    def next_unread(self) -> Entry | None:
        """The oldest entry not yet handed out, or None."""
        found = self._position(self._read)
        if found is None:
            return None
        segment, slot = found
        with segment.path.open("rb") as file:
            file.seek(slot.offset)
            data = file.read(slot.size)
        magic, kind, seq, count, length, crc = HEADER.unpack_from(data)
        payload = data[HEADER.size :]
        if (
            magic != MAGIC
            or seq != slot.seq
            or len(payload) != length
            or zlib.crc32(payload) != crc
        ):
            raise SpoolError(f"{segment.path.name}: entry {slot.seq} changed on disk")
        self._read += 1
        return Entry(Kind(kind), seq, count, payload)

    @property
    def unread(self) -> int:
        return self.entries - self._read

    def ack(self, entry: Entry) -> None:
        """Forget the oldest handed-out entry (it must be `entry`); delete emptied segments."""
        if self._read == 0:
            raise ValueError(f"ack of entry {entry.seq}, which was not handed out")
        segment = next(s for s in self._segments if s.acked < len(s.slots))
        slot = segment.slots[segment.acked]
        if slot.seq != entry.seq:
            raise ValueError(f"ack out of order: expected entry {slot.seq}, got {entry.seq}")
        segment.acked += 1
        self._read -= 1
        self._pending[slot.kind] -= slot.count
        if self._replacement is not None and self._replacement.seq == slot.seq:
            self._replacement = None
        if segment.acked == len(segment.slots):
            if segment.writer is not None:
                segment.writer.close()
                segment.writer = None
            segment.path.unlink()
            self._segments.remove(segment)

    def rewind(self) -> None:
        """Hand out every unacknowledged entry again, from the oldest."""
        self._read = 0

    def settle(self, entry: Entry, count: int, payload: bytes) -> None:
        """Part of the oldest handed-out `entry` was delivered: on `close()` it is rewritten
        as `payload` (`count` left), so a restart sends only the rest."""
        found = self._position(0)
        if found is None or found[1].seq != entry.seq:
            raise ValueError(f"settle of entry {entry.seq}, which is not the oldest")
        self._replacement = Entry(entry.kind, entry.seq, count, payload)

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Make everything durable; drop delivered entries from the head segment."""
        self._read = 0
        if not self._segments:
            return
        head = self._segments[0]
        if head.acked or self._replacement is not None:
            self._rewrite_head(head)
        for segment in self._segments:
            self._seal(segment)

    def _rewrite_head(self, head: _Segment) -> None:
        """A new file with the head's undelivered entries replaces it (atomic rename; the
        name still sorts first, since it only lost entries from its front)."""
        self._seal(head)
        old = head.path.read_bytes()
        slots = head.slots[head.acked :]
        tmp = head.path.with_name(head.path.name + ".tmp")
        new_slots: list[_Slot] = []
        size = 0
        with tmp.open("wb") as file:
            for i, slot in enumerate(slots):
                replacement = self._replacement if i == 0 else None
                if replacement is not None:
                    data = _entry_bytes(
                        replacement.kind, slot.seq, replacement.count, replacement.payload
                    )
                    self._pending[slot.kind] += replacement.count - slot.count
                    kind, count = replacement.kind, replacement.count
                else:
                    data = old[slot.offset : slot.offset + slot.size]
                    kind, count = slot.kind, slot.count
                file.write(data)
                new_slots.append(_Slot(size, len(data), kind, slot.seq, count))
                size += len(data)
            file.flush()
            os.fsync(file.fileno())
        self._replacement = None
        if not new_slots:
            tmp.unlink()
            head.path.unlink()
            self._segments.remove(head)
        else:
            tmp.replace(head.path)
            head.slots, head.size, head.acked = new_slots, size, 0
        self._sync_folder()
