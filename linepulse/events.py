"""Telemetry events: the wire format (schemas/telemetry-event.schema.json) and its decoders.

Events travel as columns, never as millions of Python objects: decoders turn JSON lines,
Parquet or Arrow into one frame of `EVENT_SCHEMA`, with the reason for each rejected
input kept beside it. A bad event is data to report, never an exception in a loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
import polars as pl

from linepulse.calendar import utc_text

Quality = Literal["good", "uncertain", "bad"]
QUALITIES: Final = frozenset(get_args(Quality))

# Everything the core needs, one row per event. `ts` is event time in epoch milliseconds
# (UTC). The reading keeps the type it had at the source, in one of three columns: a float
# in `value_num`, an integer in `value_int` (exact to 64 bits, which a float is not past
# 2**53), text in `value_str` (never parsed: "0042" is a material number, not 42). A
# boolean sets two, `value_str` "true"/"false" (states map from text) and `value_int` 1/0.
EVENT_SCHEMA: Final = pl.Schema(
    {
        "ts": pl.Int64,
        "machine": pl.String,
        "signal": pl.String,
        "value_num": pl.Float64,
        "value_int": pl.Int64,
        "value_str": pl.String,
        "reason": pl.String,
        "quality": pl.String,
    }
)
VALUE_COLUMNS: Final = ("value_num", "value_int", "value_str")
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

# One EVENT_SCHEMA row: ts, machine, signal, value_num, value_int, value_str, reason, quality.
Row = tuple[int, str, str, float | None, int | None, str | None, str | None, str]
# A reading in the three value columns: (value_num, value_int, value_str).
Typed = tuple[float | None, int | None, str | None]

REJECT_SCHEMA: Final = pl.Schema({"where": pl.String, "reason": pl.String, "raw": pl.String})

_REQUIRED: Final = ("ts", "machine", "signal", "value")
_OPTIONAL: Final = frozenset({"reason", "quality", "line", "site", "source", "seq"})
_ALLOWED: Final = frozenset(_REQUIRED) | _OPTIONAL
# Epoch ms between 1970 and 9999: anything else is a unit mistake (seconds, microseconds).
_MIN_TS_MS: Final = 0
_MAX_TS_MS: Final = 253_402_300_799_999
MAX_TEXT: Final = 256


class EventError(ValueError):
    """One event cannot be used; the message says why, in words a producer can act on."""


def reason_kind(reason: str) -> str:
    """A bounded category for a rejection reason (its text names values; labels must not)."""
    return reason.split(":")[0].split("'")[0].split(",")[0].strip()[:64] or "other"


def empty_events() -> pl.DataFrame:
    return EVENT_SCHEMA.to_frame()


def parse_ts(value: object) -> int:
    """Event time in epoch ms from an RFC 3339 string or epoch milliseconds."""
    if isinstance(value, bool):
        raise EventError("ts must be an RFC 3339 string or epoch milliseconds, got a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise EventError(f"ts must be finite, got {value!r}")
        ms = round(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(f"ts is not an RFC 3339 timestamp: {value[:64]!r}") from None
        if parsed.tzinfo is None:
            raise EventError(f"ts has no UTC offset (add 'Z' or '+01:00'): {value[:64]!r}")
        try:
            ms = _epoch_ms(parsed)
        except OverflowError:  # e.g. year 9999 with a negative offset
            raise EventError(f"ts {value[:64]!r} is outside 1970..9999") from None
    else:
        raise EventError(f"ts must be an RFC 3339 string or epoch milliseconds, got {value!r}")
    if not _MIN_TS_MS <= ms <= _MAX_TS_MS:
        raise EventError(f"ts {value!r} is outside 1970..9999 (epoch seconds instead of ms?)")
    return ms


def _epoch_ms(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _text(obj: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise EventError(f"{key} is missing")
        return None
    if not isinstance(value, str) or not value:
        raise EventError(f"{key} must be a non-empty string, got {value!r}")
    if len(value) > MAX_TEXT:
        raise EventError(f"{key} is longer than {MAX_TEXT} characters")
    return value


def typed_value(value: object, what: str = "value") -> Typed:
    """A source value in the column its type says: (value_num, value_int, value_str).

    The one place where a reading's type is decided, for every decoder and ingester, so a
    value means the same whichever way it came in. A float stays a float (3.0 too), an int
    stays an exact int, text stays text, a bool is "true"/"false" with 1/0. Refused, with
    `what` naming the value in the message: None, other types, text over `MAX_TEXT`
    characters, NaN and infinities, and an int outside the signed 64-bit range
    (-2**63..2**63-1): a float could not hold it exactly, and a counter rounded to a
    multiple of 2048 (or a PLC's all-ones "no value" UInt64) would be counted wrong, so
    it goes to the dead letters with its reason instead."""
    if value is None:
        raise EventError(f"{what} is missing")
    if isinstance(value, bool):
        return None, int(value), "true" if value else "false"
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise EventError(
                f"{what} is outside the 64-bit integer range -2**63..2**63-1: "
                f"{str(value)[:64]} (send it as a float or as text)"
            )
        return None, value, None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError(f"{what} must be finite, got {value}")
        return value, None, None
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise EventError(f"{what} is longer than {MAX_TEXT} characters")
        return None, None, value
    raise EventError(f"{what} must be a string, number or boolean, got {type(value).__name__}")


def source_value(
    value_num: float | None, value_int: int | None, value_str: str | None
) -> str | int | float | bool | None:
    """The source value back from its three columns: the inverse of `typed_value` (None
    when all three are null)."""
    if value_str is not None:
        return value_str == "true" if value_int is not None else value_str
    return value_int if value_int is not None else value_num


def reading_as_float() -> pl.Expr:
    """An event's numeric reading as Float64 (`value_num`, else `value_int`; null for text),
    for consumers that only compare magnitudes, such as alert thresholds."""
    return pl.coalesce(pl.col("value_num"), pl.col("value_int").cast(pl.Float64))


def decode_event(obj: object) -> Row:
    """Validate one decoded JSON event; return its row of `EVENT_SCHEMA`."""
    if not isinstance(obj, dict):
        raise EventError(f"an event must be a JSON object, got {type(obj).__name__}")
    unknown = obj.keys() - _ALLOWED
    if unknown:
        raise EventError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    if "ts" not in obj:
        raise EventError("ts is missing")
    ts = parse_ts(obj["ts"])
    machine = _text(obj, "machine", required=True) or ""
    signal = _text(obj, "signal", required=True) or ""
    value_num, value_int, value_str = typed_value(obj.get("value"))
    reason = _text(obj, "reason", required=False)
    for key in ("line", "site", "source"):
        _text(obj, key, required=False)
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise EventError(f"seq must be an integer, got {seq!r}")
    quality = obj.get("quality", "good")
    if quality not in QUALITIES:
        raise EventError(f"quality must be one of good, uncertain, bad; got {quality!r}")
    return ts, machine, signal, value_num, value_int, value_str, reason, quality


_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class _WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The telemetry event as msgspec validates it in C: the fast path. Whatever it
    refuses goes through `decode_event`, which names the problem the same way always.
    Untracked by the garbage collector (`gc=False`: its fields are scalars, which form no
    cycle), so that decoding a chunk of a million events triggers no collections."""

    ts: str | int | float
    machine: _Text
    signal: _Text
    value: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | int | float | bool
    reason: _Text | None = None
    quality: Quality = "good"
    line: _Text | None = None
    site: _Text | None = None
    source: _Text | None = None
    seq: int | None = None


_WIRE_DECODER = msgspec.json.Decoder(_WireEvent)


def decode_json(raw: bytes | str) -> Row:
    """One JSON event to its `EVENT_SCHEMA` row; raises `EventError` with the reason."""
    try:
        event = _WIRE_DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError for bytes that are not UTF-8 inside a key.
        # The untyped parse keeps integers exact, as the typed one does: orjson would
        # turn one beyond 64 bits into a float and accept what the fast path refuses.
        try:
            obj = msgspec.json.decode(raw)
        except msgspec.ValidationError as error:  # only a number beyond a 64-bit float
            raise EventError(f"a number is beyond a 64-bit float (infinity): {error}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise EventError(f"malformed JSON: {error}") from None
        return decode_event(obj)
    # msgspec keeps the JSON type: 3.0 is a float, 9007199254740993 an exact int (10**400
    # too, which `typed_value` refuses as outside 64 bits).
    value_num, value_int, value_str = typed_value(event.value)
    return (
        parse_ts(event.ts),
        event.machine,
        event.signal,
        value_num,
        value_int,
        value_str,
        event.reason,
        event.quality,
    )


@dataclass
class Decoded:
    """A batch of decoded events and the inputs that could not be decoded."""

    events: pl.DataFrame
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (where, reason, raw)


# The band of event time the KPI core is given. The core works through every window
# between its oldest and newest event (a state holds until the next sample), so one event
# from a PLC clock reset to 1970, or a sentinel date like 9999-12-31, beside today's would
# have it produce decades of windows. Before 2000 no plant data is real; the worker also
# caps the band at a day ahead of its own clock, and a replay (a file of the past, or of a
# simulated future) at 2100.
EARLIEST_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
REPLAY_LATEST_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z


def within_band(events: pl.DataFrame, band: tuple[int, int], where: str) -> Decoded:
    """The events inside `band` (epoch ms, inclusive); the others rejected with the reason."""
    inside = pl.col("ts").is_between(*band)
    rejected = [
        (
            where,
            f"ts outside the accepted range: {_iso_ms(ts)} is not within {_iso_ms(band[0])}"
            f"..{_iso_ms(band[1])} (is the producer's clock set?)",
            f"machine={machine} signal={signal} ts={ts}",
        )
        for ts, machine, signal in events.filter(~inside).select("ts", "machine", "signal").rows()
    ]
    return Decoded(events.filter(inside) if rejected else events, rejected)


def _iso_ms(ms: int) -> str:
    try:
        return utc_text(ms)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def decode_json_lines(lines: Iterable[bytes | str], first_line: int = 1) -> Decoded:
    """Decode JSON-lines telemetry; blank lines are skipped, bad ones are reported by number."""
    rows: list[Row] = []
    rejected: list[tuple[str, str, str]] = []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            rows.append(decode_json(line))
        except EventError as error:
            rejected.append((f"line {number}", str(error), _raw(line)))
    frame = pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")
    return Decoded(frame, rejected)


# Bytes of JSON lines decoded in one go by `decode_json_block`: large enough that the cost
# per call vanishes, small enough that a chunk with one bad line (decoded again line by
# line) costs little, and that the chunk's Python objects stay a few tens of MiB.
JSON_CHUNK_BYTES: Final = 4 << 20
_CHUNK_DECODER: Final = msgspec.json.Decoder(list[_WireEvent])
# The RFC 3339 form the columnar path reads itself (every part fixed-width ASCII digits,
# `Z` or a ±HH:MM offset). `datetime.fromisoformat` accepts more (a space or other
# separator, week dates, basic format, a comma before the fraction); those lines go
# through the per-line decoder, which is exact for every form.
_RFC3339: Final = (
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))$"
)
# value_num, value_int, value_str of a chunk, as `typed_value` types each value
_ValueSeries = tuple[pl.Series, pl.Series, pl.Series]


