"""Telemetry on Kafka: one JSON event per record, or a batch per record.

Any producer can write one JSON event per record. LinePulse's own ingesters batch many
samples into one record (Arrow IPC or msgpack), because the Python protocol clients cost
far more per message than per sample. The `content-type` header says which; a record
without one is JSON.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Final

import msgpack
import orjson
import polars as pl

from linepulse.events import (
    EVENT_SCHEMA,
    Decoded,
    EventError,
    Row,
    decode_event,
    decode_json,
    decode_json_block,
    empty_events,
    normalize_frame,
    within_band,
)

JSON: Final = "application/json"
ARROW: Final = "application/vnd.apache.arrow.stream"
MSGPACK: Final = "application/x-msgpack"
CONTENT_TYPES: Final = (JSON, ARROW, MSGPACK)
# A record larger than this is refused before decoding (Kafka's own default is 1 MiB).
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024

Headers = Sequence[tuple[str, bytes]]


def content_type(headers: Headers | None) -> str:
    for key, value in headers or ():
        if key.lower() == "content-type":
            return value.decode("ascii", "replace").split(";")[0].strip().lower()
    return JSON


def decode_records(
    records: Iterable[tuple[bytes | None, Headers | None, int]],
    source: str = "record",
    *,
    accept: tuple[int, int] | None = None,
) -> Decoded:
    """Decode (value, headers, offset) records into one frame; bad ones carry their reason
    and where they were (`source@offset`).

    `accept` (epoch ms, inclusive) refuses events outside that band of time: the KPI core
    works through every minute between its oldest and newest event, so one event from a
    clock set to 1970 or 2099 would have it walk decades. The worker passes a band around
    its own clock."""
    rows: list[Row] = []
    frames: list[pl.DataFrame] = []
    arrow: list[pl.DataFrame] = []
    arrow_where: list[str] = []
    rejected: list[tuple[str, str, str]] = []
    json_records: list[tuple[bytes, str]] = []
    for value, headers, offset in records:
        where = f"{source}@{offset}"
        if value is None:
            rejected.append((where, "empty record (no value)", ""))
            continue
        if len(value) > MAX_RECORD_BYTES:
            rejected.append((where, f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}", ""))
            continue
        kind = content_type(headers)
        if kind == JSON:
            json_records.append((value, where))
            continue
        try:
            if kind == MSGPACK:
                _msgpack_rows(value, where, rows, rejected)
            elif kind == ARROW:
                arrow.append(pl.read_ipc_stream(io.BytesIO(value)))
                arrow_where.append(where)
            else:
                rejected.append((where, f"unknown content-type {kind!r}", _raw(value)))
        except orjson.JSONDecodeError as error:
            rejected.append((where, f"malformed JSON: {error}", _raw(value)))
        except EventError as error:
            rejected.append((where, str(error), _raw(value)))
        except (
            msgpack.UnpackException,
            ValueError,
            OSError,  # Arrow IPC with a corrupt LZ4/ZSTD body
            pl.exceptions.PolarsError,
            pl.exceptions.PanicException,  # a BaseException: Polars panicked on the bytes
        ) as error:
            rejected.append((where, f"malformed {kind} batch: {error}", _raw(value)))
    # Records written before the typed value columns (one text `value` column) may share a
    # poll with new ones; a frame holds one layout or the other, so each run of records of
    # one layout is normalised together, in record order.
    start = 0
    while start < len(arrow):
        layout = "value" in arrow[start].columns
        end = start + 1
        while end < len(arrow) and ("value" in arrow[end].columns) is layout:
            end += 1
        for decoded in _normalize_all(arrow[start:end], arrow_where[start:end]):
            frames.append(decoded.events)
            rejected.extend(decoded.rejected)
        start = end
    frames.append(pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row"))
    frames.append(_json_events(json_records, rejected))
    events = pl.concat(frames)
    if accept is not None:
        banded = within_band(events, accept, source)
        events = banded.events
        rejected.extend(banded.rejected)
    return Decoded(events, rejected)


def _json_events(
    records: list[tuple[bytes, str]], rejected: list[tuple[str, str, str]]
) -> pl.DataFrame:
    """The events of JSON records (one event each), in record order; the bad ones added to
    `rejected` with where they were. Records of one line each are decoded as one block
    (`decode_json_block`: columnar, several times faster than one by one), line n being
    record n; a poll with a record spread over lines, or blank, is decoded one by one."""
    if not records:
        return empty_events()
    values = [value for value, _ in records]
    if not any(b"\n" in value or not value.strip() for value in values):
        decoded = decode_json_block(b"\n".join(values))
        for line, reason, _ in decoded.rejected:
            value, where = records[int(line.removeprefix("line ")) - 1]
            rejected.append((where, reason, _raw(value)))
        return decoded.events
    rows: list[Row] = []
    for value, where in records:
        try:
            rows.append(decode_json(value))
        except EventError as error:
            rejected.append((where, str(error), _raw(value)))
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def _normalize_all(arrow: list[pl.DataFrame], arrow_where: list[str]) -> list[Decoded]:
    """One normalisation for all batches of a poll: its cost is per call, not per row. If
    the batches do not fit together, each is normalised (or refused) on its own."""
    try:
        combined = pl.concat(arrow, how="diagonal_relaxed")
        return [normalize_frame(combined, where=f"{arrow_where[0]}+")]
    except pl.exceptions.PolarsError:
        return [_normalize_one(f, w) for f, w in zip(arrow, arrow_where, strict=True)]


def _normalize_one(frame: pl.DataFrame, where: str) -> Decoded:
    try:
        return normalize_frame(frame, where=where)
    except pl.exceptions.PolarsError as error:  # e.g. a list column where text belongs
        reason = f"unusable {ARROW} batch: {str(error).strip().splitlines()[0]}"
        return Decoded(EVENT_SCHEMA.to_frame(), [(where, reason, "")])


def _msgpack_rows(
    value: bytes, where: str, rows: list[Row], rejected: list[tuple[str, str, str]]
) -> None:
    batch = msgpack.unpackb(value, raw=False, strict_map_key=True)
    if not isinstance(batch, list):
        raise ValueError("a msgpack batch must be an array of events")
    for i, event in enumerate(batch):
        try:
            rows.append(decode_event(event))
        except EventError as error:
            rejected.append((f"{where}[{i}]", str(error), repr(event)[:1024]))


def _raw(value: bytes, limit: int = 1024) -> str:
    return value[:limit].decode("utf-8", "replace")


def encode_arrow(events: pl.DataFrame) -> bytes:
    """A batch of `EVENT_SCHEMA` events as one Arrow IPC stream record, in its columns: the
    reading stays in value_num / value_int / value_str, so text stays text ("0042") and
    integers stay exact (2**53 + 1). Before, one text `value` column carried it and numbers
    were parsed back on decode; `decode_records` still reads such records."""
    wire = events.select(EVENT_SCHEMA.names())
    buffer = io.BytesIO()
    wire.write_ipc_stream(buffer, compression="lz4")
    return buffer.getvalue()


def encode_msgpack(events: Iterable[dict[str, object]]) -> bytes:
    """Telemetry events (as `to_json_events` gives them) as one msgpack batch record: an
    array of event maps. msgpack has its own int, float, string and bool types, so each
    `value` arrives with the type it was sent with (ints up to 64 bits exactly)."""
    packed: bytes = msgpack.packb(list(events), use_bin_type=True)
    return packed
