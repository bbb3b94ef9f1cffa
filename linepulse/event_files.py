"""Telemetry event files read in batches: JSON lines or Parquet, chosen by the extension.

`linepulse replay` feeds the batches to the core and `linepulse produce` sends them to the
telemetry topic; both must read a file the same way (the same decoding, the same reasons
for a rejected event, the same time band), so the reading lives here, in the common layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from linepulse.events import (
    EARLIEST_MS,
    REPLAY_LATEST_MS,
    Decoded,
    decode_json_block,
    normalize_frame,
    within_band,
)


def read_batches(path: Path, batch_events: int) -> Iterator[tuple[Decoded, int]]:
    """Decoded batches of about `batch_events` events and the bytes read so far (for
    progress); events outside `EARLIEST_MS`..`REPLAY_LATEST_MS` are rejected with their
    reason. `.parquet` and `.pq` files are read as Parquet, anything else as JSON lines."""
    for decoded, read in _read_batches(path, batch_events):
        banded = within_band(decoded.events, (EARLIEST_MS, REPLAY_LATEST_MS), "event")
        yield Decoded(banded.events, decoded.rejected + banded.rejected), read


def _read_batches(path: Path, batch_events: int) -> Iterator[tuple[Decoded, int]]:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in {".parquet", ".pq"}:
        parquet = pl.scan_parquet(path)
        total = path.stat().st_size
        rows = parquet.select(pl.len()).collect().item()
        for offset in range(0, rows, batch_events):
            frame = parquet.slice(offset, batch_events).collect()
            read = min(total, round(total * (offset + frame.height) / max(rows, 1)))
            yield normalize_frame(frame, where=f"row {offset}+"), read
        return
    with path.open("rb") as handle:
        number, done = 1, 0
        # About 100 bytes a JSON event; a batch ends at a line end (`readline` completes
        # the line the block cut), so no event is split between two batches.
        while block := handle.read(batch_events * 100):
            if not block.endswith(b"\n"):
                block += handle.readline()
            done += len(block)
            yield decode_json_block(block, first_line=number), done
            number += block.count(b"\n")
