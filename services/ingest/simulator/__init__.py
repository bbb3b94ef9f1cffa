"""The equipment simulator behind `linepulse simulate`: a plant's OPC-UA servers and MQTT
publishers driven by a seeded model, with a ground-truth log of every event on the wire.

- `model`: pure, seeded machine behaviour (states, counters, products, analogs).
- `scenario`: coupled lines, speeds and own stops beyond the default behaviour.
- `generate`: a span of the model's events without servers (tests, replay files).
- `layout`: which machine is served where, with which signals, from `plant.sources`.
- `opcua_server`, `mqtt_publisher`, `sparkplug_publisher`: the wire.
- `truth`: the ground-truth JSON-lines log.
- `run`: `run_simulator`, tying them together.
"""

from services.ingest.simulator.generate import simulate_events
from services.ingest.simulator.model import Behaviour, Event, PlantModel
from services.ingest.simulator.run import SimulatorStats, run_simulator
from services.ingest.simulator.scenario import Scenario, Speed, Stops, parse_scenario

__all__ = [
    "Behaviour",
    "Event",
    "PlantModel",
    "Scenario",
    "SimulatorStats",
    "Speed",
    "Stops",
    "parse_scenario",
    "run_simulator",
    "simulate_events",
]
