"""The KPI history: every KPI record the service has seen, in DuckDB, one row per key
(line, machine, window, window_start); the `kpi` topic is the source, this is its
queryable view. Times are stored as UTC `TIMESTAMP`s and served as RFC 3339 with a `Z`.

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
- **Batches** go in as one Polars frame, deduplicated per key in Polars, then one atomic
  `INSERT ... ON CONFLICT DO UPDATE ... WHERE` statement. `python -m bench.store`
  (100,000 records, this project's shared 2-core machine): 50-140 k records/s in
  batches of 10,000, 21-36 k/s in batches of 1,000, where the statement's own ~25 ms
  dominates; so hand it what a poll returned, not record by record. (Measured with the
  24 OEE fields; with the 53 of the record beyond OEE, 31-45 k/s on 20,000 records in
  batches of 10,000, the machine shared by other jobs.) The
  primary key's ART index keeps each conflict check a lookup, not a scan of the history
  (it also grows with the history: 1m records, ~1.5 M a day per 1,000 machines, are
  the bulk; retention is not built yet).
- **`current` answers from memory** (services/kpi/current.py): every open record and the
  newest final one per (line, machine, window), loaded from `kpi_records` on open and
  settled with each batch as soon as it is validated, before its statement runs, so the
  API shows a record without waiting for the write. (Before, a second table kept in the
  upsert's transaction: two more statements a batch, 75-300 ms a poll at 1,000 machines,
  and ~25 ms a query; over the whole history the same query grew with it, 1,267 ms for
  `1m` after a day of 1,000 machines.)
- Threads and time storage: services/kpi/database.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import duckdb
import orjson
import polars as pl

from linepulse.config import WINDOW_KINDS, WindowKind
from linepulse.records import LATER_FIELDS, RECORD_FIELDS, RECORD_TYPES, FieldKind
from services.kpi.current import CurrentRecords, Held, Key, Scope, Standing
from services.kpi.database import RFC3339, Database, as_utc, iso, naive_utc, write_staged
from services.kpi.errors import InvalidRecord

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
_KEY_COLUMNS: Final = ", ".join(_q(k) for k in KEY)
# An upsert's conflict clause up to its condition: every field but the key replaced.
_ON_KEY_REPLACE: Final = f"ON CONFLICT ({_KEY_COLUMNS}) DO UPDATE SET " + ", ".join(
    f"{_q(f)} = EXCLUDED.{_q(f)}" for f in RECORD_FIELDS if f not in KEY
)
_RECORDS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS kpi_records ("
    + ", ".join(f"{_q(f)} {_SQL_TYPES[f]}" for f in RECORD_FIELDS)
    + f", PRIMARY KEY ({_KEY_COLUMNS}))"
)
_UPSERT: Final = (
    # SQL text below is built from this module's constants only; values are bound as
    # parameters or read from the staging frame (ruff S608 is about the former).
    f"INSERT INTO kpi_records ({_COLUMNS}) SELECT {_COLUMNS} FROM staging "  # noqa: S608
    f"{_ON_KEY_REPLACE} WHERE EXCLUDED.revision > kpi_records.revision"
    " OR (EXCLUDED.revision = kpi_records.revision AND EXCLUDED.final >= kpi_records.final)"
)
# The records `current` can still pick (services/kpi/current.py), as a store file holds
# them: every open one and the newest final one per (line, machine, window).
_CURRENT_ROWS: Final = (
    f"SELECT {_COLUMNS} FROM kpi_records "  # noqa: S608
    'WINDOW w AS (PARTITION BY line, machine, "window") QUALIFY NOT final '
    "OR window_start = max(CASE WHEN final THEN window_start END) OVER w"
)
# Machine records before the line record, as the core emits them (nulls last).
_SCOPE_ORDER: Final = "line, machine = '', machine"
_KIND_ORDER: Final = (
    'CASE "window" '
    + " ".join(f"WHEN '{kind}' THEN {i}" for i, kind in enumerate(WINDOW_KINDS))
    + " END"
)


class KpiHistory:
    """The `kpi_records` table of `db`, created (or brought up to this version's
    columns) on construction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.writing() as cur:
            cur.execute(_RECORDS_DDL)
            _add_missing_columns(cur)
            cur.execute("DROP TABLE IF EXISTS kpi_current")  # kept by earlier versions
        self._current = CurrentRecords(_record)
        with db.cursor() as cur:
            rows = cur.execute(_CURRENT_ROWS).fetchall()
        self._current.apply(map(_held, rows), {})

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
        batch = [_held(row) for row in frame.rows()]
        self._current.apply(batch, self._standing(self._current.unknown(batch)))
        with self._db.transaction() as cur:
            write_staged(cur, _UPSERT, frame)

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
        return self._current.pick(window, line, machine, scope)

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
        params = [naive_utc(start), *params]
        if end is not None:
            sql += " AND window_start < ?"
            params.append(naive_utc(end))
        if window is not None:
            sql += ' AND "window" = ?'
            params.append(window)
        sql += f" ORDER BY window_start, {_SCOPE_ORDER}, {_KIND_ORDER}"
        return self._records(sql, params)

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
        with self._db.cursor() as cur:
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
        with self._db.cursor() as cur:
            row = cur.execute(sql, params).fetchone()
        return 0 if row is None else int(row[0])

    def _records(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._db.cursor() as cur:
            rows = cur.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

    def _standing(self, keys: list[Key]) -> dict[Key, Standing]:
        """(revision, final) of the records stored under `keys` (those it has)."""
        if not keys:
            return {}
        wanted = pl.DataFrame(
            keys,
            schema={n: pl.Datetime("us") if n == "window_start" else pl.String for n in KEY},
            orient="row",
        )
        with self._db.cursor() as cur:
            cur.register("wanted", wanted.__arrow_c_stream__())
            try:
                rows = cur.execute(
                    f"SELECT {_KEY_COLUMNS}, revision, final FROM kpi_records "  # noqa: S608
                    f"SEMI JOIN wanted USING ({_KEY_COLUMNS})"
                ).fetchall()
            finally:
                cur.unregister("wanted")
        return {(row[0], row[1], row[2], row[3]): (row[4], row[5]) for row in rows}


# -- helpers -----------------------------------------------------------------------------


_AT: Final = {name: i for i, name in enumerate(RECORD_FIELDS)}
_LINE, _MACHINE, _WINDOW, _START = (_AT[name] for name in KEY)
_REVISION, _FINAL = _AT["revision"], _AT["final"]


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A stored row (the table's columns, in `RECORD_FIELDS` order) as the record contract
    has it: times as RFC 3339, JSON fields as objects, a line's `machine` None."""
    loads = orjson.loads
    record = dict(zip(RECORD_FIELDS, row, strict=True))
    record["machine"] = record["machine"] or None
    record["window_start"] = iso(record["window_start"])
    record["window_end"] = iso(record["window_end"])
    for name in _JSON_FIELDS:  # every object field of the contract, as JSON text
        text = record[name]
        record[name] = None if text is None else loads(text)
    return record


def _held(row: tuple[Any, ...]) -> Held:
    """A stored row (or a staged one, in the same column order) as `current`'s index
    holds it."""
    key = (row[_LINE], row[_MACHINE], row[_WINDOW], row[_START])
    return Held(key, row[_REVISION], row[_FINAL], row)


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
        params.append(naive_utc(start))
    if end is not None:
        where += " AND k.window_start < ?"
        params.append(naive_utc(end))
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
        if record.keys() == _FIELD_SET:
            continue
        missing = sorted(_FIELD_SET - record.keys() - LATER_FIELDS)
        unknown = sorted(set(record.keys()) - _FIELD_SET)
        if missing or unknown:
            problems = [f"missing fields {missing}"] if missing else []
            problems += [f"unknown fields {unknown}"] if unknown else []
            raise _invalid(i, record, "; ".join(problems))
    columns: dict[str, pl.Series] = {}
    for name in RECORD_FIELDS:
        # A record from before a later field reads it as None (`LATER_FIELDS`).
        values = [record.get(name) for record in records]
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
                parsed.append(as_utc(value))
            except ValueError as error:
                raise _invalid(i, records[i], f"{name}: {error}") from None
        return pl.Series(name, parsed, dtype=pl.Datetime("us"))
    times = texts.str.to_datetime(
        format="%Y-%m-%dT%H:%M:%S%.f%#z", time_zone="UTC", time_unit="us", strict=False
    ).dt.replace_time_zone(None)
    bad = times.is_null() | ~texts.str.contains(RFC3339.pattern)
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


def _add_missing_columns(cur: duckdb.DuckDBPyConnection) -> None:
    """Bring the table of a store file of an earlier version up to this one's columns."""
    have = {
        column
        for (column,) in cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'kpi_records'"
        ).fetchall()
    }
    for name in RECORD_FIELDS:
        if name in have:
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
