"""Stops and their reasons: the API's log of downtime, built from machine statuses, and
the audit trail of operators' reason corrections.

A *stop*, for reason coding, is a status whose state is a downtime state (`down`,
`idle`, `changeover`): it starts at the status's `since` and ends at the `since` of the
machine's next status. Its id is `{machine}@{since in epoch ms}`, so the same status
delivered twice (a worker that replays from its checkpoint, a materializer that reads
the topic from the beginning) is the same stop. A stop whose state sample came without a
reason is `unassigned`.

Decisions worth knowing:

- **The machine's reason and the operator's are kept apart.** `original_reason` is what
  the machine sent (and follows a replayed status); `reason` is the current code. Once
  an operator has corrected a stop, a status never overwrites its `reason` again.
- **Ends.** A status at time t ends every earlier stop of its machine at t at the latest
  (`end = least(end, t)`), so statuses replayed out of order still converge to the right
  ends; a stop inserted behind newer statuses (a store that predates the stops table,
  reading the topic from the beginning) is capped by what is already known to follow it.
- **Repeats.** Most statuses only move `last_seen`; one whose (since, state, reason) is
  the one last applied for its machine is skipped without touching the tables.
- **Corrections** are numbered per stop (1, 2, ...: the `seq` of the correction event the
  API sends to the KPI core). Each writes a `reason_audit` row with the old and the new
  code, who and when; the audit is never rewritten, except that a correction whose event
  could not be sent is withdrawn (`withdraw`), as if it had not been made.
- **Every replica has every correction.** A correction is recorded here and sent as a
  record to the compacted `stops.reasons` topic (services/kpi/stops_api.py); every API
  replica reads that topic from its start and applies each record (`apply_corrections`),
  its own included, so N replicas, or one started on an empty database, show the same
  codes and audit. A correction that reaches a replica before its stop does (topics are
  read in no fixed order between them) waits in the audit: the stop takes its code when
  its status arrives.
- The tables live in the KPI API's database (services/kpi/database.py), beside
  `machine_status`: the status store (services/kpi/status_store.py) applies each batch
  of statuses here inside its own transaction, and a new stop reads the statuses known
  to follow it.

Times are naive UTC `TIMESTAMP`s here and RFC 3339 with a `Z` outside (arguments are
aware datetimes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import duckdb
import polars as pl

from linepulse.calendar import text_ms
from linepulse.config import DOWNTIME_STATES, PlantConfig
from linepulse.production import UNASSIGNED
from services.kpi.database import (
    Database,
    epoch_ms,
    iso,
    naive_utc,
    optional_naive_utc,
    write_staged,
)

STOPS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS stops ("
    "id VARCHAR PRIMARY KEY, machine VARCHAR NOT NULL, line VARCHAR NOT NULL, "
    'start TIMESTAMP NOT NULL, "end" TIMESTAMP, state VARCHAR NOT NULL, '
    "original_reason VARCHAR NOT NULL, reason VARCHAR NOT NULL, corrected_by VARCHAR, "
    "corrected_at TIMESTAMP, corrections INTEGER NOT NULL DEFAULT 0)"
)
AUDIT_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS reason_audit ("
    "stop_id VARCHAR NOT NULL, machine VARCHAR NOT NULL, stop_start TIMESTAMP NOT NULL, "
    'seq INTEGER NOT NULL, old_reason VARCHAR NOT NULL, new_reason VARCHAR NOT NULL, "by" '
    'VARCHAR NOT NULL, "at" TIMESTAMP NOT NULL, note VARCHAR, PRIMARY KEY (stop_id, seq))'
)
# Every status's start, downtime or not: a stop that arrives after the status that ended
# it (statuses replayed out of order) still ends there.
MARKS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS status_marks ("
    "machine VARCHAR NOT NULL, since TIMESTAMP NOT NULL, PRIMARY KEY (machine, since))"
)
# The stops an operator is asked to code: unplanned stops. A changeover is downtime (the
# setup loss) but its reason is the changeover itself; the plant config has no setting to
# ask for its code (see the report of issue 15), so it is not offered (the board) nor
# counted as uncoded (the shift report).
CODE_STATES: Final = ("down", "idle")


def seconds_within(stop: Mapping[str, Any], start_ms: int, end_ms: int) -> float:
    """Seconds of a stop (as `StopLog.query` gives it) within [start_ms, end_ms): a stop
    still open runs to the end. What a report of a shift or a period counts of it."""
    begun = text_ms(stop["start"])
    ended = end_ms if stop["end"] is None else text_ms(stop["end"])
    return max(0, min(ended, end_ms) - max(begun, start_ms)) / 1000


def uncoded(stop: Mapping[str, Any]) -> bool:
    """A stop still waiting for its reason: down or idle, coded `unassigned`."""
    return bool(stop["reason"] == UNASSIGNED and stop["state"] in CODE_STATES)


_STOP_COLUMNS: Final = (
    'id, machine, line, start, "end", state, reason, original_reason, corrections, '
    "corrected_by, corrected_at"
)
_AUDIT_COLUMNS: Final = (
    'stop_id, machine, stop_start, seq, old_reason, new_reason, "by", "at", note'
)
# The statuses of a batch are applied to the stops as three statements, whatever the
# batch's size (one pair per status took ~1 ms each, and a backlog of statuses held the
# materializer for seconds). `staging` is the batch, registered per statement.
#
# A downtime status opens its stop (`staging`: the batch's downtime statuses, the last per
# stop id); the machine's code follows a replay until an operator has corrected it.
_OPEN: Final = (
    'INSERT INTO stops (id, machine, line, start, "end", state, original_reason, reason) '
    "SELECT id, machine, line, start, NULL, state, reason, reason FROM staging "
    "ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, "
    "original_reason = EXCLUDED.original_reason, "
    "reason = CASE WHEN corrections > 0 THEN reason ELSE EXCLUDED.reason END"
)
# A status at `since` ends the machine's earlier stops by then (`staging`: every status of
# the batch, downtime or not): a stop ends at the first status after its start.
_CLOSE: Final = (
    'UPDATE stops SET "end" = x.next FROM ('
    "  SELECT s.id, min(m.since) AS next FROM stops AS s"
    "  JOIN staging AS m ON m.machine = s.machine AND m.since > s.start GROUP BY s.id"
    ') AS x WHERE stops.id = x.id AND (stops."end" IS NULL OR stops."end" > x.next)'
)
# Stops just opened take the code of their latest correction, if the audit already holds
# some (`staging`: the stops the batch opened).
_RECODE_OPENED: Final = (
    "UPDATE stops SET reason = a.new_reason, corrected_by = a.by_, corrected_at = a.at_, "
    "corrections = a.n FROM ("
    '  SELECT stop_id, arg_max(new_reason, seq) AS new_reason, arg_max("by", seq) AS by_,'
    '    arg_max("at", seq) AS at_, count(*) AS n FROM reason_audit'
    "  WHERE stop_id IN (SELECT id FROM staging) GROUP BY stop_id"
    ") AS a WHERE stops.id = a.stop_id"
)
# The batch's statuses remembered (`staging`: every status of the batch).
_MARK: Final = (
    "INSERT INTO status_marks (machine, since) SELECT DISTINCT machine, since FROM staging "
    "ON CONFLICT DO NOTHING"
)
# A stop opened behind known later statuses (read out of order, or by a store that
# predates the stops table) ends by the first of them: a later status, a later stop, or
# the machine's latest status (`staging`: the stops the batch opened).
_CAP: Final = (
    'UPDATE stops SET "end" = x.next FROM ('
    "  SELECT n.id, least("
    "    (SELECT min(k.since) FROM status_marks AS k"
    "      WHERE k.machine = n.machine AND k.since > n.start),"
    "    (SELECT min(s.start) FROM stops AS s WHERE s.machine = n.machine AND s.start > n.start),"
    "    (SELECT max(m.since) FROM machine_status AS m"
    "      WHERE m.machine = n.machine AND m.since > n.start)) AS next"
    "  FROM staging AS n"
    ") AS x WHERE stops.id = x.id AND x.next IS NOT NULL "
    'AND (stops."end" IS NULL OR stops."end" > x.next)'
)
_MARKS_SCHEMA: Final[Mapping[str, pl.DataType]] = {
    "machine": pl.String(),
    "since": pl.Datetime("us"),
}
_OPENS_SCHEMA: Final[Mapping[str, pl.DataType]] = {
    "id": pl.String(),
    "machine": pl.String(),
    "line": pl.String(),
    "start": pl.Datetime("us"),
    "state": pl.String(),
    "reason": pl.String(),
}


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One machine status as stored (times naive UTC)."""

    machine: str
    line: str | None
    state: str | None
    reason: str | None
    since: datetime | None
    last_seen: datetime


