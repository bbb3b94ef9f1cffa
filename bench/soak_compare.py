"""The soak test's verdicts, as pure functions: records against the replay of the truth,
truth events against the telemetry topic, pages against the outbox, RSS over time.

Kept apart from `bench.soak` (which starts brokers and services) so that the arithmetic
that decides pass or fail is unit-tested on its own (tests/unit/bench/test_soak_compare.py).

An `Outage` is a span during which a fault cut the data path of some machines (the
ingester down, an OPC-UA server restarting, the MQTT broker restarting). What the sources
said in it could not all reach Kafka: an OPC-UA subscription does not replay the changes
a client missed, and a lost connection is recorded as `unknown` time, which the truth
does not have. Records whose window overlaps an outage of one of their machines are
therefore compared and reported apart ("excused"), never counted as wrong; events of
such a machine inside the span are not counted as lost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from linepulse.records import RECORD_FIELDS

# The KPI record fields of docs/kpi.md (the record's own, from window_end to final; the
# fields beyond OEE come after `revision`), compared one by one. `revision` is not: a
# window restated by late data has a higher revision in the stream than in a replay.
FIELDS: tuple[str, ...] = RECORD_FIELDS[
    RECORD_FIELDS.index("window_end") : RECORD_FIELDS.index("final") + 1
]
TOLERANCE = 1e-9

RecordKey = tuple[str, str | None, str, int]  # line, machine (None: line), window, start ms
EventKey = tuple[int, str, str, Any, str | None]  # ts, machine, signal, value, reason


@dataclass(frozen=True)
class Outage:
    """Machines whose data path a fault cut from `start_ms` to `end_ms` (epoch ms)."""

    machines: frozenset[str]
    start_ms: int
    end_ms: int
    what: str = ""


def epoch_ms(stamp: str | int | float) -> int:
    """Milliseconds since the epoch of an RFC 3339 string or a number of milliseconds."""
    if isinstance(stamp, int | float):
        return int(stamp)
    return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def record_key(record: Mapping[str, Any]) -> RecordKey:
    return (
        str(record["line"]),
        record["machine"],
        str(record["window"]),
        epoch_ms(record["window_start"]),
    )


def same(a: Any, b: Any, tolerance: float = TOLERANCE) -> bool:
    """Equal, with floats within `tolerance` (absolute, or relative for large values) and
    dicts compared key by key; timestamps compare as instants, whatever their spelling."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k], tolerance) for k in a)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return epoch_ms(a) == epoch_ms(b)
        except ValueError:
            return False
    return bool(a == b)


@dataclass(frozen=True)
class Mismatch:
    key: RecordKey
    field: str
    truth: Any
    served: Any


@dataclass
class RecordCheck:
    """Records of windows inside the compared span: `compared` strictly, `wrong` of them
    differing in some field (`mismatches` says where), `missing` in the replay but not
    served; `excused` overlapped an outage of their machines, `excused_differing` of
    those differ (for information)."""

    compared: int = 0
    wrong: int = 0
    missing: int = 0
    excused: int = 0
    excused_differing: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    missing_keys: list[RecordKey] = field(default_factory=list)

    @property
    def records_wrong(self) -> int:
        return self.wrong + self.missing


def _touched(
    key: RecordKey, end_ms: int, outages: Sequence[Outage], lines: Mapping[str, str]
) -> bool:
    line, machine, _, start_ms = key
    for outage in outages:
        if outage.start_ms >= end_ms or outage.end_ms <= start_ms:
            continue
        if machine is not None and machine in outage.machines:
            return True
        if machine is None and any(lines.get(m) == line for m in outage.machines):
            return True
    return False


def compare_records(
    truth: Iterable[Mapping[str, Any]],
    served: Iterable[Mapping[str, Any]],
    *,
    start_ms: int,
    end_ms: int,
    outages: Sequence[Outage] = (),
    lines: Mapping[str, str] | None = None,
    fields: Sequence[str] = FIELDS,
) -> RecordCheck:
    """Every replayed record of a window inside [start_ms, end_ms) against the served one
    of the same (line, machine, window, start), field by field. `lines`: machine -> line,
    so that a line record is excused when one of its machines had an outage."""
    lines = lines or {}
    by_key = {record_key(r): r for r in served}
    check = RecordCheck()
    for record in truth:
        key = record_key(record)
        window_end = epoch_ms(record["window_end"])
        if key[3] < start_ms or window_end > end_ms:
            continue
        excused = _touched(key, window_end, outages, lines)
        other = by_key.get(key)
        differing = [
            Mismatch(key, name, record.get(name), None if other is None else other.get(name))
            for name in fields
            if other is None or not same(record.get(name), other.get(name))
        ]
        if excused:
            check.excused += 1
            check.excused_differing += bool(differing)
            continue
        check.compared += 1
        if other is None:
            check.missing += 1
            check.missing_keys.append(key)
        elif differing:
            check.wrong += 1
            check.mismatches.extend(differing)
    return check