def decode_json_block(
    block: bytes, first_line: int = 1, chunk_bytes: int = JSON_CHUNK_BYTES
) -> Decoded:
    """Decode JSON-lines telemetry held in one buffer of whole lines (split at `\\n` only,
    as a file's lines are): the result equals `decode_json_lines` on its lines, rows,
    dtypes, order and rejections alike, at a fraction of the cost.

    The block is decoded in chunks of about `chunk_bytes`, each as one JSON array
    (msgspec validates every event in C) whose columns are then typed and timed in bulk
    by Polars. A chunk the columnar path cannot prove equal to the per-line decoder (any
    event it would reject, any `ts` form other than `_RFC3339` text or epoch ms) is
    decoded again line by line, so every bad line is reported with its number and reason
    and the good lines of the chunk are kept."""
    frames: list[pl.DataFrame] = []
    rejected: list[tuple[str, str, str]] = []
    number = first_line
    for chunk in _chunks(block, chunk_bytes):
        events = _columnar_events(chunk)
        if events is None:
            decoded = decode_json_lines(chunk.split(b"\n"), first_line=number)
            events = decoded.events
            rejected.extend(decoded.rejected)
        frames.append(events)
        number += chunk.count(b"\n")
    return Decoded(pl.concat(frames) if frames else empty_events(), rejected)


