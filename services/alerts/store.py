"""The alert engine's durable state: one SQLite file (WAL) of JSON documents.

Alerts, groups (what was paged, escalation level, repeats), silences, the latest
observations, the notifications emitted and the shift notes (services/alerts/notes.py)
are written in one transaction per
`evaluate`, ack or silence change, so an engine restarted on the same file neither
re-pages nor forgets an open alert. Synchronous and small on purpose: the service calls
it from its event loop and a commit costs a few milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from services.alerts.model import Alert, AlertState, Matcher, Notification, Silence

Table = Literal["alerts", "groups", "silences", "observations", "notifications", "meta", "notes"]
TABLES: tuple[str, ...] = get_args(Table)
FILENAME = "alerts.sqlite3"
# One row as a replica carries it (services/alerts/replication.py): table, key, and
# (at, document), or None where the row was deleted.
Row = tuple[Table, str, tuple[int, Mapping[str, Any]] | None]


class AlertStore:
    """Tables of `key -> JSON document`, each written with `commit` in one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across a process crash in WAL mode (the case we care about);
        # only a power loss can drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Told every row each commit writes or deletes, in commit order (the active
        # instance of a replicated alerts service hands them to its standbys).
        self.on_commit: Callable[[list[Row]], None] | None = None
        for table in TABLES:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(key TEXT PRIMARY KEY, at INTEGER NOT NULL, doc TEXT NOT NULL)"
            )

    @classmethod
    def in_dir(cls, state_dir: Path) -> AlertStore:
        """The store under `alerts.state_dir`."""
        return cls(state_dir / FILENAME)

    def load(self, table: Table) -> dict[str, dict[str, Any]]:
        rows = self._db.execute(f"SELECT key, doc FROM {table}")  # noqa: S608
        return {key: json.loads(doc) for key, doc in rows}

    def commit(
        self,
        puts: Mapping[Table, Mapping[str, tuple[int, Mapping[str, Any]]]],
        deletes: Mapping[Table, Any] | None = None,
        prune_before: Mapping[Table, int] | None = None,
    ) -> None:
        """In one transaction: upsert `puts[table][key] = (at, doc)`, delete the keys in
        `deletes[table]`, and delete rows with `at` older than `prune_before[table]`."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        written: list[Row] = []
        try:
            if self.on_commit is not None:
                for table, before in (prune_before or {}).items():
                    old = db.execute(f"SELECT key FROM {table} WHERE at < ?", (before,))  # noqa: S608
                    written += [(table, key, None) for (key,) in old]
                for table, keys in (deletes or {}).items():
                    written += [(table, key, None) for key in keys]
                for table, docs in puts.items():
                    written += [(table, key, row) for key, row in docs.items()]
            for table, docs in puts.items():
                db.executemany(
                    f"INSERT OR REPLACE INTO {table} (key, at, doc) VALUES (?, ?, ?)",  # noqa: S608
                    [(k, at, json.dumps(doc, sort_keys=True)) for k, (at, doc) in docs.items()],
                )
            for table, keys in (deletes or {}).items():
                db.executemany(
                    f"DELETE FROM {table} WHERE key = ?",  # noqa: S608
                    [(k,) for k in keys],
                )
            for table, before in (prune_before or {}).items():
                db.execute(f"DELETE FROM {table} WHERE at < ?", (before,))  # noqa: S608
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if self.on_commit is not None and written:
            self.on_commit(written)

    def apply(self, rows: Iterable[Row]) -> None:
        """Write rows another instance committed, as they are, in one transaction."""
        latest = {(table, key): row for table, key, row in rows}  # the last write wins
        puts: dict[Table, dict[str, tuple[int, Mapping[str, Any]]]] = {}
        deletes: dict[Table, list[str]] = {}
        for (table, key), row in latest.items():
            if row is None:
                deletes.setdefault(table, []).append(key)
            else:
                puts.setdefault(table, {})[key] = row
        hook, self.on_commit = self.on_commit, None
        try:
            self.commit(puts, deletes)
        finally:
            self.on_commit = hook

    def clear(self) -> None:
        """Delete every row (a standby rebuilds its copy from the replica topic)."""
        self._db.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608
        self._db.execute("COMMIT")

    def notifications(self, since_ms: int = 0) -> list[Notification]:
        """Notifications emitted at or after `since_ms`, oldest first: what a restarted
        service re-offers to its outbox (which drops keys it already holds)."""
        rows = self._db.execute(
            "SELECT doc FROM notifications WHERE at >= ? ORDER BY at, key", (since_ms,)
        )
        return [notification_from_dict(json.loads(doc)) for (doc,) in rows]

    def close(self) -> None:
        self._db.close()


def alert_from_dict(doc: Mapping[str, Any]) -> Alert:
    data = dict(doc)
    data["state"] = AlertState(data["state"])
    return Alert(**data)


def silence_as_dict(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": [[m.name, m.value, m.regex] for m in silence.matchers],
        "starts_at": silence.starts_at,
        "ends_at": silence.ends_at,
        "created_by": silence.created_by,
        "comment": silence.comment,
    }


def silence_from_dict(doc: Mapping[str, Any]) -> Silence:
    data = dict(doc)
    data["matchers"] = tuple(Matcher(n, v, bool(r)) for n, v, r in data["matchers"])
    return Silence(**data)


def notification_as_dict(note: Notification) -> dict[str, Any]:
    return {**note.__dict__, "alerts": list(note.alerts)}


def notification_from_dict(doc: Mapping[str, Any]) -> Notification:
    data = dict(doc)
    data["alerts"] = tuple(data["alerts"])
    return Notification(**data)
