"""DuckDB history of KPI records, and the last known state of each machine.

One table holds every KPI record the service has seen, one row per key
(line, machine, window, window_start); the `kpi` topic is the source, this is its
queryable view. Machine statuses also feed the stop log and its reason corrections
(services/kpi/stops.py), in tables of the same database. Times are stored as UTC
`TIMESTAMP`s and served as RFC 3339 with a `Z`.

Decisions worth knowing:

- **Line records** have `machine = ''` in the table (ids cannot be empty, see
  `linepulse.config`), so the primary key needs no NULL handling; they come back out
  with `machine: None`, as the record contract says.
- **Which record wins a key** (`upsert`): the one with the highest (revision, final).
  A lower revision never overwrites a higher one; at equal revision a final record
  replaces an open one and never the other way round; at equal (revision, final) the
  later arrival wins (an open window's newer figures replace its older ones). Within a
  batch, list order is arrival order.
- **`downtime_by_reason`** is stored as JSON text: DuckDB updates a VARCHAR in place
  about 10x faster than a MAP, and `json_each` unnests it for the Pareto. So are `losses`
  and `by_product`; all three come back out as objects.
- **Earlier store files** open: columns of fields added since are added on open (old
  rows get zero, `{}` or null; `calendar_s` the window's length).
- **Batches** go in as one Polars frame (through the Arrow C stream interface; no
  pyarrow needed), deduplicated per key in Polars, then one atomic
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement. `python -m bench.store`
  (100,000 records, this project's shared 2-core machine): 50-140 k records/s in
  batches of 10,000, 21-36 k/s in batches of 1,000, where the statement's own ~25 ms
  dominates; so hand it what a poll returned, not record by record. (Measured with the
  24 OEE fields; with the 53 of the record beyond OEE, 31-45 k/s on 20,000 records in
  batches of 10,000, the machine shared by other jobs.) The
  primary key's ART index keeps each conflict check a lookup, not a scan of the history
  (it also grows with the history: 1m records, ~1.5 M a day per 1,000 machines, are
  the bulk; retention is not built yet).
- **Threads.** A DuckDB connection must not be shared by threads; FastAPI runs sync
  endpoints in a threadpool. Every call here opens its own `cursor()` (a connection of
  its own to the same database, cheap) and closes it after. Reads see a consistent
  snapshot (MVCC) and never wait. Writes are serialised by a lock, because two
  concurrent upserts of one key would fail with a DuckDB transaction conflict.
- The store belongs to whoever opened it: `create_app` uses it and never closes it.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import duckdb
import orjson
import polars as pl

from linepulse.config import STATES, WINDOW_KINDS, PlantConfig, WindowKind
from linepulse.records import RECORD_FIELDS, RECORD_TYPES, FieldKind
from services.kpi.errors import InvalidRecord
from services.kpi.stops import StatusRow, StopLog, create_stop_tables
from services.kpi.stops import iso as _iso

Scope = Literal["all", "machine", "line"]
"""Which records a query returns: machine and line records, machine records only, or
line records only (`machine` None)."""

KEY: Final = ("line", "machine", "window", "window_start")
_FIELD_SET: Final = frozenset(RECORD_FIELDS)
# Fields a record may leave null: those whose type admits None.
_NULLABLE: Final = frozenset(name for name, kind in RECORD_TYPES.items() if kind.nullable)
# Fields held as JSON text: objects in the record, VARCHAR in the table.
_JSON_FIELDS: Final = frozenset(
    name for name, kind in RECORD_TYPES.items() if kind.kind == "object"
)
# SQL column and staging-frame type of each kind of record field (times are UTC).
_SQL_OF_KIND: Final[Mapping[FieldKind, str]] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "datetime": "TIMESTAMP",
    "object": "VARCHAR",  # JSON text
}
_FRAME_OF_KIND: Final[Mapping[FieldKind, pl.DataType]] = {
    "string": pl.String(),
    "integer": pl.Int64(),
    "number": pl.Float64(),
    "boolean": pl.Boolean(),
    "object": pl.String(),
}
# The key's columns are NOT NULL even where the record allows None: `machine` is '' on a
# line record.
_SQL_TYPES: Final[Mapping[str, str]] = {
    name: _SQL_OF_KIND[kind.kind] + ("" if kind.nullable and name not in KEY else " NOT NULL")
    for name, kind in RECORD_TYPES.items()
}
# Times are staged apart (parsed from RFC 3339 text).
_FRAME_TYPES: Final[Mapping[str, pl.DataType]] = {
    name: _FRAME_OF_KIND[kind.kind]
    for name, kind in RECORD_TYPES.items()
    if kind.kind != "datetime"
}
# A store file written before a field existed gets its column on open (ALTER TABLE ADD
# COLUMN cannot add NOT NULL constraints; the staging checks enforce them for new rows).
# Rows from before hold these: zero, an empty object, or NULL (every other new field).
_ADDED_DEFAULTS: Final[Mapping[str, str]] = {
    "calendar_s": "0",
    "down_s": "0",
    "idle_s": "0",
    "setup_s": "0",
    "small_stops": "0",
    "small_stop_s": "0",
    "failures": "0",
    "by_product": "'{}'",
}


def _q(name: str) -> str:
    return f'"{name}"'


_COLUMNS: Final = ", ".join(_q(f) for f in RECORD_FIELDS)
_RECORDS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS kpi_records ("
    + ", ".join(f"{_q(f)} {_SQL_TYPES[f]}" for f in RECORD_FIELDS)
    + f", PRIMARY KEY ({', '.join(_q(k) for k in KEY)}))"
)
_UPSERT: Final = (
    # SQL text below is built from this module's constants only; values are bound as
    # parameters or read from the staging frame (ruff S608 is about the former).
    f"INSERT INTO kpi_records ({_COLUMNS}) SELECT {_COLUMNS} FROM staging "  # noqa: S608
    f"ON CONFLICT ({', '.join(_q(k) for k in KEY)}) DO UPDATE SET "
    + ", ".join(f"{_q(f)} = EXCLUDED.{_q(f)}" for f in RECORD_FIELDS if f not in KEY)
    + " WHERE EXCLUDED.revision > kpi_records.revision"
    " OR (EXCLUDED.revision = kpi_records.revision AND EXCLUDED.final >= kpi_records.final)"
)
_STATUS_FIELDS: Final = ("machine", "line", "state", "reason", "since", "last_seen")
_STATUS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS machine_status ("
    "machine VARCHAR PRIMARY KEY, line VARCHAR, state VARCHAR, "
    "since TIMESTAMP, last_seen TIMESTAMP NOT NULL, reason VARCHAR)"
)
_STATUS_UPSERT: Final = (
    "INSERT INTO machine_status (machine, line, state, since, last_seen, reason) "
    "SELECT machine, line, state, since, last_seen, reason FROM staging "
    "ON CONFLICT (machine) DO UPDATE SET line = EXCLUDED.line, state = EXCLUDED.state, "
    "since = EXCLUDED.since, last_seen = EXCLUDED.last_seen, reason = EXCLUDED.reason "
    "WHERE EXCLUDED.last_seen >= machine_status.last_seen"
)
# Machine records before the line record, as the core emits them (nulls last).
_SCOPE_ORDER: Final = "line, machine = '', machine"
_KIND_ORDER: Final = (
    'CASE "window" '
    + " ".join(f"WHEN '{kind}' THEN {i}" for i, kind in enumerate(WINDOW_KINDS))
    + " END"
)
_RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_EPOCH: Final = datetime(1970, 1, 1)  # noqa: DTZ001 - naive UTC, as stored


class KpiStore:
    """KPI records and machine states in DuckDB, at `path` (a file, or ":memory:").

    `plant` names the configured machines, which `machines()` lists.
    """

    def __init__(self, path: str | Path, plant: PlantConfig) -> None:
        self.plant = plant
        self._conn = duckdb.connect(str(path))
        self._cursor_lock = threading.Lock()
        self._write_lock = threading.Lock()
        with self._cursor() as cur:
            cur.execute(_RECORDS_DDL)
            cur.execute(_STATUS_DDL)
            _add_missing_columns(cur)
            create_stop_tables(cur)
        self._stops = StopLog(plant)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (DuckDB checkpoints its WAL into the file)."""
        with self._write_lock, self._cursor_lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def check(self) -> None:
        """Raise (a `duckdb.Error`) unless the database can be queried; for readiness."""
        with self._cursor() as cur:
            cur.execute("SELECT count(*) FROM machine_status").fetchall()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._cursor_lock:
            cur = self._conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    # -- writes ------------------------------------------------------------------------

    def upsert(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write KPI records (the KpiRecord contract as JSON-ready dicts, as the core emits
        them and the `kpi` topic carries them; times as RFC 3339 strings or aware
        datetimes). Per key, the record with the highest (revision, final) wins, ties to
        the later arrival (see the module docstring).

        Raises `InvalidRecord` naming a bad record (its `index` says where it is in the
        batch); then nothing of the batch is written. A caller that must keep the good
        records of a batch with a bad one can retry them one by one.
        """
        if not records:
            return
        frame = _records_frame(records)
        frame = (
            frame.with_row_index("_arrival")
            .sort([*KEY, "revision", "final", "_arrival"])
            .unique(subset=list(KEY), keep="last")
            .drop("_arrival")
        )
        self._write(_UPSERT, frame)

    def upsert_status(self, statuses: Sequence[Mapping[str, Any]]) -> None:
        """Write machine states: dicts of `machine`, `line` (optional), `state` (one of
        linepulse.config.State), `reason` (optional: the state sample's reason code),
        `since` (when the state began; None if unknown) and `last_seen` (latest sample),
        times as RFC 3339 strings, epoch milliseconds or aware datetimes. Per machine, the
        status with the latest `last_seen` wins (ties to the later arrival), so a status
        delivered late never hides a newer one. Every status, in order, also opens and
        closes stops (services/kpi/stops.py), in the same transaction.

        Raises `InvalidRecord` (with the `index` of the bad status); then nothing of the
        batch is written.
        """
        rows = [_status_row(i, status) for i, status in enumerate(statuses)]
        latest: dict[str, StatusRow] = {}
        for row in rows:
            previous = latest.get(row.machine)
            if previous is None or row.last_seen >= previous.last_seen:
                latest[row.machine] = row
        if not latest:
            return
        frame = pl.DataFrame(
            [(r.machine, r.line, r.state, r.since, r.last_seen, r.reason) for r in latest.values()],
            schema={
                "machine": pl.String(),
                "line": pl.String(),
                "state": pl.String(),
                "since": pl.Datetime("us"),
                "last_seen": pl.Datetime("us"),
                "reason": pl.String(),
            },
            orient="row",
        )
        with self._write_lock, self._cursor() as cur:
            # One transaction: the stops the statuses open and close, and the states.
            cur.execute("BEGIN TRANSACTION")
            try:
                self._stops.apply(cur, rows)
                _write_staged(cur, _STATUS_UPSERT, frame)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                self._stops.forget()
                raise

    def _write(self, sql: str, frame: pl.DataFrame) -> None:
        # The Arrow C stream is read once, by this one statement, which is atomic.
        with self._write_lock, self._cursor() as cur:
            _write_staged(cur, sql, frame)

    # -- queries -----------------------------------------------------------------------

    def current(
        self,
        line: str | None = None,
        machine: str | None = None,
        window: WindowKind = "shift",
        *,
        scope: Scope = "all",
    ) -> list[dict[str, Any]]:
        """The current record of each machine and line for one window kind.

        Per (line, machine): the record of its newest open window (`final` false; just
        after a boundary two windows can be open, for the allowed lateness, and the newer
        one is shown). With no open window of that kind (a shift window between shifts,
        or a machine that stopped sending), its most recent window instead, final.
        Filtered by `line`, `machine` and `scope`; `scope="all"` returns machine records
        and line records alike. Ordered by line, then machines, then the line record.
        """
        where, params = _filters(line, machine, scope)
        sql = (
            f'SELECT {_COLUMNS} FROM kpi_records WHERE "window" = ?{where} '  # noqa: S608
            "QUALIFY row_number() OVER "
            "(PARTITION BY line, machine ORDER BY final, window_start DESC) = 1 "
            f"ORDER BY {_SCOPE_ORDER}"
        )
        return self._records(sql, [window, *params])

    def history(
        self,
        start: datetime,
        end: datetime | None = None,
        window: WindowKind | None = None,
        line: str | None = None,
        machine: str | None = None,
        *,
        scope: Scope = "all",
    ) -> list[dict[str, Any]]:
        """Records whose `window_start` lies in [start, end) (`end` None: no upper bound),
        of one window kind or all, ordered by window_start, line, machine (the line
        record after its machines), then window kind (1m, 15m, 1h, shift, day).

        `start` and `end` must be timezone-aware.
        """
        where, params = _filters(line, machine, scope)
        sql = f"SELECT {_COLUMNS} FROM kpi_records WHERE window_start >= ?{where}"  # noqa: S608
        params = [_naive_utc(start), *params]
        if end is not None:
            sql += " AND window_start < ?"
            params.append(_naive_utc(end))
        if window is not None:
            sql += ' AND "window" = ?'
            params.append(window)
        sql += f" ORDER BY window_start, {_SCOPE_ORDER}, {_KIND_ORDER}"
        return self._records(sql, params)

    def machines(self) -> list[dict[str, Any]]:
        """Each configured machine, in config order: `machine`, `line`, `state`, `reason`
        (the state sample's reason code), `since`, `last_seen` (None where no status has been
        stored for it)."""
        with self._cursor() as cur:
            rows = cur.execute(
                "SELECT machine, state, reason, since, last_seen FROM machine_status"
            ).fetchall()
        status = {row[0]: row[1:] for row in rows}
        out: list[dict[str, Any]] = []
        for line in self.plant.lines:
            for machine in line.machines:
                state, reason, since, last_seen = status.get(machine.id, (None,) * 4)
                out.append(
                    {
                        "machine": machine.id,
                        "line": line.id,
                        "state": state,
                        "reason": reason,
                        "since": _iso(since),
                        "last_seen": _iso(last_seen),
                    }
                )
        return out

    def pareto(
        self,
        line: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        window: WindowKind = "1h",
        include_open: bool = False,
    ) -> list[dict[str, Any]]:
        """Downtime by reason, largest first: `[{reason, seconds, share}]`.

        Sums `downtime_by_reason` over the FINAL machine records (not line records, which
        repeat their machines) of one window kind, `1h` by default: every kind covers the
        same downtime, so summing one kind counts each second once; open windows are left
        out until they close, unless `include_open` (their figures so far). Windows count
        whole when their start lies in [start, end). `seconds` is rounded to the
        millisecond; `share` is the fraction of the total (0..1). Reasons with no time
        are left out.
        """
        where, params = _window_range(line, start, end, window)
        final = "" if include_open else " AND k.final"
        sql = (
            "SELECT e.key AS reason, sum(CAST(e.value AS DOUBLE)) AS seconds "  # noqa: S608
            "FROM kpi_records AS k, json_each(k.downtime_by_reason) AS e "
            f"WHERE true{final}{where}"
        )
        sql += " GROUP BY e.key HAVING sum(CAST(e.value AS DOUBLE)) > 0"
        with self._cursor() as cur:
            rows = cur.execute(sql, params).fetchall()
        total = math.fsum(seconds for _, seconds in rows)
        entries = [
            {"reason": reason, "seconds": round(seconds, 3), "share": seconds / total}
            for reason, seconds in rows
        ]
        entries.sort(key=lambda e: (-e["seconds"], e["reason"]))
        return entries

    def open_windows(
        self,
        line: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        window: WindowKind = "1h",
    ) -> int:
        """How many machine windows of kind `window` that start in [start, end) are still
        open (`final` false): their figures, and so a Pareto over them, will still grow."""
        where, params = _window_range(line, start, end, window)
        sql = f"SELECT count(*) FROM kpi_records AS k WHERE NOT k.final{where}"  # noqa: S608
        with self._cursor() as cur:
            row = cur.execute(sql, params).fetchone()
        return 0 if row is None else int(row[0])

    def _records(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            rows = cur.execute(sql, params).fetchall()
        out = []
        loads = orjson.loads
        for row in rows:
            record = dict(zip(RECORD_FIELDS, row, strict=True))
            record["machine"] = record["machine"] or None
            record["window_start"] = _iso(record["window_start"])
            record["window_end"] = _iso(record["window_end"])
            record["downtime_by_reason"] = loads(record["downtime_by_reason"])
            record["by_product"] = loads(record["by_product"])
            losses = record["losses"]
            record["losses"] = None if losses is None else loads(losses)
            out.append(record)
        return out

    # -- stops and reason corrections (services/kpi/stops.py) ----------------------------

    def stops(
        self,
        *,
        line: str | None = None,
        machine: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        unassigned: bool | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stops (downtime states from the machine statuses), newest first; see
        `StopLog.query`. `since`/`until` bound the stop's start, [since, until)."""
        with self._cursor() as cur:
            return self._stops.query(
                cur,
                line=line,
                machine=machine,
                since=None if since is None else _naive_utc(since),
                until=None if until is None else _naive_utc(until),
                unassigned=unassigned,
                limit=limit,
            )

    def stop(self, stop_id: str) -> dict[str, Any] | None:
        """One stop with its `audit` entries (oldest first), or None."""
        with self._cursor() as cur:
            return self._stops.get(cur, stop_id)

    def correct_reason(
        self, stop_id: str, reason: str, by: str, note: str | None, at: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Code (or re-code) a stop: one audit entry, the stop's reason updated. Returns
        the stop (with its audit) and the new entry; None for an unknown stop."""
        with self._write_lock, self._cursor() as cur:
            return self._stops.correct(cur, stop_id, reason, by, note, _naive_utc(at))

    def withdraw_correction(self, stop_id: str, seq: int) -> None:
        """Undo correction `seq` of a stop whose event could not be sent."""
        with self._write_lock, self._cursor() as cur:
            self._stops.withdraw(cur, stop_id, seq)

    def reason_audit(
        self, machine: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Reason corrections, newest first; `since` bounds when they were made."""
        with self._cursor() as cur:
            return self._stops.audit(
                cur, machine, None if since is None else _naive_utc(since), limit
            )

    def latest_event_time(self) -> datetime | None:
        """The latest event time the store knows of (the newest `last_seen` of any
        machine), aware UTC; None before any status."""
        with self._cursor() as cur:
            row = cur.execute("SELECT max(last_seen) FROM machine_status").fetchone()
        value = None if row is None else row[0]
        return None if value is None else value.replace(tzinfo=UTC)


# -- helpers -----------------------------------------------------------------------------


def _window_range(
    line: str | None, start: datetime | None, end: datetime | None, window: WindowKind
) -> tuple[str, list[Any]]:
    """The conditions (on `kpi_records AS k`) of the machine records of one window kind
    whose window starts in [start, end), with their parameters."""
    where, params = _filters(line, None, "machine")
    where = f' AND k."window" = ?{where}'
    params = [window, *params]
    if start is not None:
        where += " AND k.window_start >= ?"
        params.append(_naive_utc(start))
    if end is not None:
        where += " AND k.window_start < ?"
        params.append(_naive_utc(end))
    return where, params


def _filters(line: str | None, machine: str | None, scope: Scope) -> tuple[str, list[Any]]:
    where = ""
    params: list[Any] = []
    if line is not None:
        where += " AND line = ?"
        params.append(line)
    if machine is not None:
        where += " AND machine = ?"
        params.append(machine)
    if scope == "machine":
        where += " AND machine <> ''"
    elif scope == "line":
        where += " AND machine = ''"
    return where, params


def _records_frame(records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """The batch as a frame of the table's columns, or `InvalidRecord` naming the first
    bad record."""
    for i, record in enumerate(records):
        if record.keys() != _FIELD_SET:
            missing = sorted(_FIELD_SET - record.keys())
            unknown = sorted(set(record.keys()) - _FIELD_SET)
            problems = [f"missing fields {missing}"] if missing else []
            problems += [f"unknown fields {unknown}"] if unknown else []
            raise _invalid(i, record, "; ".join(problems))
    columns: dict[str, pl.Series] = {}
    for name in RECORD_FIELDS:
        values = [record[name] for record in records]
        if name == "machine":
            values = ["" if v is None else v for v in values]
        elif name in _JSON_FIELDS:
            values = _json_texts(name, values, records)
        if name in ("window_start", "window_end"):
            columns[name] = _time_column(name, values, records)
            continue
        try:
            columns[name] = pl.Series(name, values, dtype=_FRAME_TYPES[name], strict=True)
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            raise _wrong_type(name, values, records) from None
    frame = pl.DataFrame(columns)
    checks = frame.select(
        *(
            pl.col(name).is_null().arg_max().alias(name)
            if name not in _NULLABLE
            else pl.lit(None).alias(name)
            for name in RECORD_FIELDS
        ),
        bad_window=(~pl.col("window").is_in(WINDOW_KINDS)).arg_max(),
        bad_revision=(pl.col("revision") < 0).arg_max(),
    ).row(0, named=True)
    for name in RECORD_FIELDS:
        i = checks[name]
        if i is not None and frame[name][i] is None:
            raise _invalid(i, records[i], f"{name} must not be null")
    i = checks["bad_window"]
    if i is not None and frame["window"][i] not in WINDOW_KINDS:
        raise _invalid(
            i, records[i], f"window must be one of {list(WINDOW_KINDS)}, got {frame['window'][i]!r}"
        )
    i = checks["bad_revision"]
    if i is not None and frame["revision"][i] < 0:
        raise _invalid(i, records[i], "revision must be >= 0")
    return frame


_JSON_SHAPES: Final[Mapping[str, str]] = {
    "downtime_by_reason": "{reason: seconds}",
    "losses": "{loss: seconds} or null",
    "by_product": "{product: {run_s, total_count, ...}}",
}


def _json_texts(
    name: str, values: list[Any], records: Sequence[Mapping[str, Any]]
) -> list[str | None]:
    """Each value of a JSON field as JSON text (None stays None where the field may be
    null); `InvalidRecord` for one that is not an object."""
    dumps = orjson.dumps
    nullable = name in _NULLABLE
    if all(type(v) is dict or (nullable and v is None) for v in values):
        try:
            return [None if v is None else dumps(v).decode() for v in values]
        except orjson.JSONEncodeError:
            pass  # find the culprit below
    texts: list[str | None] = []
    for i, value in enumerate(values):
        if value is None and nullable:
            texts.append(None)
            continue
        if not isinstance(value, dict):
            problem = f"must be an object {_JSON_SHAPES[name]}, got {value!r}"
            raise _invalid(i, records[i], f"{name} {problem}")
        try:
            texts.append(dumps(value).decode())
        except orjson.JSONEncodeError as error:
            raise _invalid(i, records[i], f"{name}: {error}") from None
    return texts


def _time_column(name: str, values: list[Any], records: Sequence[Mapping[str, Any]]) -> pl.Series:
    """RFC 3339 strings (the wire form) parsed in one go; other values one by one."""
    try:
        texts = pl.Series(name, values, dtype=pl.String(), strict=True)
    except TypeError:
        parsed = []
        for i, value in enumerate(values):
            try:
                parsed.append(_as_utc(value))
            except ValueError as error:
                raise _invalid(i, records[i], f"{name}: {error}") from None
        return pl.Series(name, parsed, dtype=pl.Datetime("us"))
    times = texts.str.to_datetime(
        format="%Y-%m-%dT%H:%M:%S%.f%#z", time_zone="UTC", time_unit="us", strict=False
    ).dt.replace_time_zone(None)
    bad = times.is_null() | ~texts.str.contains(_RFC3339.pattern)
    if bad.any():
        i = int(bad.arg_max() or 0)
        raise _invalid(
            i,
            records[i],
            f"{name} must be RFC 3339 with an offset (2026-11-02T06:00:00Z), got {values[i]!r}",
        )
    return times


def _invalid(i: int, record: Mapping[str, Any], problem: str) -> InvalidRecord:
    """`record {i} (line machine window start): problem`, locating the record."""
    where = ""
    if any(k in record for k in KEY):
        where = f" ({' '.join(str(record.get(k)) for k in KEY)})"
    return InvalidRecord(f"record {i}{where}: {problem}", index=i)


def _wrong_type(
    name: str, values: list[Any], records: Sequence[Mapping[str, Any]]
) -> InvalidRecord:
    """The first value of a column that does not have the column's type."""
    dtype = _FRAME_TYPES[name]
    for i, value in enumerate(values):
        try:
            pl.Series(name, [value], dtype=dtype, strict=True)
        except (TypeError, OverflowError, pl.exceptions.PolarsError):
            kind = {"String": "text", "Float64": "a number", "Int64": "an integer"}
            expected = kind.get(str(dtype), str(dtype).lower())
            return _invalid(i, records[i], f"{name} must be {expected}, got {value!r}")
    return InvalidRecord(f"{name}: values of mixed types")


def _write_staged(cur: duckdb.DuckDBPyConnection, sql: str, frame: pl.DataFrame) -> None:
    cur.register("staging", frame.__arrow_c_stream__())
    try:
        cur.execute(sql)
    finally:
        cur.unregister("staging")


def _add_missing_columns(cur: duckdb.DuckDBPyConnection) -> None:
    """Bring a store file of an earlier version up to this one's columns."""
    have = {
        (table, column)
        for table, column in cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('kpi_records', 'machine_status')"
        ).fetchall()
    }
    for name in RECORD_FIELDS:
        if ("kpi_records", name) in have:
            continue
        sql_type = _SQL_TYPES[name].removesuffix(" NOT NULL")
        default = _ADDED_DEFAULTS.get(name)
        cur.execute(
            f"ALTER TABLE kpi_records ADD COLUMN IF NOT EXISTS {_q(name)} {sql_type}"
            + ("" if default is None else f" DEFAULT {default}")
        )
        if name == "calendar_s":  # the window's length: what a closed window's calendar is
            cur.execute(
                "UPDATE kpi_records SET calendar_s = epoch(window_end) - epoch(window_start)"
            )
    if ("machine_status", "reason") not in have:
        cur.execute("ALTER TABLE machine_status ADD COLUMN IF NOT EXISTS reason VARCHAR")


def _status_row(i: int, status: Mapping[str, Any]) -> StatusRow:
    unknown = sorted(set(status.keys()) - set(_STATUS_FIELDS))
    if unknown:
        raise InvalidRecord(f"status {i}: unknown fields {unknown}", index=i)
    machine, line, state = status.get("machine"), status.get("line"), status.get("state")
    if not isinstance(machine, str) or not machine:
        raise InvalidRecord(f"status {i}: machine must be a machine id, got {machine!r}", i)
    if line is not None and not isinstance(line, str):
        raise InvalidRecord(f"status {i} ({machine}): line must be text, got {line!r}", i)
    # No state yet: heard from (an analog tag, a counter) before its first state sample.
    if state is not None and state not in STATES:
        raise InvalidRecord(
            f"status {i} ({machine}): state must be one of {sorted(STATES)} or null, got {state!r}",
            i,
        )
    reason = status.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason):
        raise InvalidRecord(
            f"status {i} ({machine}): reason must be a reason code or null, got {reason!r}", i
        )
    try:
        since = None if status.get("since") is None else _as_utc(status["since"])
        last_seen = _as_utc(status.get("last_seen"))
    except ValueError as error:
        raise InvalidRecord(f"status {i} ({machine}): {error}", i) from None
    return StatusRow(machine, line, state, reason, since, last_seen)


def _as_utc(value: object) -> datetime:
    """An RFC 3339 string, epoch milliseconds or aware datetime as a naive UTC datetime."""
    if isinstance(value, datetime):
        return _naive_utc(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite epoch in milliseconds, got {value!r}")
        return _EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str) and _RFC3339.match(value):
        return _naive_utc(datetime.fromisoformat(value.upper()))
    raise ValueError(
        f"must be RFC 3339 with an offset (2026-11-02T06:00:00Z) or epoch milliseconds, "
        f"got {value!r}"
    )


def _naive_utc(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError(f"must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC).replace(tzinfo=None)