def _chunks(block: bytes, size: int) -> Iterator[bytes]:
    """`block` in pieces of about `size` bytes, each ending at a line end (or the end)."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + size - 1)
        end = len(block) if end < 0 else end + 1
        yield block[start:end]
        start = end


def _columnar_events(chunk: bytes) -> pl.DataFrame | None:
    """The chunk's events as `EVENT_SCHEMA` columns if every non-blank line is an event the
    per-line decoder would accept with the same row; None if that is not proven.

    The lines become one JSON array, the `\\n` ending each line followed by a comma. Each
    such comma separates two events: inside a string it would follow a raw line feed,
    which JSON forbids; inside an object it would be followed by the next line's `{`
    where a key must be, which is malformed; and `_WireEvent` has no nested values. So
    with every line opening with `{`, as many events as lines means event i is line i."""
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    lines = body.count(b"\n") + 1
    if not body.startswith(b"{") or body.count(b"\n{") != lines - 1:
        kept = [line for line in body.split(b"\n") if line.strip()]  # blank lines skipped
        if not kept or not all(line.startswith(b"{") for line in kept):
            return None if kept else empty_events()
        body, lines = b"\n".join(kept), len(kept)
    try:
        wire = _CHUNK_DECODER.decode(b"[" + body.replace(b"\n", b"\n,") + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        return None
    if len(wire) != lines:
        return None
    ts = _ts_column([event.ts for event in wire])
    values = _value_columns([event.value for event in wire])
    if ts is None or values is None:
        return None
    value_num, value_int, value_str = values
    return pl.DataFrame(
        {
            "ts": ts,
            "machine": [event.machine for event in wire],
            "signal": [event.signal for event in wire],
            "value_num": value_num,
            "value_int": value_int,
            "value_str": value_str,
            "reason": [event.reason for event in wire],
            "quality": [event.quality for event in wire],
        },
        schema=EVENT_SCHEMA,
    )


def _of_type(
    items: list[Any], kind: type, dtype: pl.DataType, kinds: set[type]
) -> pl.Series | None:
    """The items of exactly type `kind` (a bool is not an int here) as a `dtype` column,
    null elsewhere; None if one does not fit `dtype` (an int outside Int64: Polars says
    so with TypeError up to a few hundred bits and OverflowError beyond)."""
    try:
        if kinds == {kind}:
            return pl.Series(items, dtype=dtype)
        if kind not in kinds:
            return pl.Series([None] * len(items), dtype=dtype)
        return pl.Series([item if type(item) is kind else None for item in items], dtype=dtype)
    except (TypeError, OverflowError):
        return None


def _ts_column(stamps: list[str | int | float]) -> pl.Series | None:
    """`parse_ts` over a column: epoch ms, or None unless every stamp is proven in range.

    Ints are ms already; floats round half to even, as Python's `round` does; text in
    the `_RFC3339` form is read field by field, the fraction truncated to ms as
    `_epoch_ms` does, the offset subtracted. Anything else (text of another form, a
    calendar date that does not exist, a time outside 1970..9999) is left to `parse_ts`."""
    kinds = set(map(type, stamps))
    integer = _of_type(stamps, int, pl.Int64(), kinds)
    real = _of_type(stamps, float, pl.Float64(), kinds)
    text = _of_type(stamps, str, pl.String(), kinds)
    if integer is None or real is None or text is None:  # beyond 64 bits: outside 1970..9999
        return None
    rounded = real.round(0, mode="half_to_even").cast(pl.Int64, strict=False)
    # Events of one plant share their stamps (every machine samples each second): each
    # distinct text is read once.
    distinct = text.drop_nulls().unique()
    parsed = text.replace_strict(distinct, _rfc3339_ms(distinct), default=None)
    ms = integer.fill_null(rounded).fill_null(parsed)
    if ms.null_count() or not ms.is_between(_MIN_TS_MS, _MAX_TS_MS).all():
        return None
    return ms.rename("ts")


def _rfc3339_ms(text: pl.Series) -> pl.Series:
    """Epoch ms of `_RFC3339` text (null for other text, or a date or time that does not
    exist, which `datetime.fromisoformat` refuses)."""
    parts = text.str.extract_groups(_RFC3339).struct.unnest()
    parts.columns = ["day", "hour", "minute", "second", "fraction", "sign", "oh", "om"]
    hour, minute, second = (pl.col(name).cast(pl.Int64) for name in ("hour", "minute", "second"))
    off_hour, off_minute = (pl.col(name).cast(pl.Int64).fill_null(0) for name in ("oh", "om"))
    exists = (hour <= 23) & (minute <= 59) & (second <= 59) & (off_hour <= 23) & (off_minute <= 59)
    days = pl.col("day").str.to_date("%Y-%m-%d", strict=False).cast(pl.Int64)
    # fromisoformat keeps microseconds (digits past the sixth dropped), `_epoch_ms` floors
    # them to ms: both are the fraction's first three digits.
    millis = pl.concat_str(pl.col("fraction").fill_null(""), pl.lit("00")).str.slice(0, 3)
    sign = pl.when(pl.col("sign") == "-").then(-1).otherwise(1)
    local = days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000
    utc = local + millis.cast(pl.Int64) - sign * (off_hour * 60 + off_minute) * 60_000
    return parts.select(pl.when(exists).then(utc)).to_series()


def _value_columns(values: list[str | int | float | bool]) -> _ValueSeries | None:
    """`typed_value` over a column: (value_num, value_int, value_str), or None if a value
    is one it refuses (an int outside 64 bits, a float that is not finite; text over
    `MAX_TEXT` characters never gets here, `_WireEvent` refuses it)."""
    kinds = set(map(type, values))
    integer = _of_type(values, int, pl.Int64(), kinds)
    real = _of_type(values, float, pl.Float64(), kinds)
    text = _of_type(values, str, pl.String(), kinds)
    if integer is None or real is None or text is None:
        return None
    if not real.drop_nulls().is_finite().all():  # msgspec refuses 1e400 today; kept exact
        return None
    flag = _of_type(values, bool, pl.Boolean(), kinds) if bool in kinds else None
    if flag is not None:  # a boolean sets two columns: 1/0 and "true"/"false"
        word = pl.select(
            pl.when(pl.lit(flag)).then(pl.lit("true")).when(~pl.lit(flag)).then(pl.lit("false"))
        ).to_series()
        integer, text = integer.fill_null(flag.cast(pl.Int64)), text.fill_null(word)
    return real, integer, text


def _raw(line: bytes | str, limit: int = 1024) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return text.rstrip("\n")[:limit]


def normalize_frame(frame: pl.DataFrame, where: str = "row") -> Decoded:
    """Bring a columnar batch (Parquet, Arrow IPC) to `EVENT_SCHEMA`, rejecting bad rows.

    Accepts `ts` as a datetime, epoch milliseconds or RFC 3339 text. The reading comes
    either in the typed columns `value_num` (float), `value_int` (integer) and `value_str`
    (text), any of them present, one set per row (two for a boolean, as in
    `EVENT_SCHEMA`), which is what LinePulse writes; or in one `value` column typed by its
    dtype: integers, floats, booleans, or text. A text `value` column is the one way a
    single column holds states and counts alike (and what LinePulse wrote before the
    typed columns), so text in it that reads as a number is a number ("0042" becomes 42):
    keep such text with the typed columns.
    """
    has_value = "value" in frame.columns
    typed = [c for c in VALUE_COLUMNS if c in frame.columns]
    missing = [c for c in _REQUIRED if c not in frame.columns and (c != "value" or not typed)]
    if missing:
        reason = f"missing column(s): {', '.join(missing)}"
        return Decoded(empty_events(), [(where, reason, f"{frame.height} rows")])
    unknown = sorted(set(frame.columns) - _ALLOWED - set(VALUE_COLUMNS))
    if has_value and typed:
        unknown = [*typed, *unknown]
    if unknown:
        reason = f"unknown column(s): {', '.join(unknown)}"
        if has_value and typed:
            reason += " (the reading goes in `value` or in value_num/value_int/value_str)"
        return Decoded(empty_events(), [(where, reason, f"{frame.height} rows")])
    try:
        helpers, values = _typed_columns(frame.schema) if typed else _value_column(frame.schema)
    except EventError as error:
        return Decoded(empty_events(), [(where, str(error), f"{frame.height} rows")])
    value_num, value_int, value_str, value_problem = values

    ts = pl.col("ts")
    dtype = frame.schema["ts"]
    if isinstance(dtype, pl.Datetime):
        zoned = ts.dt.replace_time_zone("UTC") if dtype.time_zone is None else ts
        ts_ms = zoned.dt.convert_time_zone("UTC").dt.epoch("ms")
    elif dtype.is_numeric():
        ts_ms = ts.cast(pl.Float64).round().cast(pl.Int64, strict=False)
    elif dtype == pl.String:
        ts_ms = ts.str.to_datetime(time_zone="UTC", strict=False, time_unit="ms").dt.epoch("ms")
    else:
        ts_ms = pl.lit(None, pl.Int64)

    def optional(name: str, default: str | None = None) -> pl.Expr:
        if name in frame.columns:
            return pl.col(name).cast(pl.String)
        return pl.lit(default, pl.String)

    staged = (
        frame.lazy()
        .with_row_index("_row")
        .with_columns(helpers)
        .select(
            "_row",
            ts_ms.alias("ts"),
            pl.col("machine").cast(pl.String),
            pl.col("signal").cast(pl.String),
            value_num.alias("value_num"),
            value_int.alias("value_int"),
            value_str.alias("value_str"),
            value_problem.alias("_value_problem"),
            optional("reason").alias("reason"),
            optional("quality", "good").fill_null("good").alias("quality"),
        )
    )
    problem = (
        pl.when(pl.col("ts").is_null())
        .then(pl.lit("ts is missing or not a valid timestamp"))
        .when((pl.col("ts") < _MIN_TS_MS) | (pl.col("ts") > _MAX_TS_MS))
        .then(pl.lit("ts is outside 1970..9999 (epoch seconds instead of ms?)"))
        .when(pl.col("machine").is_null() | (pl.col("machine") == ""))
        .then(pl.lit("machine is missing"))
        .when(pl.col("signal").is_null() | (pl.col("signal") == ""))
        .then(pl.lit("signal is missing"))
        .when(pl.col("_value_problem").is_not_null())
        .then(pl.col("_value_problem"))
        .when(pl.all_horizontal(pl.col(*VALUE_COLUMNS).is_null()))
        .then(pl.lit("value is missing"))
        .when(pl.col("value_num").is_nan() | pl.col("value_num").is_infinite())
        .then(pl.lit("value must be finite"))
        .when(pl.col("value_str").str.len_chars() > MAX_TEXT)
        .then(pl.lit(f"value is longer than {MAX_TEXT} characters"))
        .when(~pl.col("quality").is_in(sorted(QUALITIES)))
        .then(pl.lit("quality must be one of good, uncertain, bad"))
        .otherwise(pl.lit(None, pl.String))
    )
    # One plan, collected once: the typing, the checks and the cast to EVENT_SCHEMA run
    # together instead of as one eager pass each. In memory: the batch is in memory
    # already, and Polars' default ("auto", the streaming engine here) takes about twice
    # as long on it.
    checked = (
        staged.with_columns(problem.alias("_problem"))
        .select("_row", "_problem", *(pl.col(n).cast(t) for n, t in EVENT_SCHEMA.items()))
        .collect(engine="in-memory")
    )
    problems = checked.get_column("_problem")
    if problems.null_count() == checked.height:  # the usual batch: nothing to filter out
        return Decoded(checked.select(EVENT_SCHEMA.names()), [])
    bad = checked.filter(problems.is_not_null())
    rejected = [
        (f"{where} {row}", reason, "") for row, reason in bad.select("_row", "_problem").iter_rows()
    ]
    good = checked.filter(problems.is_null()).select(EVENT_SCHEMA.names())
    return Decoded(good, rejected)


# value_num, value_int, value_str, and why a row's reading is unusable (null when it is not)
_ValueExprs = tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]
_OUT_OF_RANGE: Final = "value is outside the 64-bit integer range -2**63..2**63-1"


def _as_int64(column: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """An integer column as Int64, and the problem of rows it cannot hold (UInt64 > 2**63-1)."""
    exact = column.cast(pl.Int64, strict=False)
    lost = column.is_not_null() & exact.is_null()
    return exact, pl.when(lost).then(pl.lit(_OUT_OF_RANGE))


_KIND_OF: Final = {"value_num": "floats", "value_int": "integers", "value_str": "text"}


def _fits(name: str, dtype: pl.DataType) -> bool:
    if dtype == pl.Null:  # a column with no value in this batch
        return True
    if name == "value_num":
        return dtype.is_float()
    if name == "value_int":
        return dtype.is_integer()
    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def _typed_columns(schema: pl.Schema) -> tuple[list[pl.Expr], _ValueExprs]:
    """The typed value columns, checked: each of its kind, and one set per row (a boolean's
    value_int 1/0 with value_str "true"/"false" the only pair). They need no helper
    columns (the empty list), unlike `_value_column`."""

    def column(name: str) -> pl.Expr:
        if name not in schema:
            return pl.lit(None, EVENT_SCHEMA[name])
        if not _fits(name, schema[name]):
            raise EventError(f"{name} must be a column of {_KIND_OF[name]}, got {schema[name]}")
        return pl.col(name)

    num = column("value_num").cast(pl.Float64)
    raw_int = column("value_int")
    text = column("value_str").cast(pl.String)
    integer, out_of_range = _as_int64(raw_int)
    is_set = [num.is_not_null(), integer.is_not_null(), text.is_not_null()]
    boolean = num.is_null() & (
        ((integer == 1) & (text == "true")) | ((integer == 0) & (text == "false"))
    )
    conflict = pl.when((pl.sum_horizontal(is_set) > 1) & ~boolean.fill_null(False)).then(
        pl.lit(
            "more than one of value_num, value_int, value_str is set (only a boolean has "
            "two: value_int 1/0 with value_str true/false)"
        )
    )
    return [], (num, integer, text, pl.coalesce(out_of_range, conflict))


def _value_column(schema: pl.Schema) -> tuple[list[pl.Expr], _ValueExprs]:
    """One `value` column, typed by its dtype; text is parsed as numbers where it reads as
    one (an integer literal exactly, else a finite float). Text is parsed once, into the
    helper columns `_as_int` and `_as_float` (the expressions of the returned list, added
    to the frame before the value expressions read them)."""
    value = pl.col("value")
    vtype = schema["value"]
    no_num, no_int, no_text = (
        pl.lit(None, pl.Float64),
        pl.lit(None, pl.Int64),
        pl.lit(None, pl.String),
    )
    no_problem = pl.lit(None, pl.String)
    if vtype == pl.Boolean:
        word = pl.when(value).then(pl.lit("true")).when(value.not_()).then(pl.lit("false"))
        return [], (no_num, value.cast(pl.Int64), word, no_problem)
    if vtype.is_integer():
        integer, out_of_range = _as_int64(value)
        return [], (no_num, integer, no_text, out_of_range)
    if vtype.is_numeric():
        return [], (value.cast(pl.Float64), no_int, no_text, no_problem)
    text = value.cast(pl.String)
    helpers = [
        text.cast(pl.Int64, strict=False).alias("_as_int"),
        text.cast(pl.Float64, strict=False).alias("_as_float"),
    ]
    as_int, as_float = pl.col("_as_int"), pl.col("_as_float")
    is_num = as_int.is_null() & as_float.is_finite()
    num = pl.when(is_num).then(as_float)
    text_only = pl.when(as_int.is_null() & ~is_num.fill_null(False)).then(text)
    return helpers, (num, as_int, text_only, no_problem)


def to_json_events(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The inverse of the decoders, for producers and tests: rows back to wire dicts."""
    out = []
    for ts, machine, signal, num, integer, text, reason, quality in frame.select(
        EVENT_SCHEMA.names()
    ).iter_rows():
        event: dict[str, Any] = {
            "ts": ts,
            "machine": machine,
            "signal": signal,
            "value": source_value(num, integer, text),
        }
        if reason is not None:
            event["reason"] = reason
        if quality != "good":
            event["quality"] = quality
        out.append(event)
    return out
