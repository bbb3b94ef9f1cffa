"""What every ingester hands to the Kafka side: validated samples as frames, and dead letters.

Protocol clients deliver one value at a time; the Kafka side wants thousands per record.
`SampleBatch` collects values in column lists (no per-sample objects kept alive), checks
each against the plant config on the way in, and hands over one `EVENT_SCHEMA` frame per
flush. A value that cannot be used becomes a `DeadLetter` with its reason and the raw
payload, so the producer of bad data can be found and nothing is silently dropped.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import polars as pl

from linepulse.config import COUNTER_SIGNALS, PlantConfig
from linepulse.events import (
    EVENT_SCHEMA,
    MAX_TEXT,
    QUALITIES,
    EventError,
    Typed,
    parse_ts,
    typed_value,
)

RAW_KEEP_BYTES = 4096  # of a dead letter's raw payload; the size says how much there was
_NUMERIC = frozenset(COUNTER_SIGNALS) | {"ideal_cycle_time_s"}


@dataclass(frozen=True)
class DeadLetter:
    """One input that could not become a telemetry event."""

    source: str  # the ingester source id (and topic or node where known)
    reason: str
    raw: bytes | str | None = None
    received_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def as_record(self) -> dict[str, Any]:
        """The `telemetry.dlq` JSON value: the raw payload as text when it is UTF-8, else
        base64, cut to RAW_KEEP_BYTES with its full size beside it."""
        raw = self.raw
        record: dict[str, Any] = {
            "source": self.source,
            "reason": self.reason,
            "received": self.received_ms,
        }
        if raw is None:
            return record
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        record["raw_bytes"] = len(data)
        head = data[:RAW_KEEP_BYTES]
        try:
            record["raw"] = head.decode("utf-8")
        except UnicodeDecodeError:
            record["raw_base64"] = base64.b64encode(head).decode("ascii")
        return record


class Sink(Protocol):
    """The Kafka side as ingesters see it."""

    async def put(self, events: pl.DataFrame) -> None:
        """Hand over validated `EVENT_SCHEMA` events; waits while the buffer is full."""

    async def dead_letter(self, letters: list[DeadLetter]) -> None:
        """Send inputs that could not be used to the dead-letter topic."""

    def position(self) -> int:
        """Where the input stands: everything put so far is at or before it."""

    async def kept(self, position: int) -> None:
        """Return once everything put up to `position` is kept: acknowledged by the bus,
        or written to the disk spool. A source that acknowledges its own sender (MQTT QoS
        1) does so after this, so a killed ingester loses nothing the sender let go of."""


def ts_ms(value: object) -> int:
    """Event time in epoch ms from a datetime (OPC-UA), an int/float epoch ms or RFC 3339."""
    if isinstance(value, datetime):
        if value.tzinfo is None:  # OPC-UA times are UTC; some stacks leave them naive
            value = value.replace(tzinfo=UTC)
        return round(value.timestamp() * 1000)
    return parse_ts(value)


class SampleBatch:
    """Samples of one source, validated, in columns until `take()`."""

    def __init__(self, machines: Iterable[str], source: str) -> None:
        self.source = source
        self._machines = frozenset(machines)
        self._clear()

    @classmethod
    def for_plant(cls, plant: PlantConfig, source: str) -> SampleBatch:
        return cls(plant.machines(), source)

    def _clear(self) -> None:
        self._ts: list[int] = []
        self._machine: list[str] = []
        self._signal: list[str] = []
        self._num: list[float | None] = []
        self._int: list[int | None] = []
        self._str: list[str | None] = []
        self._reason: list[str | None] = []
        self._quality: list[str] = []
        self.letters: list[DeadLetter] = []

    def __len__(self) -> int:
        return len(self._ts)

    def add(
        self,
        ts: object,
        machine: str,
        signal: str,
        value: object,
        *,
        reason: str | None = None,
        quality: str = "good",
        raw: bytes | str | None = None,
        where: str | None = None,
    ) -> bool:
        """Add one sample; False (and a dead letter) if it cannot be used."""
        try:
            row = self._check(ts, machine, signal, value, reason, quality)
        except EventError as error:
            self.reject(str(error), raw if raw is not None else repr(value), where)
            return False
        self._ts.append(row[0])
        self._machine.append(machine)
        self._signal.append(signal)
        num, integer, text = row[1]
        self._num.append(num)
        self._int.append(integer)
        self._str.append(text)
        self._reason.append(reason)
        self._quality.append(quality)
        return True

    def reject(self, reason: str, raw: bytes | str | None, where: str | None = None) -> None:
        source = self.source if where is None else f"{self.source}:{where}"
        self.letters.append(DeadLetter(source, reason, raw))

    def _check(
        self,
        ts: object,
        machine: str,
        signal: str,
        value: object,
        reason: str | None,
        quality: str,
    ) -> tuple[int, Typed]:
        if machine not in self._machines:
            raise EventError(f"unknown machine {machine!r}")
        if not signal or len(signal) > MAX_TEXT:
            raise EventError(f"bad signal name {signal[:64]!r}")
        if quality not in QUALITIES:
            raise EventError(f"quality must be one of good, uncertain, bad; got {quality!r}")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_TEXT):
            raise EventError(f"reason must be a string of at most {MAX_TEXT} characters")
        ms = ts_ms(ts)
        # The source's type decides the column (events.typed_value): a String node or metric
        # "0042" stays text, an Int64/UInt64 stays an exact int, a Float/Double a float.
        typed = typed_value(value, f"{signal}: value")
        if signal in _NUMERIC and typed[0] is None and typed[1] is None:
            raise EventError(f"{signal} must be a number, got {value!r}")
        return ms, typed

    def take(self) -> tuple[pl.DataFrame, list[DeadLetter]]:
        """The collected events as one frame, and the dead letters; both are cleared."""
        frame = pl.DataFrame(
            {
                "ts": self._ts,
                "machine": self._machine,
                "signal": self._signal,
                "value_num": self._num,
                "value_int": self._int,
                "value_str": self._str,
                "reason": self._reason,
                "quality": self._quality,
            },
            schema=EVENT_SCHEMA,
        )
        letters = self.letters
        self._clear()
        return frame, letters
