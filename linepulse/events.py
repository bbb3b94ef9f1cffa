"""Telemetry events: the wire format (schemas/telemetry-event.schema.json) and its decoders.

Events travel as columns, never as millions of Python objects: decoders turn JSON lines,
Parquet or Arrow into one frame of `EVENT_SCHEMA`, with the reason for each rejected
input kept beside it. A bad event is data to report, never an exception in a loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
import orjson
import polars as pl

Quality = Literal["good", "uncertain", "bad"]
QUALITIES: Final = frozenset(get_args(Quality))

# Everything the core needs, one row per event. `ts` is event time in epoch milliseconds
# (UTC); the reading is split so that numbers stay numbers and states stay text.
EVENT_SCHEMA: Final = pl.Schema(
    {
        "ts": pl.Int64,
        "machine": pl.String,
        "signal": pl.String,
        "value_num": pl.Float64,
        "value_str": pl.String,
        "reason": pl.String,
        "quality": pl.String,
    }
)

Row = tuple[int, str, str, float | None, str | None, str | None, str]  # one EVENT_SCHEMA row

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


def _finite(value: int | float) -> float:
    """A number as the float the event keeps; an int beyond float range is refused too."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EventError(f"value must be finite, got {str(value)[:64]}")
    return number


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
    if "value" not in obj or obj["value"] is None:
        raise EventError("value is missing")
    value = obj["value"]
    value_num: float | None
    value_str: str | None
    if isinstance(value, bool):
        value_num, value_str = float(value), "true" if value else "false"
    elif isinstance(value, int | float):
        value_num = _finite(value)
        value_str = None
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise EventError(f"value is longer than {MAX_TEXT} characters")
        value_num, value_str = None, value
    else:
        raise EventError(f"value must be a string, number or boolean, got {type(value).__name__}")
    reason = _text(obj, "reason", required=False)
    for key in ("line", "site", "source"):
        _text(obj, key, required=False)
    seq = obj.get("seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise EventError(f"seq must be an integer, got {seq!r}")
    quality = obj.get("quality", "good")
    if quality not in QUALITIES:
        raise EventError(f"quality must be one of good, uncertain, bad; got {quality!r}")
    return ts, machine, signal, value_num, value_str, reason, quality


_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class _WireEvent(msgspec.Struct, forbid_unknown_fields=True):
    """The telemetry event as msgspec validates it in C: the fast path. Whatever it
    refuses goes through `decode_event`, which names the problem the same way always."""

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
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise EventError(f"malformed JSON: {error}") from None
        return decode_event(obj)
    value = event.value
    if isinstance(value, bool):
        value_num, value_str = float(value), "true" if value else "false"
    elif isinstance(value, str):
        value_num, value_str = None, value
    else:
        value_num, value_str = _finite(value), None  # e.g. 1e400 or 10**400 in the JSON text
    return (
        parse_ts(event.ts),
        event.machine,
        event.signal,
        value_num,
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
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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


def _raw(line: bytes | str, limit: int = 1024) -> str:
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return text.rstrip("\n")[:limit]


def normalize_frame(frame: pl.DataFrame, where: str = "row") -> Decoded:
    """Bring a columnar batch (Parquet, Arrow IPC) to `EVENT_SCHEMA`, rejecting bad rows.

    Accepts `ts` as a datetime, epoch milliseconds or RFC 3339 text, and `value` as
    text, number or boolean, the same contract as the JSON form.
    """
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        reason = f"missing column(s): {', '.join(missing)}"
        return Decoded(empty_events(), [(where, reason, f"{frame.height} rows")])
    unknown = sorted(set(frame.columns) - _ALLOWED)
    if unknown:
        reason = f"unknown column(s): {', '.join(unknown)}"
        return Decoded(empty_events(), [(where, reason, f"{frame.height} rows")])

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

    value = pl.col("value")
    vtype = frame.schema["value"]
    if vtype == pl.Boolean:
        value_num = value.cast(pl.Float64)
        value_str = pl.when(value).then(pl.lit("true")).otherwise(pl.lit("false"))
    elif vtype.is_numeric():
        value_num, value_str = value.cast(pl.Float64), pl.lit(None, pl.String)
    else:
        # One text column carries states and readings alike; readings become numbers.
        text = value.cast(pl.String)
        value_num = text.cast(pl.Float64, strict=False)
        value_str = pl.when(value_num.is_null()).then(text)

    def optional(name: str, default: str | None = None) -> pl.Expr:
        if name in frame.columns:
            return pl.col(name).cast(pl.String)
        return pl.lit(default, pl.String)

    staged = frame.with_row_index("_row").select(
        "_row",
        ts_ms.alias("ts"),
        pl.col("machine").cast(pl.String),
        pl.col("signal").cast(pl.String),
        value_num.alias("value_num"),
        value_str.alias("value_str"),
        optional("reason").alias("reason"),
        optional("quality", "good").fill_null("good").alias("quality"),
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
        .when(pl.col("value_num").is_null() & pl.col("value_str").is_null())
        .then(pl.lit("value is missing"))
        .when(pl.col("value_num").is_nan() | pl.col("value_num").is_infinite())
        .then(pl.lit("value must be finite"))
        .when(~pl.col("quality").is_in(sorted(QUALITIES)))
        .then(pl.lit("quality must be one of good, uncertain, bad"))
        .otherwise(pl.lit(None, pl.String))
    )
    staged = staged.with_columns(problem.alias("_problem"))
    bad = staged.filter(pl.col("_problem").is_not_null())
    rejected = [
        (f"{where} {row}", reason, "") for row, reason in bad.select("_row", "_problem").iter_rows()
    ]
    good = staged.filter(pl.col("_problem").is_null()).select(EVENT_SCHEMA.names())
    return Decoded(good.cast(EVENT_SCHEMA), rejected)


def to_json_events(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The inverse of the decoders, for producers and tests: rows back to wire dicts."""
    out = []
    for ts, machine, signal, num, text, reason, quality in frame.select(
        EVENT_SCHEMA.names()
    ).iter_rows():
        event: dict[str, Any] = {
            "ts": ts,
            "machine": machine,
            "signal": signal,
            "value": text if text is not None else num,
        }
        if reason is not None:
            event["reason"] = reason
        if quality != "good":
            event["quality"] = quality
        out.append(event)
    return out
