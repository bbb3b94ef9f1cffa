"""The KPI API's DuckDB database: one connection, cursors for threads, one write lock,
and how times are stored.

The KPI history (services/kpi/history.py), the machine statuses
(services/kpi/status_store.py) and the stop log (services/kpi/stops.py) are tables of
this one database, so a status and the stops it opens and closes commit in one
transaction. `KpiStore` (services/kpi/store.py) opens it and is the one that closes it.

- **Threads.** A DuckDB connection must not be shared by threads; FastAPI runs sync
  endpoints in a threadpool. Every call opens its own `cursor()` (a connection of its
  own to the same database, cheap) and closes it after. Reads see a consistent snapshot
  (MVCC) and never wait. Writes are serialised by `write_lock`, because two concurrent
  upserts of one key would fail with a DuckDB transaction conflict.
- **Times** are stored as naive UTC `TIMESTAMP`s and served as RFC 3339 with a `Z`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import duckdb
import polars as pl

RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
EPOCH: Final = datetime(1970, 1, 1)  # noqa: DTZ001 - naive UTC, as stored


class Database:
    """One DuckDB connection to `path` (a file, or ":memory:")."""

    def __init__(self, path: str | Path) -> None:
        self._conn = duckdb.connect(str(path))
        self._cursor_lock = threading.Lock()
        self.write_lock = threading.Lock()
        """Held by every write, for its whole statement or transaction."""

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this thread's own, closed on exit."""
        with self._cursor_lock:
            cur = self._conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor under the write lock."""
        with self.write_lock, self.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor under the write lock, in one transaction: committed when the block
        ends, rolled back (and the error raised) when it raises."""
        with self.writing() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        """Close the database (DuckDB checkpoints its WAL into the file)."""
        with self.write_lock, self._cursor_lock:
            self._conn.close()


def write_staged(cur: duckdb.DuckDBPyConnection, sql: str, frame: pl.DataFrame) -> None:
    """Run `sql`, which reads the table `staging`, over `frame` (through the Arrow C
    stream interface; no pyarrow needed). The stream is read once, by this one
    statement, which is atomic."""
    cur.register("staging", frame.__arrow_c_stream__())
    try:
        cur.execute(sql)
    finally:
        cur.unregister("staging")


def as_utc(value: object) -> datetime:
    """An RFC 3339 string, epoch milliseconds or aware datetime as a naive UTC datetime;
    `ValueError` for anything else."""
    if isinstance(value, datetime):
        return naive_utc(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite epoch in milliseconds, got {value!r}")
        return EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str) and RFC3339.match(value):
        return naive_utc(datetime.fromisoformat(value.upper()))
    raise ValueError(
        f"must be RFC 3339 with an offset (2026-11-02T06:00:00Z) or epoch milliseconds, "
        f"got {value!r}"
    )


def naive_utc(value: datetime) -> datetime:
    """An aware datetime as stored (naive UTC); `ValueError` for a naive one."""
    if value.utcoffset() is None:
        raise ValueError(f"must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC).replace(tzinfo=None)


def optional_naive_utc(value: datetime | None) -> datetime | None:
    return None if value is None else naive_utc(value)


def iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as RFC 3339 with a `Z`, with as many fraction digits as it
    needs (none, milliseconds or microseconds)."""
    if value is None:
        return None
    if value.microsecond == 0:
        return value.isoformat() + "Z"
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.isoformat(timespec=spec) + "Z"


def epoch_ms(moment: datetime) -> int:
    """A naive UTC time as epoch milliseconds."""
    return (moment - EPOCH) // timedelta(milliseconds=1)
