"""A synthetic plant for load tests: N machines with K analog tags each, on one source.

Analog tags change every tick, so the simulator writes about
`machines × (analogs + 1) / tick_s` values per second (the +1: counters and states now and
then). The bench drives the rate with `machines`, `analogs` and `run_simulator(tick_s=...)`.
"""

from __future__ import annotations

from typing import Any

from linepulse.config import PlantConfig, parse_config


def synthetic_plant(
    *,
    machines: int,
    analogs: int,
    opcua_endpoint: str | None = None,
    mqtt_port: int | None = None,
    sparkplug_group: str | None = None,
) -> PlantConfig:
    """Machines `m0000`... on line `bench`, served by OPC-UA (`ns=2;s=m0000.a0` ...) when
    `opcua_endpoint` is given, else by MQTT JSON topics `bench/{line}/{machine}/{signal}` (or
    as Sparkplug B devices of `sparkplug_group`) on 127.0.0.1:`mqtt_port`. MQTT machines
    publish the model's default signals; `analogs` applies to OPC-UA machines only."""
    if machines < 1 or analogs < 0:
        raise ValueError("machines must be >= 1 and analogs >= 0")
    ids = [f"m{i:04d}" for i in range(machines)]
    signals = ["state", "total_count", "reject_count", *(f"a{j}" for j in range(analogs))]
    sources: dict[str, Any] = {}
    if opcua_endpoint is not None:
        sources["opcua"] = [
            {
                "id": "bench-opcua",
                "endpoint": opcua_endpoint,
                "machines": [
                    {"machine": m, "nodes": {s: f"ns=2;s={m}.{s}" for s in signals}} for m in ids
                ],
            }
        ]
    elif mqtt_port is not None:
        source: dict[str, Any] = {"id": "bench-mqtt", "port": mqtt_port, "machines": ids}
        if sparkplug_group is not None:
            source["sparkplug"] = {"group": sparkplug_group}
        else:
            source["topics"] = [{"pattern": "bench/{line}/{machine}/{signal}"}]
        sources["mqtt"] = [source]
    else:
        raise ValueError("give opcua_endpoint or mqtt_port")
    return parse_config(
        {
            "site": "bench",
            "lines": [
                {"id": "bench", "machines": [{"id": m, "ideal_cycle_time_s": 1.0} for m in ids]}
            ],
            "sources": sources,
        }
    )
