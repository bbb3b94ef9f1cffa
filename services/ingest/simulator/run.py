"""`run_simulator`: the plant's sources served from the seeded model, until `stop` is set.

Each tick the model advances plant time by `tick_s` and its events go where the config
says: written to the OPC-UA servers' nodes at once (a local write that cannot fail), and
queued for each MQTT publisher, which sends them while connected. Every event reaches the
truth log when it is on the wire, with the time the wire carries.

With a `History` (history.py), the model is first stepped at full speed from the history's
start up to now, its events handed to the history's `deliver` rather than to the sources;
then the next tick publishes every signal (the sources start from the plant's current
state) and ticking goes on live from the same model.

Plant time starts at `start_ms` (default: now, on a tick boundary) and runs `speed` times
as fast as wall time; every timestamp the simulator puts anywhere is plant time, so with
`speed` > 1 the timestamps run ahead of the clock but stay consistent with one another,
which is all event-time KPIs need. When the host cannot keep up, ticks are caught up as
fast as possible (the events and their times stay the same; only wall time slips), and
`max_lag_s` says by how much.

Load for benchmarks: every tick writes each machine's changed signals; analog tags
(`speed`, `temperature`, and any configured signal the model does not know) change every
tick, so `machines × analog signals / tick_s` is the change rate (see `synthetic.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from linepulse.config import PlantConfig
from linepulse.runtime import wait_set
from services.ingest.simulator.history import CHUNK_MS, History, describe_span
from services.ingest.simulator.layout import Layout, SparkplugDevice, plan
from services.ingest.simulator.model import Behaviour, Event, PlantModel
from services.ingest.simulator.mqtt_publisher import MqttJsonOutlet, MqttOutlet
from services.ingest.simulator.opcua_server import OpcuaOutlet
from services.ingest.simulator.scenario import Scenario
from services.ingest.simulator.sparkplug_publisher import SparkplugOutlet
from services.ingest.simulator.truth import TruthLog

log = logging.getLogger(__name__)

# How long shutdown waits for MQTT publishers to send what is queued.
DRAIN_TIMEOUT_S: Final = 10.0


@dataclass
class SimulatorStats:
    """What a run did. `events` counts events on the wire per source id."""

    seed: int
    start_ms: int  # plant time of the first tick
    tick_ms: int
    ticks: int = 0
    end_ms: int = 0  # plant time just after the last tick
    history_ticks: int = 0  # of `ticks`, generated at full speed before going live
    history_events: int = 0
    history_s: float = 0.0  # wall time the history took
    events: dict[str, int] = field(default_factory=dict)
    truth_lines: int = 0
    counter_resets: int = 0
    dropped: int = 0  # MQTT events dropped while a broker was away too long
    reconnects: int = 0  # MQTT reconnections
    max_lag_s: float = 0.0  # how far the tick loop fell behind wall time, at worst
    wall_s: float = 0.0  # wall time from ready to stop

    @property
    def changes_per_s(self) -> float:
        """Events on the wire per second of wall time."""
        return sum(self.events.values()) / self.wall_s if self.wall_s > 0 else 0.0


def _mqtt_outlets(
    plant: PlantConfig, layout: Layout, published: Callable[[str], Callable[[list[Event]], None]]
) -> dict[str, MqttOutlet]:
    """machine -> its MQTT publisher (one per JSON source, one per Sparkplug edge node)."""
    lines = {m: line.id for m, (line, _) in plant.machines().items()}
    out: dict[str, MqttOutlet] = {}
    for source in plant.sources.mqtt:
        plain = layout.json_machines.get(source.id, ())
        if plain:
            outlet: MqttOutlet = MqttJsonOutlet(source, lines, published(source.id))
            out.update(dict.fromkeys(plain, outlet))
        edges: dict[str, list[SparkplugDevice]] = {}
        for device in layout.sparkplug.get(source.id, ()):
            edges.setdefault(device.edge, []).append(device)
        for edge, devices in edges.items():
            outlet = SparkplugOutlet(source, edge, devices, layout.specs, published(source.id))
            out.update({d.machine: outlet for d in devices})
    return out


async def run_simulator(
    plant: PlantConfig,
    *,
    seed: int,
    truth: Path | None,
    stop: asyncio.Event,
    speed: float = 1.0,
    tick_s: float = 1.0,
    ready: asyncio.Event | None = None,
    start_ms: int | None = None,
    behaviour: Behaviour | None = None,
    scenario: Scenario | None = None,
    history: History | None = None,
    historize: bool = False,
) -> SimulatorStats:
    """Serve the plant's sources until `stop` is set; `ready` is set once every OPC-UA
    server listens and every MQTT publisher has connected (and the `history`, if any, is
    delivered), just before the first live tick. `scenario` (coupled lines, speeds, own
    stops) defaults to none: the plain model. `historize`: the OPC-UA servers keep their
    variables' history (HistoryRead), as a PLC with Historizing variables does."""
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    tick_ms = round(tick_s * 1000)
    if tick_ms < 1:
        raise ValueError(f"tick_s must be at least 0.001, got {tick_s}")
    # Plant time "now" is taken when the first tick is due, not before the servers start:
    # a plant running seconds behind the wall clock looks like a PLC with a slow clock.
    now_at_ready = start_ms is None and history is None
    if history is not None:
        if speed != 1.0:
            raise ValueError("a history ends at the wall clock: it needs speed 1")
        if history.tick_ms % tick_ms:
            raise ValueError(f"history tick {history.tick_ms} ms is no multiple of {tick_ms} ms")
        start_ms = history.start_ms - history.start_ms % tick_ms
    elif start_ms is None:
        start_ms = _tick_floor(tick_ms)
    layout = plan(plant)
    if not layout.specs:
        log.warning("simulate: no machine is in any source of the config; nothing to serve")

    def build(start: int) -> PlantModel:
        return PlantModel(
            plant,
            list(layout.specs.values()),
            seed=seed,
            start_ms=start,
            tick_ms=tick_ms,
            behaviour=behaviour,
            scenario=scenario,
        )

    model = build(start_ms)
    stats = SimulatorStats(seed=seed, start_ms=start_ms, tick_ms=tick_ms)
    stats.events = dict.fromkeys(plant.sources.ids(), 0)

    async with AsyncExitStack() as stack:
        truth_log = stack.enter_context(TruthLog(truth)) if truth is not None else None

        def published(source: str) -> Callable[[list[Event]], None]:
            def record(events: list[Event]) -> None:
                stats.events[source] += len(events)
                if truth_log is not None:
                    truth_log.write(events)

            return record

        opcua = [OpcuaOutlet(s, layout.specs, historize=historize) for s in plant.sources.opcua]
        for server in opcua:
            await server.start()
            stack.push_async_callback(server.stop)
        opcua_of = {m: o for o in opcua for m in o.specs}
        opcua_done = {o.source.id: published(o.source.id) for o in opcua}
        mqtt_of = _mqtt_outlets(plant, layout, published)
        mqtt = list(dict.fromkeys(mqtt_of.values()))
        for outlet in mqtt:
            outlet.now_ms = start_ms

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(o.run(), name=f"simulate mqtt {o.name}") for o in mqtt]
            try:
                if await _connected(mqtt, tasks, stop):
                    if now_at_ready:
                        start_ms = stats.start_ms = _tick_floor(tick_ms)
                        model = build(start_ms)
                        for outlet in mqtt:
                            outlet.now_ms = start_ms
                    log.info(
                        "simulate: %d machines on %d sources, seed %d, plant time from %d ms, "
                        "tick %d ms, speed %g",
                        len(layout.specs),
                        len(plant.sources.ids()),
                        seed,
                        start_ms,
                        tick_ms,
                        speed,
                    )
                    if history is not None:
                        await _history(plant, model, history, stats)
                    if ready is not None:
                        ready.set()
                    began = time.monotonic()
                    await _ticks(
                        model, stats, stop, speed, opcua_of, opcua_done, mqtt_of, truth_log
                    )
                    stats.wall_s = time.monotonic() - began
            finally:
                for outlet in mqtt:
                    outlet.close()
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
                for task in late:
                    log.warning("simulate: %s did not finish draining; cancelled", task.get_name())
                    task.cancel()
        stats.ticks, stats.end_ms = model.ticks, model.now_ms
        stats.counter_resets = sum(len(m.resets) for m in model.machines)
        stats.dropped = sum(o.dropped for o in mqtt)
        stats.reconnects = sum(o.reconnects for o in mqtt)
        stats.truth_lines = truth_log.written if truth_log is not None else 0
    log.info("simulate: stopped after %d ticks; events on the wire %s", stats.ticks, stats.events)
    return stats


