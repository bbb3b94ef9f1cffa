"""The alert engine's durable state: one SQLite file (WAL) of JSON documents.

Alerts, groups (what was paged, escalation level, repeats), silences, the latest
observations and the notifications emitted are written in one transaction per
`evaluate`, ack or silence change, so an engine restarted on the same file neither
re-pages nor forgets an open alert. Synchronous and small on purpose: the service calls
it from its event loop and a commit costs a few milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from services.alerts.model import Alert, AlertState, Matcher, Notification, Silence

Table = Literal["alerts", "groups", "silences", "observations", "notifications", "meta"]
TABLES: tuple[str, ...] = get_args(Table)
FILENAME = "alerts.sqlite3"


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
        try:
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
