"""Control chart subgroups in the KPI API's DuckDB database, from the `spc` topic.

One row per subgroup (`spc_points`), keyed by chart and end as the topic is: the KPI
worker publishes each subgroup of the plant's charts (linepulse/spc_stream.py
`spc_record`), and one published again after a restart replaces itself. The record is
kept whole as JSON beside the columns queries filter on; `GET /v1/spc` and the shift
report read them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from services.kpi.database import Database, as_utc, naive_utc
from services.kpi.errors import InvalidRecord

_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS spc_points ("
    'chart VARCHAR NOT NULL, line VARCHAR NOT NULL, "end" TIMESTAMP NOT NULL, '
    'record VARCHAR NOT NULL, PRIMARY KEY (chart, "end"))'
)
_UPSERT: Final = (
    'INSERT OR REPLACE INTO spc_points (chart, line, "end", record) VALUES (?, ?, ?, ?)'
)
# What a record must hold to be charted again (the rest is carried as it came).
_REQUIRED: Final = ("chart", "line", "start", "end", "x", "broken", "values")


class SpcPoints:
    """The `spc_points` table of `db`, created on construction."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.writing() as cur:
            cur.execute(_DDL)

    def upsert(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Store subgroups (`spc_record`s); `InvalidRecord` names the first that is not one,
        and then none of the batch is stored."""
        rows = []
        for i, record in enumerate(records):
            missing = [name for name in _REQUIRED if name not in record]
            if missing:
                raise InvalidRecord(f"spc record {i}: missing {', '.join(missing)}")
            try:
                end = as_utc(record["end"])
            except ValueError as error:
                raise InvalidRecord(f"spc record {i}: end {error}") from None
            text = orjson.dumps(record).decode()
            rows.append((str(record["chart"]), str(record["line"]), end, text))
        if not rows:
            return
        with self._db.transaction() as cur:
            cur.executemany(_UPSERT, rows)

    def points(
        self,
        *,
        line: str | None = None,
        chart: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """Subgroups that ended in [start, end) (with `last`, only each chart's last that
        many of them), of one line or chart or all, by chart, then end. `start` and `end`
        must be timezone-aware."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("line", line), ("chart", chart)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if start is not None:
            where.append('"end" >= ?')
            params.append(naive_utc(start))
        if end is not None:
            where.append('"end" < ?')
            params.append(naive_utc(end))
        sql = "SELECT record FROM spc_points"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if last is not None:
            sql += ' QUALIFY row_number() OVER (PARTITION BY chart ORDER BY "end" DESC) <= ?'
            params.append(last)
        with self._db.cursor() as cur:
            rows = cur.execute(sql + ' ORDER BY chart, "end"', params).fetchall()
        return [orjson.loads(record) for (record,) in rows]