def stop_id(machine: str, start: datetime) -> str:
    return f"{machine}@{epoch_ms(start)}"


class StopLog:
    """The stops and reason_audit tables of `db` (created on construction). Statuses
    come in through `apply`, inside the status store's transaction; corrections run in
    transactions of their own (`_correct` and `_withdraw` inside one), and queries open
    their own cursors."""

    def __init__(self, db: Database, plant: PlantConfig) -> None:
        self._db = db
        with db.writing() as cur:
            cur.execute(STOPS_DDL)
            cur.execute(AUDIT_DDL)
            cur.execute(MARKS_DDL)
        machines = plant.machines()
        self._lines = {m: line.id for m, (line, _) in machines.items()}
        self._planned = {m: plant.planned_reasons(machine) for m, (_, machine) in machines.items()}
        self._applied: dict[str, tuple[datetime, str, str | None]] = {}

    # -- from statuses -----------------------------------------------------------------

    def apply(self, cur: duckdb.DuckDBPyConnection, rows: list[StatusRow]) -> None:
        """Open and close stops for statuses (in arrival order, which decides the code of a
        stop delivered twice), inside the caller's transaction (under the database's
        write lock); `forget()` if that transaction is rolled back. Every stop ends at the
        first status after its start, whatever order the statuses came in."""
        marks: list[tuple[str, datetime]] = []
        opens: dict[str, tuple[str, str, str, datetime, str, str]] = {}
        for row in rows:
            if row.since is None or row.state is None:
                continue  # no state yet: nothing starts or ends
            key = (row.since, row.state, row.reason)
            if self._applied.get(row.machine) == key:
                continue
            marks.append((row.machine, row.since))
            if row.state in DOWNTIME_STATES:
                ident = stop_id(row.machine, row.since)
                line = row.line or self._lines.get(row.machine, "")
                opens.pop(ident, None)  # the last delivery of a stop decides, as it arrived
                opens[ident] = (
                    ident,
                    row.machine,
                    line,
                    row.since,
                    row.state,
                    row.reason or UNASSIGNED,
                )
            self._applied[row.machine] = key
        if not marks:
            return
        opened = pl.DataFrame(list(opens.values()), schema=_OPENS_SCHEMA, orient="row")
        if opened.height:
            write_staged(cur, _OPEN, opened)
            write_staged(cur, _RECODE_OPENED, opened)
        marked = pl.DataFrame(marks, schema=_MARKS_SCHEMA, orient="row")
        write_staged(cur, _CLOSE, marked)
        write_staged(cur, _MARK, marked)
        if opened.height:
            write_staged(cur, _CAP, opened)

    def forget(self) -> None:
        """Drop what `apply` remembers of the statuses applied (after a rollback)."""
        self._applied.clear()

    # -- corrections -------------------------------------------------------------------

    def correct(
        self, stop: str, reason: str, by: str, note: str | None, at: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Code (or re-code) a stop at `at`: one audit entry, the stop's reason updated.
        Returns the stop (with its audit) and the new entry; None for an unknown stop."""
        with self._db.transaction() as cur:
            return self._correct(cur, stop, reason, by, note, naive_utc(at))

    def _correct(
        self,
        cur: duckdb.DuckDBPyConnection,
        stop: str,
        reason: str,
        by: str,
        note: str | None,
        at: datetime,
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        row = cur.execute(
            "SELECT machine, start, reason FROM stops WHERE id = ?", [stop]
        ).fetchone()
        if row is None:
            return None
        machine, start, old = row
        (seq,) = cur.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM reason_audit WHERE stop_id = ?", [stop]
        ).fetchone() or (1,)
        cur.execute(
            f"INSERT INTO reason_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            [stop, machine, start, seq, old, reason, by, at, note],
        )
        cur.execute(
            "UPDATE stops SET reason = ?, corrected_by = ?, corrected_at = ?, "
            "corrections = corrections + 1 WHERE id = ?",
            [reason, by, at, stop],
        )
        entry = _audit_entry((stop, machine, start, seq, old, reason, by, at, note))
        found = self._get(cur, stop)
        assert found is not None  # noqa: S101 - just written
        return found, entry

    def withdraw(self, stop: str, seq: int) -> None:
        """Take correction `seq` back (its event could not be sent): the stop's reason is
        its latest remaining correction's, or the machine's."""
        with self._db.transaction() as cur:
            self._withdraw(cur, stop, seq)

    def _withdraw(self, cur: duckdb.DuckDBPyConnection, stop: str, seq: int) -> None:
        cur.execute("DELETE FROM reason_audit WHERE stop_id = ? AND seq = ?", [stop, seq])
        self._recode(cur, stop)

    def apply_corrections(
        self, entries: Sequence[Mapping[str, Any]], withdrawn: Sequence[tuple[str, int]]
    ) -> None:
        """Corrections read from the `stops.reasons` topic (audit entries as `audit()`
        gives them; `withdrawn`: (stop, seq) of tombstones), in one transaction: the audit
        takes them as they are (the topic is the truth), and each stop touched takes the
        code of its latest correction, or the machine's when none is left."""
        rows = [
            [
                e["stop_id"],
                e["machine"],
                naive_utc(datetime.fromisoformat(e["stop_start"])),
                int(e["seq"]),
                e["old_reason"],
                e["new_reason"],
                e["by"],
                naive_utc(datetime.fromisoformat(e["at"])),
                e.get("note"),
            ]
            for e in entries
        ]
        touched = {row[0] for row in rows} | {stop for stop, _ in withdrawn}
        with self._db.transaction() as cur:
            if rows:
                cur.executemany(
                    f"INSERT INTO reason_audit ({_AUDIT_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stop_id, seq) DO UPDATE "
                    "SET old_reason = EXCLUDED.old_reason, new_reason = EXCLUDED.new_reason, "
                    '"by" = EXCLUDED."by", "at" = EXCLUDED."at", note = EXCLUDED.note',
                    rows,
                )
            for stop, seq in withdrawn:
                cur.execute("DELETE FROM reason_audit WHERE stop_id = ? AND seq = ?", [stop, seq])
            for stop in sorted(touched):
                self._recode(cur, stop)

    def _recode(self, cur: duckdb.DuckDBPyConnection, stop: str) -> None:
        """The stop's code from its latest correction, or the machine's without one."""
        latest = cur.execute(
            'SELECT new_reason, "by", "at", count(*) OVER () FROM reason_audit '
            "WHERE stop_id = ? ORDER BY seq DESC LIMIT 1",
            [stop],
        ).fetchone()
        if latest is None:
            cur.execute(
                "UPDATE stops SET reason = original_reason, corrected_by = NULL, "
                "corrected_at = NULL, corrections = 0 WHERE id = ?",
                [stop],
            )
        else:
            cur.execute(
                "UPDATE stops SET reason = ?, corrected_by = ?, corrected_at = ?, "
                "corrections = ? WHERE id = ?",
                [*latest, stop],
            )

    # -- queries -----------------------------------------------------------------------

    def query(
        self,
        *,
        line: str | None = None,
        machine: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        unassigned: bool | None = None,
        states: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Stops newest first (by start), filtered; `since`/`until` bound the stop's
        start, [since, until); `unassigned` True: only stops still coded `unassigned`,
        False: only coded ones, None: all; `states`: only stops in one of them."""
        where: list[str] = []
        params: list[Any] = []
        for column, value, op in (
            ("line", line, "="),
            ("machine", machine, "="),
            ("start", optional_naive_utc(since), ">="),
            ("start", optional_naive_utc(until), "<"),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        if unassigned is not None:
            where.append("reason = ?" if unassigned else "reason <> ?")
            params.append(UNASSIGNED)
        if states:
            where.append("list_contains(?, state)")
            params.append(list(states))
        sql = f"SELECT {_STOP_COLUMNS} FROM stops"  # noqa: S608 - constants only
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start DESC, machine LIMIT ?"
        with self._db.cursor() as cur:
            rows = cur.execute(sql, [*params, limit]).fetchall()
        return [self._stop(row) for row in rows]

    def get(self, stop: str) -> dict[str, Any] | None:
        """One stop with its `audit` entries (oldest first), or None."""
        with self._db.cursor() as cur:
            return self._get(cur, stop)

    def _get(self, cur: duckdb.DuckDBPyConnection, stop: str) -> dict[str, Any] | None:
        row = cur.execute(
            f"SELECT {_STOP_COLUMNS} FROM stops WHERE id = ?",  # noqa: S608
            [stop],
        ).fetchone()
        if row is None:
            return None
        entries = cur.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM reason_audit WHERE stop_id = ? ORDER BY seq",  # noqa: S608
            [stop],
        ).fetchall()
        return {**self._stop(row), "audit": [_audit_entry(e) for e in entries]}

    def audit(
        self, machine: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Reason corrections, newest first; `since` bounds when they were made."""
        sql = f"SELECT {_AUDIT_COLUMNS} FROM reason_audit WHERE true"  # noqa: S608
        params: list[Any] = []
        if machine is not None:
            sql += " AND machine = ?"
            params.append(machine)
        if since is not None:
            sql += ' AND "at" >= ?'
            params.append(naive_utc(since))
        sql += ' ORDER BY "at" DESC, stop_id, seq DESC LIMIT ?'
        with self._db.cursor() as cur:
            rows = cur.execute(sql, [*params, limit]).fetchall()
        return [_audit_entry(row) for row in rows]

    def _stop(self, row: tuple[Any, ...]) -> dict[str, Any]:
        (ident, machine, line, start, end, state, reason, original, corrections, by, at) = row
        return {
            "id": ident,
            "machine": machine,
            "line": line,
            "start": iso(start),
            "end": iso(end),
            "duration_s": None if end is None else (end - start).total_seconds(),
            "state": state,
            "reason": reason,
            "original_reason": original,
            "planned": reason in self._planned.get(machine, frozenset()),
            "corrections": corrections,
            "corrected_by": by,
            "corrected_at": iso(at),
        }


def _audit_entry(row: tuple[Any, ...]) -> dict[str, Any]:
    stop, machine, start, seq, old, new, by, at, note = row
    return {
        "stop_id": stop,
        "machine": machine,
        "stop_start": iso(start),
        "seq": seq,
        "old_reason": old,
        "new_reason": new,
        "by": by,
        "at": iso(at),
        "note": note,
    }