async def _history(
    plant: PlantConfig, model: PlantModel, history: History, stats: SimulatorStats
) -> None:
    """Step `model` at full speed up to the wall clock, delivering chunk by chunk; the
    clock is read again after each chunk, so the history ends where live ticks begin."""
    began = time.monotonic()
    if history.progress is not None:
        span = describe_span(plant, model.now_ms, _tick_floor(model.tick_ms))
        history.progress(f"plant history: {span} of {len(model.machines)} machines ...")
    while (now := _tick_floor(model.tick_ms)) > model.now_ms:
        chunk: list[Event] = []
        for events in model.steps_until(min(now, model.now_ms + CHUNK_MS), history.tick_ms):
            chunk.extend(events)
        await history.deliver(chunk)
        stats.history_events += len(chunk)
    model.republish()
    stats.history_ticks = model.ticks
    stats.history_s = time.monotonic() - began
    if history.progress is not None:
        history.progress(
            f"plant history: {stats.history_events:,} events done in {stats.history_s:.1f} s"
        )


def _tick_floor(tick_ms: int) -> int:
    """The wall clock now, in epoch ms, on a tick boundary."""
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % tick_ms


async def _connected(
    outlets: list[MqttOutlet], tasks: list[asyncio.Task[None]], stop: asyncio.Event
) -> bool:
    """Wait for every publisher's first connection; False if `stop` came first."""
    waiters = [asyncio.ensure_future(o.connected.wait()) for o in outlets]
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not all(w.done() for w in waiters):
            waiting = [w for w in waiters if not w.done()]
            await asyncio.wait([*waiting, stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() or any(t.done() for t in tasks):
                return False
        return not stop.is_set()
    finally:
        for future in [*waiters, stopper]:
            future.cancel()
        await asyncio.wait([*waiters, stopper])


async def _ticks(
    model: PlantModel,
    stats: SimulatorStats,
    stop: asyncio.Event,
    speed: float,
    opcua_of: dict[str, OpcuaOutlet],
    opcua_done: dict[str, Callable[[list[Event]], None]],
    mqtt_of: dict[str, MqttOutlet],
    truth_log: TruthLog | None,
) -> None:
    loop = asyncio.get_running_loop()
    wall0, ticks0 = loop.time(), model.ticks  # live from here (after any history)
    tick_wall_s = model.tick_ms / 1000.0 / speed
    while not stop.is_set():
        delay = wall0 + (model.ticks - ticks0) * tick_wall_s - loop.time()
        if delay > 0:
            if await wait_set(stop, delay):
                return
        else:
            stats.max_lag_s = max(stats.max_lag_s, -delay)
        events = model.step()
        to_opcua: dict[OpcuaOutlet, list[Event]] = {}
        to_mqtt: dict[MqttOutlet, list[Event]] = {}
        for event in events:
            server = opcua_of.get(event.machine)
            if server is not None:
                to_opcua.setdefault(server, []).append(event)
            else:
                to_mqtt.setdefault(mqtt_of[event.machine], []).append(event)
        for server, batch in to_opcua.items():
            opcua_done[server.source.id](await server.write(batch))
        for outlet, batch in to_mqtt.items():
            outlet.submit(batch)
        if truth_log is not None:
            truth_log.flush()
        await asyncio.sleep(0)  # let the publishers run even while catching up
