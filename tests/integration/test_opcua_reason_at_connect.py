"""A machine that is already stopped when the ingester connects keeps its stop's reason:
the baseline Read takes a machine's `reason` node before its `state`, as a publish does.
Found by the soak test (bench/soak.py): the config lists `state` before `reason`, so the
baseline's state sample went out without it, and the stop counted as `unassigned`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from prometheus_client import CollectorRegistry

from linepulse.runtime import free_loopback_ports
from services.ingest.metrics import IngestMetrics
from services.ingest.opcua import OpcuaIngester
from tests.integration.opcua_server import PlcServer, Variable
from tests.integration.test_ingest_opcua import (
    CollectingSink,
    by_node_id,
    plant,
    running,
    source,
    until,
)

pytestmark = pytest.mark.integration


async def test_a_stop_under_way_at_connect_keeps_its_reason() -> None:
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start(
        {
            "press-1": [
                Variable("State", "running", ua.VariantType.String),
                Variable("StopReason", "", ua.VariantType.String),
            ]
        }
    )
    # The PLC stamps the state and the reason of one stop with the same SourceTimestamp.
    stopped = datetime.now(UTC) - timedelta(seconds=2)
    await plc.write("press-1.StopReason", "jam", ua.VariantType.String, stopped)
    await plc.write("press-1.State", "down", ua.VariantType.String, stopped)
    config = plant(
        [
            source(
                "plc-1", plc.endpoint, [by_node_id("press-1", state="State", reason="StopReason")]
            )
        ],
        machines=("press-1",),
    )
    sink = CollectingSink()
    ingester = OpcuaIngester(
        config.sources.opcua[0], config, sink, IngestMetrics.create(CollectorRegistry())
    )
    try:
        async with running(ingester):
            await until(lambda: bool(sink.of("press-1", "state")), "the baseline state")
    finally:
        await plc.stop()
    states = [
        (row["value_str"], row["reason"])
        for frame in sink.frames
        for row in frame.iter_rows(named=True)
        if row["signal"] == "state"
    ]
    assert states[0] == ("down", "jam")
    assert not sink.of("press-1", "reason")  # not a signal of its own
