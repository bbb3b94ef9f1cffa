"""A slow, obvious implementation of DESIGN.md's KPI definitions, to test the core against.

Plain loops over sorted events, one window at a time, in UTC, for a plant whose planned
intervals are given explicitly. No shared code with the core beyond the event decoder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

DOWNTIME = {"down", "idle", "changeover"}
TIME_STATES = {"running", *DOWNTIME, "planned_stop"}


def overlap(a: int, b: int, c: int, d: int) -> int:
    return max(0, min(b, d) - max(a, c))


def planned_overlap(intervals: list[tuple[int, int]], start: int, end: int) -> int:
    return sum(overlap(a, b, start, end) for a, b in intervals)


def in_planned(intervals: list[tuple[int, int]], t: int) -> bool:
    return any(a <= t < b for a, b in intervals)


def increment(prev: int, cur: int, dt_ms: int, ideal_s: float) -> int:
    """DESIGN.md's counter rule without a configured maximum: a step up counts, a step
    down is a reset counting `cur`, and either counts nothing when it is implausible
    (more than 3 x seconds / ideal cycle time + 100 parts, the defaults)."""
    step = cur - prev if cur >= prev else cur
    return step if step <= 3 * (dt_ms / 1000) / ideal_s + 100 else 0


def oracle(
    events: Iterable[tuple[int, str, str, Any, str | None, str]],
    windows: list[tuple[str, int, int, str | None]],
    planned: list[tuple[int, int]],
    ideal_s: dict[str, float],
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Records per (machine, window kind, start) for final windows after the whole input.

    `events` are (ts_ms, machine, signal, value, reason, quality); `windows` are
    (kind, start, end, shift) candidates; every machine of `ideal_s` has a window when it
    overlaps [first event, last event of the plant], whether it sent anything or not.
    """
    usable = [e for e in events if e[5] != "bad"]
    high = max(e[0] for e in usable)
    first = min(e[0] for e in usable)
    by_machine: dict[str, list[tuple[int, str, str, Any, str | None, str]]] = {
        m: [] for m in ideal_s
    }
    for e in usable:
        by_machine[e[1]].append(e)
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for machine, evs in by_machine.items():
        states = sorted(
            ((e[0], e[3], e[4]) for e in evs if e[2] == "state"),
            key=lambda s: (s[0], s[1], s[2] is None, s[2] or ""),
        )
        spans = []  # (start, end, state, reason)
        for i, (ts, state, reason) in enumerate(states):
            nxt = states[i + 1][0] if i + 1 < len(states) else high
            spans.append((ts, nxt, state, reason))
        transitions = [
            (states[i][0], states[i][1])
            for i in range(1, len(states))
            if states[i - 1][1] == "running" and states[i][1] in DOWNTIME
        ]
        parts: dict[str, list[tuple[int, int]]] = {}
        for signal in ("total_count", "reject_count"):
            samples = sorted((e[0], e[3]) for e in evs if e[2] == signal)
            incs = []
            for i, (ts, value) in enumerate(samples):
                if i == 0:
                    continue
                prev_ts, prev = samples[i - 1]
                incs.append((ts, increment(prev, value, ts - prev_ts, ideal_s[machine])))
            parts[signal] = incs
        for kind, start, end, shift in windows:
            if not (end > first and start <= high):
                continue
            cal = planned_overlap(planned, start, end)
            secs: dict[str, int] = defaultdict(int)
            reasons: dict[str, int] = defaultdict(int)
            for a, b, state, reason in spans:
                if state not in TIME_STATES:
                    continue
                for pa, pb in planned:
                    ms = overlap(a, b, max(pa, start), min(pb, end))
                    secs[state] += ms
                    if state in DOWNTIME and ms:
                        reasons[reason or "unassigned"] += ms
            stops = sum(1 for ts, _ in transitions if start <= ts < end and in_planned(planned, ts))
            total = sum(n for ts, n in parts["total_count"] if start <= ts < end)
            reject = sum(n for ts, n in parts["reject_count"] if start <= ts < end)
            good = total - reject
            planned_ms = cal - secs["planned_stop"]
            run_ms = secs["running"]
            down_ms = secs["down"] + secs["idle"] + secs["changeover"]
            availability = run_ms / planned_ms if planned_ms > 0 else None
            performance = ideal_s[machine] * total / (run_ms / 1000) if run_ms > 0 else None
            quality = good / total if total > 0 else None
            if planned_ms <= 0:
                oee = None
            elif run_ms <= 0 or total <= 0:
                oee = 0.0
            else:
                assert availability is not None
                assert performance is not None
                assert quality is not None
                oee = availability * performance * quality
            out[(machine, kind, start)] = {
                "window_end_ms": end,
                "shift": shift,
                "planned_s": planned_ms / 1000,
                "run_s": run_ms / 1000,
                "downtime_s": down_ms / 1000,
                "unknown_s": (planned_ms - run_ms - down_ms) / 1000,
                "stops": stops,
                "total_count": total,
                "good_count": good,
                "reject_count": reject,
                "availability": availability,
                "performance": performance,
                "quality": quality,
                "oee": oee,
                "mtbf_s": run_ms / 1000 / stops if stops else None,
                "mttr_s": down_ms / 1000 / stops if stops else None,
                "downtime_by_reason": {r: ms / 1000 for r, ms in reasons.items() if ms},
            }
    return out
