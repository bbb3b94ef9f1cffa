"""Helpers for core tests: build plants and events tersely, run the core, index records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from linepulse.config import PlantConfig, WindowKind, parse_config
from linepulse.events import EVENT_SCHEMA, decode_event, empty_events
from services.kpi.core.engine import Core, CoreState, StepOutput, initial_state, step

Key = tuple[str | None, str, str]  # (machine or None for the line, window, window_start)


def plant(
    shifts: list[dict[str, Any]] | None = None,
    machines: Sequence[str | dict[str, Any]] = ("m1",),
    timezone: str = "UTC",
    **extra: Any,
) -> PlantConfig:
    """A one-line plant; machines default to an ideal cycle time of 1 s."""
    if shifts is None:
        shifts = [{"name": "early", "start": "06:00", "end": "14:00"}]
    specs = [{"id": m, "ideal_cycle_time_s": 1.0} if isinstance(m, str) else m for m in machines]
    data = {
        "site": "test",
        "timezone": timezone,
        "shifts": shifts,
        "lines": [{"id": "line-1", "machines": specs}],
        **extra,
    }
    return parse_config(data)


def ev(
    ts: str | int,
    signal: str,
    value: Any,
    machine: str = "m1",
    reason: str | None = None,
    quality: str | None = None,
) -> dict[str, Any]:
    """One telemetry event; `ts` "06:00:10" means that time on 2026-11-02 UTC."""
    if isinstance(ts, str) and len(ts) <= 12:
        ts = f"2026-11-02T{ts}Z"
    event: dict[str, Any] = {"ts": ts, "machine": machine, "signal": signal, "value": value}
    if reason is not None:
        event["reason"] = reason
    if quality is not None:
        event["quality"] = quality
    return event


def frame(events: Iterable[dict[str, Any]]) -> pl.DataFrame:
    rows = [decode_event(e) for e in events]
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def run(
    config: PlantConfig,
    batches: Sequence[Sequence[dict[str, Any]]],
    windows: tuple[WindowKind, ...] | None = None,
) -> tuple[dict[Key, dict[str, Any]], list[StepOutput], CoreState]:
    """Feed batches, then flush; return the last revision of each final record."""
    core = Core.from_config(config, windows)
    state = initial_state(core)
    outputs: list[StepOutput] = []
    finals: dict[Key, dict[str, Any]] = {}
    for batch in [*batches, []]:
        flush = batch is not None and len(outputs) == len(batches)
        state, output = step(core, state, frame(batch) if batch else empty_events(), flush=flush)
        outputs.append(output)
        for record in output.records:
            if record["final"]:
                finals[(record["machine"], record["window"], record["window_start"])] = record
    return finals, outputs, state


def at(day_time: str, day: str = "2026-11-02") -> str:
    return f"{day}T{day_time}Z"


def values(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its bookkeeping fields, for comparing two runs."""
    return {k: v for k, v in record.items() if k not in {"revision"}}
