"""The records `KpiHistory.current` can still pick, held in memory.

Per group (line, machine, window kind): every open record and the newest final one.
`current` shows a group's newest open window, else its newest final one; a final record
older than another final one of its group can never be shown again, whatever arrives
later (final is for good: a restatement stays final). So a few records per group,
however long the history.

Why in memory: the API's view of a window has to follow the `kpi` topic within a second.
Kept as a second DuckDB table in the upsert's transaction, `current` waited for that
transaction (two more statements over a growing index: 75-300 ms a poll at 1,000
machines) and its own query (~25 ms). Here a batch is visible as soon as it is validated,
and a query is a walk over the groups of one window kind.

The winner of a key is the history's (services/kpi/history.py): the highest (revision,
final), ties to the later arrival. Where this index cannot tell what the history holds for
a key (an open record of a window older than its group's newest final, whose own final
record was dropped from here), `unknown` names it and the caller looks it up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

Scope = Literal["all", "machine", "line"]
"""Which records a query returns: machine and line records, machine records only, or
line records only (`machine` None)."""

Group = tuple[str, str, str]  # line, machine ('' for the line's record), window kind
Key = tuple[str, str, str, datetime]  # the group and the window's start (naive UTC)
Standing = tuple[int, bool]  # what decides a key's winner: revision, final


class Held:
    """One stored row (the history's columns, in its order) with its key's parts; made
    into a record (`CurrentRecords._record`) only when a query first returns it, since
    most open windows are replaced several times a second and read far less often."""

    __slots__ = ("final", "key", "record", "revision", "row")

    def __init__(self, key: Key, revision: int, final: bool, row: tuple[Any, ...]) -> None:
        self.key = key
        self.revision = revision
        self.final = final
        self.row = row
        self.record: dict[str, Any] | None = None


def wins(incoming: Standing, stored: Standing) -> bool:
    """Whether a record replaces the stored one of its key: a higher revision, or the same
    with final at least as final (a later arrival wins a tie)."""
    return incoming[0] > stored[0] or (incoming[0] == stored[0] and incoming[1] >= stored[1])


class CurrentRecords:
    """The index; thread-safe (the API reads it while the materializer writes it)."""

    def __init__(self, render: Callable[[tuple[Any, ...]], dict[str, Any]]) -> None:
        self._render = render  # a stored row as the record contract has it
        self._groups: dict[str, dict[tuple[str, str], dict[datetime, Held]]] = {}
        self._newest_final: dict[Group, datetime] = {}
        self._lock = threading.Lock()

    def unknown(self, batch: Iterable[Held]) -> list[Key]:
        """The keys of open records in `batch` whose stored standing this index does not
        hold: older than their group's newest final and not held (a new window, or one
        whose final record was dropped from here; only the history can tell)."""
        with self._lock:
            return [
                held.key
                for held in batch
                if not held.final and self._older_than_final(held.key) and not self._held(held.key)
            ]

    def apply(self, batch: Iterable[Held], stored: Mapping[Key, Standing]) -> None:
        """Settle a batch (one record per key), with the standing the history holds of
        each key `unknown` named (absent: the history has none).

        Open records first: they never move a group's newest final, so each is judged
        against the index as `unknown` saw it; a final record then needs no lookup (one
        behind its group's newest final is never shown, whatever it wins)."""
        with self._lock:
            for held in sorted(batch, key=lambda held: held.final):
                self._settle(held, stored)

    def _settle(self, held: Held, stored: Mapping[Key, Standing]) -> None:
        line, machine, kind, start = held.key
        records = self._groups.setdefault(kind, {}).setdefault((line, machine), {})
        standing = (held.revision, held.final)
        before = records.get(start)
        if before is not None:
            if not wins(standing, (before.revision, before.final)):
                return
        elif self._older_than_final(held.key):
            if held.final:
                return  # never shown: a newer final window of its group is
            prior = stored.get(held.key)
            if prior is not None and not wins(standing, prior):
                return
        records[start] = held
        if not held.final:
            return
        group = (line, machine, kind)
        newest = self._newest_final.get(group)
        if newest is None or start > newest:
            self._newest_final[group] = start
            if newest is not None:
                dropped = records.get(newest)
                if dropped is not None and dropped.final:  # (a restatement may reopen it)
                    del records[newest]
        elif start < newest:
            del records[start]  # an open window that became final behind the newest

    def _older_than_final(self, key: Key) -> bool:
        newest = self._newest_final.get((key[0], key[1], key[2]))
        return newest is not None and key[3] < newest

    def _held(self, key: Key) -> bool:
        line, machine, kind, start = key
        return start in self._groups.get(kind, {}).get((line, machine), {})

    def pick(
        self,
        window: str,
        line: str | None = None,
        machine: str | None = None,
        scope: Scope = "all",
    ) -> list[dict[str, Any]]:
        """Per (line, machine) of `window`, its newest open record, else its newest final
        one; filtered by `line`, `machine` (a machine's id) and `scope`, ordered by line,
        then machines, then the line's record. Each a new dict (its nested objects are
        shared: read them, do not change them)."""
        with self._lock:
            chosen = [
                (group_line, group_machine, self._record(max(records.values(), key=_shown_first)))
                for (group_line, group_machine), records in self._groups.get(window, {}).items()
                if records
                and (line is None or group_line == line)
                and (machine is None or group_machine == machine)
                and (scope == "all" or (group_machine == "") == (scope == "line"))
            ]
        chosen.sort(key=lambda row: (row[0], row[1] == "", row[1]))
        return [dict(record) for _, _, record in chosen]

    def _record(self, held: Held) -> dict[str, Any]:
        record = held.record
        if record is None:
            record = held.record = self._render(held.row)
        return record


def _shown_first(held: Held) -> tuple[bool, datetime]:
    """Open before final, then the newest start."""
    return (not held.final, held.key[3])
