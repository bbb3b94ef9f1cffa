"""A simulated plant's past: the shifts before it goes live, generated at full speed.

A plant that has just been switched on shows nothing a shift lead recognises: an OEE
over a few seconds, a shift's planned time against minutes of data. So `run_simulator`
can first step its `PlantModel` from `History.start_ms` (by default the start of the
previous shift in the plant's calendar) up to now as fast as the host allows, hand each
chunk of events to `History.deliver`, and then go on ticking live from the same model
state: counters continue, a stopped machine stays stopped, nothing is reset.

`onto_sink` delivers the history the way an ingester delivers live values: validated by a
`SampleBatch` into `EVENT_SCHEMA` frames (dead letters for what does not fit the config),
through the ingesters' sink onto the telemetry topic. The KPI worker then reads it like
any other telemetry, in event time, and closes the earlier windows as its watermark
passes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from linepulse.calendar import Calendar
from linepulse.config import PlantConfig
from services.ingest.samples import SampleBatch, Sink
from services.ingest.simulator.model import Event

HOUR_MS: Final = 3_600_000
# Plant time per step of the history: 5 s is 5 times fewer steps (and analog samples) than
# the live 1 s tick, so that 14 h of a 20-machine plant take seconds; stops and states
# land on a 5 s grid, which no shift figure can tell from the live one.
HISTORY_TICK_MS: Final = 5_000
# History of a plant whose lines have no shifts (always planned): one shift's worth.
NO_SHIFTS_HISTORY_MS: Final = 8 * HOUR_MS
# Plant time handed over per `deliver` call: big enough for few calls, small enough that
# the rest of the event loop (servers, the KPI worker) runs in between.
CHUNK_MS: Final = 10 * 60_000
# Source id of the history's samples (dead letters and ingest metrics say where from).
HISTORY_SOURCE: Final = "simulator-history"

Deliver = Callable[[list[Event]], Awaitable[None]]


@dataclass(frozen=True)
class History:
    """What `run_simulator` generates before it goes live.

    `start_ms`: plant time (epoch ms, UTC) of the first history tick; the history ends
    where live ticking begins (the wall clock, on a tick boundary), stepped `tick_ms` at a
    time. `deliver` takes each
    chunk of events, in event-time order. `progress` hears a line when it starts and one
    when it is done (a console), or nothing if None.
    """

    start_ms: int
    deliver: Deliver
    progress: Callable[[str], None] | None = None
    tick_ms: int = HISTORY_TICK_MS  # plant time per history step (a multiple of the tick)


def previous_shift_start(plant: PlantConfig, now_ms: int) -> int:
    """Start (epoch ms) of the shift before the one in progress at `now_ms`, the earliest
    over the plant's lines; between shifts, of the one before the last that ended. A
    plant whose lines have no shifts gets `NO_SHIFTS_HISTORY_MS` of history."""
    calendar = Calendar(plant)
    starts: list[int] = []
    for line in plant.lines:
        # Two days back always holds two shift starts (a shift lasts at most a day).
        begun = [s.start for s in calendar.spans(line.id, now_ms - 48 * HOUR_MS, now_ms + 1)]
        begun = sorted(start for start in begun if start <= now_ms)
        if begun:
            starts.append(begun[-2] if len(begun) > 1 else begun[-1])
    return min(starts) if starts else now_ms - NO_SHIFTS_HISTORY_MS


def onto_sink(plant: PlantConfig, sink: Sink) -> Deliver:
    """A `History.deliver` that puts events on `sink` as an ingester does (see above)."""
    batch = SampleBatch.for_plant(plant, HISTORY_SOURCE)

    async def deliver(events: list[Event]) -> None:
        for event in events:
            batch.add(event.ts, event.machine, event.signal, event.value, reason=event.reason)
        frame, letters = batch.take()
        if frame.height:
            await sink.put(frame)
        if letters:
            await sink.dead_letter(letters)

    return deliver


def describe_span(plant: PlantConfig, start_ms: int, end_ms: int) -> str:
    """'14 h 5 min from Tue 06:00' in the plant's time zone: what a history covers."""
    minutes = max(0, end_ms - start_ms) // 60_000
    hours, minutes = divmod(minutes, 60)
    length = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    local = datetime.fromtimestamp(start_ms / 1000, plant.zone)
    return f"{length} from {local:%a %H:%M} ({plant.timezone})"
