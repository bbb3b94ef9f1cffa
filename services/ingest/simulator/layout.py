"""Which machine the simulator serves where, and with which signals, from `plant.sources`.

- An OPC-UA machine publishes the signals its `nodes` name; a node called `reason` is not a
  signal but carries the reason of the machine's current stop (see `opcua_server`).
- An MQTT machine publishes `DEFAULT_SIGNALS`, with its configured counters if it names them.
- On an MQTT source with `sparkplug`, the machines its `devices` map are Sparkplug B devices,
  and so are all of its `machines` when it has no JSON `topics`; the others use the first
  topic pattern. A Sparkplug device key `edge/device` names its edge node; a bare `device`
  or an unmapped machine belongs to the edge node named after the source.

A machine on a line but in no source is not simulated: nobody could read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from linepulse.config import PlantConfig
from linepulse.sources import MqttSource, OpcuaMachine
from services.ingest.simulator.model import (
    DEFAULT_COUNTERS,
    DEFAULT_SIGNALS,
    MachineSpec,
    machine_spec,
)

REASON_NODE = "reason"


@dataclass(frozen=True)
class SparkplugDevice:
    machine: str
    edge: str
    device: str


@dataclass(frozen=True)
class Layout:
    """The simulated machines and where each one's events go (by source id)."""

    specs: dict[str, MachineSpec] = field(default_factory=dict)
    source_of: dict[str, str] = field(default_factory=dict)  # machine -> source id
    json_machines: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> machines
    sparkplug: dict[str, tuple[SparkplugDevice, ...]] = field(default_factory=dict)


def opcua_signals(entry: OpcuaMachine) -> tuple[str, ...]:
    return tuple(s for s in entry.nodes if s != REASON_NODE)


def mqtt_signals(plant: PlantConfig, machine: str) -> tuple[str, ...]:
    _, config = plant.machines()[machine]
    counters = config.counters or DEFAULT_COUNTERS
    out: list[str] = []
    for signal in DEFAULT_SIGNALS:
        if signal == "total_count":
            out.extend(counters)
        elif signal not in DEFAULT_COUNTERS:
            out.append(signal)
    return tuple(out)


def sparkplug_devices(source: MqttSource) -> tuple[SparkplugDevice, ...]:
    """The Sparkplug devices of a source, in config order."""
    if source.sparkplug is None:
        return ()
    out: dict[str, SparkplugDevice] = {}
    for key, machine in source.sparkplug.devices.items():
        edge, _, device = key.rpartition("/")
        out.setdefault(machine, SparkplugDevice(machine, edge or source.id, device))
    if not source.topics:
        for machine in source.machines:
            out.setdefault(machine, SparkplugDevice(machine, source.id, machine))
    return tuple(out.values())


def plan(plant: PlantConfig) -> Layout:
    """Decide, once, every simulated machine's signals and destination."""
    machines = plant.machines()
    layout = Layout()

    def add(machine: str, source: str, signals: tuple[str, ...]) -> None:
        line, config = machines[machine]
        layout.specs[machine] = machine_spec(plant, config, line.id, signals)
        layout.source_of[machine] = source

    for opcua in plant.sources.opcua:
        for entry in opcua.machines:
            add(entry.machine, opcua.id, opcua_signals(entry))
    for mqtt in plant.sources.mqtt:
        devices = sparkplug_devices(mqtt)
        on_sparkplug = {d.machine for d in devices}
        for device in devices:
            add(device.machine, mqtt.id, mqtt_signals(plant, device.machine))
        if devices:
            layout.sparkplug[mqtt.id] = devices
        if mqtt.topics:
            plain = tuple(m for m in mqtt.machines if m not in on_sparkplug)
            for machine in plain:
                add(machine, mqtt.id, mqtt_signals(plant, machine))
            layout.json_machines[mqtt.id] = plain
    return layout
