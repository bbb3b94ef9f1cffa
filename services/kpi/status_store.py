"""The last known state of each machine, in the KPI API's DuckDB database.

One row per machine (`machine_status`), written from the status topic by the
materializer: the board's and `GET /v1/machines`' states, and the newest event time the
API knows (the horizon a reason correction is judged against). Every status also opens
and closes stops in the stop log (services/kpi/stops.py), in the same transaction, so
the two tables never disagree about what was stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import duckdb
import polars as pl

from linepulse.config import STATES, PlantConfig
from services.kpi.database import Database, as_utc, iso, write_staged
from services.kpi.errors import InvalidRecord
from services.kpi.stops import StatusRow, StopLog

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
_STAGING_SCHEMA: Final[Mapping[str, pl.DataType]] = {
    "machine": pl.String(),
    "line": pl.String(),
    "state": pl.String(),
    "since": pl.Datetime("us"),
    "last_seen": pl.Datetime("us"),
    "reason": pl.String(),
}


class StatusStore:
    """The `machine_status` table of `db` (created, or brought up to this version's
    columns, on construction); `plant` names the configured machines, which `machines()`
    lists; `stops` is the stop log each status also goes to."""

    def __init__(self, db: Database, plant: PlantConfig, stops: StopLog) -> None:
        self._db = db
        self._plant = plant
        self._stops = stops
        with db.writing() as cur:
            cur.execute(_STATUS_DDL)
            _add_missing_columns(cur)

    def upsert(self, statuses: Sequence[Mapping[str, Any]]) -> None:
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
            schema=_STAGING_SCHEMA,
            orient="row",
        )
        try:
            # One transaction: the stops the statuses open and close, and the states.
            with self._db.transaction() as cur:
                self._stops.apply(cur, rows)
                write_staged(cur, _STATUS_UPSERT, frame)
        except BaseException:
            self._stops.forget()  # rolled back: what `apply` remembers was not kept
            raise

    def machines(self) -> list[dict[str, Any]]:
        """Each configured machine, in config order: `machine`, `line`, `state`, `reason`
        (the state sample's reason code), `since`, `last_seen` (None where no status has been
        stored for it)."""
        with self._db.cursor() as cur:
            rows = cur.execute(
                "SELECT machine, state, reason, since, last_seen FROM machine_status"
            ).fetchall()
        status = {row[0]: row[1:] for row in rows}
        out: list[dict[str, Any]] = []
        for line in self._plant.lines:
            for machine in line.machines:
                state, reason, since, last_seen = status.get(machine.id, (None,) * 4)
                out.append(
                    {
                        "machine": machine.id,
                        "line": line.id,
                        "state": state,
                        "reason": reason,
                        "since": iso(since),
                        "last_seen": iso(last_seen),
                    }
                )
        return out

    def latest_event_time(self) -> datetime | None:
        """The latest event time the store knows of (the newest `last_seen` of any
        machine), aware UTC; None before any status."""
        with self._db.cursor() as cur:
            row = cur.execute("SELECT max(last_seen) FROM machine_status").fetchone()
        value = None if row is None else row[0]
        return None if value is None else value.replace(tzinfo=UTC)


def _add_missing_columns(cur: duckdb.DuckDBPyConnection) -> None:
    """Bring the table of a store file of an earlier version up to this one's columns."""
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
        since = None if status.get("since") is None else as_utc(status["since"])
        last_seen = as_utc(status.get("last_seen"))
    except ValueError as error:
        raise InvalidRecord(f"status {i} ({machine}): {error}", i) from None
    return StatusRow(machine, line, state, reason, since, last_seen)
