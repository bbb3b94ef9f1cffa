"""A generated production day for integration tests: machines, shifts, stops, counters."""

from __future__ import annotations

import random
from typing import Any

from linepulse.config import PlantConfig, parse_config
from linepulse.events import parse_ts

DAY = "2026-11-02"
REASONS = ["jam", "material_shortage", "electrical", "cleaning"]


def plant(
    machines: int = 50, lines: int = 5, *, kafka: dict[str, Any] | None = None
) -> PlantConfig:
    per_line = machines // lines
    return parse_config(
        {
            "site": "test-plant",
            "timezone": "Europe/Berlin",
            "shifts": [
                {
                    "name": "early",
                    "start": "06:00",
                    "end": "14:00",
                    "breaks": [{"start": "10:00", "end": "10:30"}],
                },
                {
                    "name": "late",
                    "start": "14:00",
                    "end": "22:00",
                    "breaks": [{"start": "18:00", "end": "18:30"}],
                },
                {
                    "name": "night",
                    "start": "22:00",
                    "end": "06:00",
                    "breaks": [{"start": "02:00", "end": "02:30"}],
                },
            ],
            "lines": [
                {
                    "id": f"line-{li}",
                    "machines": [
                        {
                            "id": f"m{li}{mi:02d}",
                            "ideal_cycle_time_s": 2.0,
                            "counters": ["total_count", "reject_count"],
                        }
                        for mi in range(per_line)
                    ],
                }
                for li in range(lines)
            ],
            "kpi": {"lateness_s": 10, "restate_horizon_s": 3600, "windows": ["shift", "day"]},
            **({"kafka": kafka} if kafka else {}),
        }
    )


def day_events(config: PlantConfig, seed: int = 1, sample_s: int = 30) -> list[dict[str, Any]]:
    """Events of every machine from 00:00 to 24:00 UTC, then a closing sample at 00:10."""
    rng = random.Random(seed)
    start = parse_ts(f"{DAY}T00:00:00Z")
    end = start + 86_400_000
    events: list[dict[str, Any]] = []
    for machine in config.machines():
        t, total, rejects = start, rng.randint(0, 10**6), rng.randint(0, 1000)
        state = "running"
        events.append({"ts": t, "machine": machine, "signal": "state", "value": state})
        while t < end:
            if state == "running":
                span = rng.randint(5, 90) * 60_000
                for s in range(t + sample_s * 1000, min(t + span, end), sample_s * 1000):
                    total += rng.randint(10, 15)
                    rejects += rng.random() < 0.3
                    if rng.random() < 0.002:
                        total = rng.randint(0, 50)  # a counter reset
                    events.append(
                        {"ts": s, "machine": machine, "signal": "total_count", "value": total}
                    )
                    events.append(
                        {"ts": s, "machine": machine, "signal": "reject_count", "value": rejects}
                    )
                state = rng.choice(["down", "down", "idle", "changeover"])
            else:
                span = rng.randint(1, 20) * 60_000
                state = "running"
            t += span
            if t < end:
                event: dict[str, Any] = {
                    "ts": t,
                    "machine": machine,
                    "signal": "state",
                    "value": state,
                }
                if state == "down":
                    event["reason"] = rng.choice(REASONS)
                events.append(event)
        # After the day: closes the day and the night shift for every partition's watermark.
        events.append(
            {"ts": end + 40 * 60_000, "machine": machine, "signal": "state", "value": "idle"}
        )
    events.sort(key=lambda e: (e["ts"], e["machine"], e["signal"]))
    return events