@dataclass
class EventCheck:
    """True events inside the span: `expected` of them should be on the topic, `lost` are
    not; `excused` fell in an outage of their machine; `duplicated`: identical events on
    the topic more than once (harmless to counters, a sign of a non-idempotent path)."""

    expected: int = 0
    lost: int = 0
    excused: int = 0
    excused_missing: int = 0
    duplicated: int = 0
    lost_examples: list[EventKey] = field(default_factory=list)


def compare_events(
    truth: Iterable[EventKey],
    telemetry: Iterable[EventKey],
    *,
    start_ms: int,
    end_ms: int,
    signals: frozenset[str],
    outages: Sequence[Outage] = (),
) -> EventCheck:
    """Each true event of one of `signals` with a time in [start_ms, end_ms) must be on the
    telemetry topic (same time, machine, signal, value and reason)."""
    seen: dict[EventKey, int] = {}
    for key in telemetry:
        seen[key] = seen.get(key, 0) + 1
    check = EventCheck(duplicated=sum(n - 1 for n in seen.values()))
    for key in truth:
        ts, machine, signal = key[0], key[1], key[2]
        if signal not in signals or not start_ms <= ts < end_ms:
            continue
        if any(machine in o.machines and o.start_ms <= ts < o.end_ms for o in outages):
            check.excused += 1
            check.excused_missing += key not in seen
            continue
        check.expected += 1
        if key not in seen:
            check.lost += 1
            if len(check.lost_examples) < 10:
                check.lost_examples.append(key)
    return check


@dataclass(frozen=True)
class PageCheck:
    """Pages the receiver accepted against the outbox's delivered rows, by notification
    key: `duplicates` beyond the first of a key, `missing` delivered but never received,
    `unexplained` received but not in the outbox."""

    received: int
    distinct: int
    duplicates: int
    delivered: int
    missing: int
    unexplained: int


def compare_pages(received: Sequence[str], delivered: Iterable[str]) -> PageCheck:
    keys = set(received)
    sent = set(delivered)
    return PageCheck(
        received=len(received),
        distinct=len(keys),
        duplicates=len(received) - len(keys),
        delivered=len(sent),
        missing=len(sent - keys),
        unexplained=len(keys - sent),
    )


def rss_ratio(samples: Sequence[tuple[float, int]], warmup_s: float) -> float | None:
    """Median RSS of the last third over the median of the first third of the samples
    taken after `warmup_s` from the first; None with fewer than 6 samples left. Samples
    are (seconds, bytes) of one process."""
    if not samples:
        return None
    begin = samples[0][0] + warmup_s
    kept = [rss for at, rss in samples if at >= begin]
    if len(kept) < 6:
        return None
    third = len(kept) // 3
    first, last = sorted(kept[:third]), sorted(kept[-third:])
    return last[len(last) // 2] / first[len(first) // 2]


def down_spans(
    truth: Iterable[EventKey], machines: frozenset[str], *, min_ms: int
) -> dict[str, list[tuple[int, int]]]:
    """Per machine, the (start, end) of each true `down` spell at least `min_ms` long:
    the pages a `state == down for ...` rule owes. A spell still open at the end of the
    truth is left out (its length is not known)."""
    spans: dict[str, list[tuple[int, int]]] = {m: [] for m in machines}
    since: dict[str, int | None] = {}
    for ts, machine, signal, value, _reason in sorted(truth, key=lambda k: k[0]):
        if signal != "state" or machine not in machines:
            continue
        began = since.get(machine)
        if value == "down":
            if began is None:
                since[machine] = ts
            continue
        if began is not None and ts - began >= min_ms:
            spans[machine].append((began, ts))
        since[machine] = None
    return spans


def unpaged(
    spans: Mapping[str, Sequence[tuple[int, int]]],
    fired: Mapping[str, Sequence[int]],
    *,
    start_ms: int,
    end_ms: int,
    grace_ms: int = 0,
) -> int:
    """Down spells inside [start_ms, end_ms) with no firing alert of their machine whose
    `startsAt` (epoch ms) falls in the spell or `grace_ms` after it: pages the receiver
    never got."""
    missing = 0
    for machine, found in spans.items():
        starts = fired.get(machine, ())
        for began, ended in found:
            if began < start_ms or ended > end_ms:
                continue
            if not any(began <= at <= ended + grace_ms for at in starts):
                missing += 1
    return missing
