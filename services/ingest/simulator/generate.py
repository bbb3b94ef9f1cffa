"""Telemetry without servers: the model's events over a span of plant time, in order.

`simulate_events` runs the same seeded `PlantModel` that `run_simulator` serves, tick by
tick, from `start_ms` to `end_ms`, and returns what the truth log would hold (event-time
order; at one tick, machine by machine), so a test or `linepulse replay` (write them with
`TruthLog`) gets a shift or a day of a scenario in a second or two, with no port opened.

Unlike `run_simulator`, every machine of the plant is simulated: one in a source publishes
what the source reads of it (`layout.plan`), one in no source publishes `signals`.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from linepulse.config import PlantConfig
from linepulse.events import EVENT_SCHEMA, typed_value
from services.ingest.simulator.layout import mqtt_signals, plan
from services.ingest.simulator.model import (
    Behaviour,
    Event,
    MachineSpec,
    PlantModel,
    machine_spec,
)
from services.ingest.simulator.scenario import Scenario


def simulated_specs(plant: PlantConfig, signals: Sequence[str] | None = None) -> list[MachineSpec]:
    """Every machine of the plant in config order; one in no source publishes `signals`
    (default: what an MQTT machine publishes, with its configured counters)."""
    sourced = plan(plant).specs
    out: list[MachineSpec] = []
    for machine, (line, config) in plant.machines().items():
        spec = sourced.get(machine)
        if spec is None:
            published = mqtt_signals(plant, machine) if signals is None else tuple(signals)
            spec = machine_spec(plant, config, line.id, published)
        out.append(spec)
    return out


def simulate_events(
    plant: PlantConfig,
    *,
    seed: int,
    start_ms: int,
    end_ms: int,
    scenario: Scenario | None = None,
    behaviour: Behaviour | None = None,
    tick_ms: int = 1000,
    signals: Sequence[str] | None = None,
) -> list[Event]:
    """Every event of the ticks in [start_ms, end_ms), in event-time order."""
    if end_ms < start_ms:
        raise ValueError(f"end {end_ms} is before start {start_ms}")
    model = PlantModel(
        plant,
        simulated_specs(plant, signals),
        seed=seed,
        start_ms=start_ms,
        tick_ms=tick_ms,
        behaviour=behaviour,
        scenario=scenario,
    )
    out: list[Event] = []
    for events in model.steps_until(end_ms):
        out.extend(events)
    return out


def events_frame(events: Sequence[Event]) -> pl.DataFrame:
    """The events as an `EVENT_SCHEMA` frame (quality good), as the KPI core takes them."""
    typed = [typed_value(e.value) for e in events]  # each value in its type's column
    return pl.DataFrame(
        {
            "ts": [e.ts for e in events],
            "machine": [e.machine for e in events],
            "signal": [e.signal for e in events],
            "value_num": [t[0] for t in typed],
            "value_int": [t[1] for t in typed],
            "value_str": [t[2] for t in typed],
            "reason": [e.reason for e in events],
            "quality": ["good"] * len(events),
        },
        schema=EVENT_SCHEMA,
    )
