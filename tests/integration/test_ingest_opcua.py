"""The OPC-UA ingester against a real asyncua server (tests/integration/opcua_server.py).

The server plays a PLC and stamps every value with the SourceTimestamp and StatusCode the
test chooses; the ingester's sink must receive exactly those readings. A restart test
swaps in a new server instance on the same port (a PLC reboot), and a security test runs
a server that only speaks SignAndEncrypt (Basic256Sha256) with username/password users.
Waits poll with generous timeouts; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
from linepulse.events import source_value
from linepulse.runtime import free_loopback_ports
from services.ingest.metrics import IngestMetrics
from services.ingest.opcua import OpcuaIngester
from services.ingest.opcua_values import epoch_ms
from tests.integration.opcua_server import (
    CLIENT_URI,
    PlcServer,
    ServerSecurity,
    Variable,
    machine_variables,
    make_certificate,
)
from tests.integration.tcp_cut import TcpCut
from tests.list_sink import ListSink

pytestmark = pytest.mark.integration

WAIT_S = 60.0
Row = tuple[str, str, object, int, str]  # machine, signal, value, ts ms, quality


class CollectingSink(ListSink):
    """The Kafka side as a list: every frame and dead letter the ingester hands over."""

    def rows(self) -> list[Row]:
        out: list[Row] = []
        for frame in self.frames:
            for row in frame.iter_rows(named=True):
                value = source_value(row["value_num"], row["value_int"], row["value_str"])
                out.append((row["machine"], row["signal"], value, row["ts"], row["quality"]))
        return out

    def of(self, machine: str, signal: str) -> list[Row]:
        return [r for r in self.rows() if r[0] == machine and r[1] == signal]


async def until(check: Callable[[], bool], what: str, patience: float = WAIT_S) -> None:
    """Poll `check` until it holds; fail naming `what` after `patience` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {patience:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(ingester: OpcuaIngester) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop), name=f"ingest-{ingester.source.id}")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def plant(
    sources: list[dict[str, Any]],
    machines: tuple[str, ...] = ("press-1", "press-2"),
    state_dir: Path | None = None,
) -> PlantConfig:
    """A plant of the given OPC-UA sources; the nodes' marks (history backfill) in
    `state_dir`, by default a folder of the test's own (never the current directory)."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="lp-opcua-state-"))
    return parse_config(
        {
            "site": "test",
            "lines": [{"id": "line-1", "machines": [{"id": m} for m in machines]}],
            "sources": {"opcua": sources},
            "ingest": {"batch_samples": 500, "state_dir": str(state)},
        }
    )


def source(sid: str, endpoint: str, machines: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "endpoint": endpoint,
        "publishing_interval_ms": 50,
        "sampling_interval_ms": 0,
        "queue_size": 1000,
        "timeout_s": 5,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
        "machines": machines,
        **extra,
    }


def by_node_id(machine: str, **signals: str) -> dict[str, Any]:
    return {"machine": machine, "nodes": {s: f"ns=2;s={machine}.{n}" for s, n in signals.items()}}


def ms(moment: datetime) -> int:
    """Epoch ms of a SourceTimestamp as the ingester stamps it: floored, never rounded."""
    return epoch_ms(moment)


EXTRA = [
    Variable("Label", ua.LocalizedText("ok"), ua.VariantType.LocalizedText),
    Variable("Profile", [1.0, 2.0], ua.VariantType.Double),
]


async def test_values_arrive_with_source_time_quality_and_browse_paths() -> None:
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables() + EXTRA, "press-2": machine_variables()})
    press_1 = by_node_id(
        "press-1",
        state="State",
        total_count="TotalCount",
        temperature="Temperature",
        product="Product",
        label="Label",
        profile="Profile",
    )
    press_2 = {
        "machine": "press-2",
        "nodes": {
            "state": {"browse_path": "2:Plant/2:press-2/2:State"},
            "total_count": {"browse_path": "2:Plant/2:press-2/2:TotalCount"},
            "missing": {"browse_path": "2:Plant/2:press-2/2:NoSuchTag"},
        },
    }
    config = plant([source("plc-1", plc.endpoint, [press_1, press_2])])
    sink = CollectingSink()
    metrics = IngestMetrics.create(CollectorRegistry())
    ingester = OpcuaIngester(config.sources.opcua[0], config, sink, metrics)
    try:
        async with running(ingester):
            # The baseline: the current value of every node, read once on connect.
            await until(lambda: ingester.connected and len(sink.rows()) >= 7, "the baseline")
            baseline = {(m, s, v) for m, s, v, _, _ in sink.rows()}
            assert baseline == {
                ("press-1", "state", 0.0),
                ("press-1", "total_count", 0.0),
                ("press-1", "temperature", 20.0),
                ("press-1", "product", "sku-a"),
                ("press-1", "label", "ok"),
                ("press-2", "state", 0.0),
                ("press-2", "total_count", 0.0),
            }
            # The array node's current value is a dead letter, with its reason and node.
            assert [(d.source, d.reason) for d in sink.letters] == [
                (
                    "plc-1:press-1/profile (ns=2;s=press-1.Profile)",
                    "profile: arrays are not supported (Double[])",
                ),
            ]
            before = len(sink.rows())
            t0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
            good, uncertain, bad = (
                StatusCodes.Good,
                StatusCodes.UncertainLastUsableValue,
                StatusCodes.BadSensorFailure,
            )
            writes: list[tuple[str, str, object, ua.VariantType, int, int, str]] = [
                # machine, name, value, type, ms after t0, status, expected quality
                ("press-1", "State", 6, ua.VariantType.Int32, 0, good, "good"),
                ("press-1", "TotalCount", 1, ua.VariantType.UInt32, 10, good, "good"),
                ("press-1", "TotalCount", 2, ua.VariantType.UInt32, 20, good, "good"),
                ("press-1", "Temperature", 21.5, ua.VariantType.Double, 30, good, "good"),
                ("press-1", "Temperature", 21.5, ua.VariantType.Double, 40, uncertain, "uncertain"),
                # asyncua's server sends no value with a Bad status: a dead letter, below.
                ("press-1", "Temperature", 99.0, ua.VariantType.Double, 50, bad, "bad"),
                ("press-1", "Product", "sku-b", ua.VariantType.String, 60, good, "good"),
                (
                    "press-1",
                    "Label",
                    ua.LocalizedText("warm"),
                    ua.VariantType.LocalizedText,
                    70,
                    good,
                    "good",
                ),
                ("press-2", "State", 2, ua.VariantType.Int32, 80, good, "good"),
                ("press-2", "TotalCount", 7, ua.VariantType.UInt32, 90, good, "good"),
                ("press-1", "State", 4, ua.VariantType.Int32, 100, good, "good"),
                ("press-1", "TotalCount", 3, ua.VariantType.UInt32, 110, good, "good"),
            ]
            signal = {
                "State": "state",
                "TotalCount": "total_count",
                "Temperature": "temperature",
                "Product": "product",
                "Label": "label",
            }
            expected: list[Row] = []
            for machine, name, value, kind, offset, status, quality in writes:
                stamp = t0 + timedelta(milliseconds=offset)
                await plc.write(f"{machine}.{name}", value, kind, stamp, status)
                plain = value.Text if isinstance(value, ua.LocalizedText) else value
                shown = plain if isinstance(plain, str) else float(plain)  # type: ignore[arg-type]
                if status != bad:
                    expected.append((machine, signal[name], shown, ms(stamp), quality))
            await plc.write("press-1.Profile", [3.0], ua.VariantType.Double, t0, good)
            await until(lambda: len(sink.rows()) >= before + len(expected), "the written values")
            await until(lambda: len(sink.letters) == 3, "the dead letters")
            got = sorted(sink.rows()[before:], key=lambda r: r[3])
            assert got == expected
            assert sorted(d.reason for d in sink.letters[1:]) == [
                "profile: arrays are not supported (Double[])",
                "temperature: status BadSensorFailure without a value",
            ]
        registry_events = metrics.events_in.labels("plc-1")._value.get()
        assert registry_events == len(sink.rows())
        assert metrics.rejected.labels("plc-1", "profile")._value.get() == 2
        assert metrics.rejected.labels("plc-1", "temperature")._value.get() == 1
        assert metrics.connected.labels("plc-1")._value.get() == 0  # after shutdown
    finally:
        await plc.stop()


async def test_deadband_suppresses_small_analog_changes() -> None:
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables(analog=20.0)})
    machine = {
        "machine": "press-1",
        "nodes": {
            "temperature": {"node_id": "ns=2;s=press-1.Temperature", "deadband": 0.5},
            # A deadband on a counter is ignored: every step must arrive.
            "total_count": {"node_id": "ns=2;s=press-1.TotalCount", "deadband": 5},
        },
    }
    config = plant([source("plc-1", plc.endpoint, [machine])], machines=("press-1",))
    sink = CollectingSink()
    ingester = OpcuaIngester(
        config.sources.opcua[0], config, sink, IngestMetrics.create(CollectorRegistry())
    )
    try:
        async with running(ingester):
            await until(lambda: ingester.connected and len(sink.rows()) >= 2, "the baseline")
            t0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
            temps = [20.2, 20.4, 21.0, 21.3, 19.0]
            for i, temp in enumerate(temps):
                stamp = t0 + timedelta(seconds=i)
                await plc.write("press-1.Temperature", temp, ua.VariantType.Double, stamp)
                await plc.write("press-1.TotalCount", i + 1, ua.VariantType.UInt32, stamp)
            await until(
                lambda: any(r[2] == float(len(temps)) for r in sink.of("press-1", "total_count")),
                "the last counter step",
            )
            await until(
                lambda: any(r[2] == 19.0 for r in sink.of("press-1", "temperature")),
                "the last large analog change",
            )
        temperature = [r[2] for r in sink.of("press-1", "temperature")]
        counts = [r[2] for r in sink.of("press-1", "total_count")]
        assert temperature == [20.0, 21.0, 19.0]  # 0.2 and 0.3 steps are inside the band
        assert counts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        await plc.stop()


@dataclass
class Writer:
    """Writes press-1's counter every few ms, to whichever server instance is up, and
    remembers what it wrote where and whether the ingester was connected at the time."""

    plc: PlcServer | None
    ingester: OpcuaIngester
    count: int = 0
    written: list[tuple[int, int, int, bool]] = field(default_factory=list)  # gen, n, ms, conn
    generation: int = 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            plc = self.plc
            if plc is not None:
                n = self.count + 1
                stamp = datetime.now(UTC)
                connected = self.ingester.connected
                await plc.write("press-1.TotalCount", n, ua.VariantType.UInt32, stamp)
                self.count = n
                self.written.append((self.generation, n, ms(stamp), connected))
            await asyncio.sleep(0.01)


async def test_server_restart_marks_unknown_reconnects_and_loses_nothing() -> None:
    (port,) = free_loopback_ports(1)
    first = PlcServer(port)
    await first.start({"press-1": machine_variables(), "press-2": machine_variables()})
    machines = [
        by_node_id(m, state="State", total_count="TotalCount") for m in ("press-1", "press-2")
    ]
    config = plant([source("plc-1", first.endpoint, machines)])
    sink = CollectingSink()
    metrics = IngestMetrics.create(CollectorRegistry())
    ingester = OpcuaIngester(config.sources.opcua[0], config, sink, metrics)
    writer = Writer(first, ingester)
    writing = asyncio.Event()
    second: PlcServer | None = None
    try:
        async with running(ingester):
            await until(lambda: ingester.connected, "the first connection")
            writer_task = asyncio.create_task(writer.run(writing), name="writer")
            await until(lambda: len(sink.of("press-1", "total_count")) >= 30, "values before")
            # The PLC reboots while values are being written.
            writer.plc = None
            await first.stop()
            await until(lambda: not ingester.connected, "the loss to be detected")
            second = PlcServer(port)
            last = writer.count
            await second.start({"press-1": machine_variables(), "press-2": machine_variables()})
            await second.write("press-1.TotalCount", last, ua.VariantType.UInt32, datetime.now(UTC))
            # press-2 kept its state through the reboot, stamped long before the loss.
            kept = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
            await second.write("press-2.State", 6, ua.VariantType.Int32, kept)
            writer.generation, writer.plc = 2, second
            await until(lambda: ingester.connected, "the reconnection")
            await until(
                lambda: sum(1 for w in writer.written if w[0] == 2 and w[3]) >= 30,
                "values written after the reconnection",
            )
            writing.set()
            await writer_task
            final = writer.count
            await until(
                lambda: any(r[2] == float(final) for r in sink.of("press-1", "total_count")),
                "the last value written",
            )
        rows = sink.rows()
        unknown = [i for i, r in enumerate(rows) if r[1] == "state" and r[2] == "unknown"]
        assert sorted(rows[i][0] for i in unknown) == ["press-1", "press-2"]
        cut = unknown[0]
        counts_before = [r for r in rows[:cut] if r[:2] == ("press-1", "total_count")]
        counts_after = [r for r in rows[cut:] if r[:2] == ("press-1", "total_count")]
        # Before the loss: the baseline 0, then a gap-free prefix of what went to server 1
        # (its last few values may die with it before they are published).
        first_gen = [(n, t) for g, n, t, _ in writer.written if g == 1]
        got_before = [(int(v), t) for _, _, v, t, _ in counts_before[1:]]  # type: ignore[call-overload]
        assert counts_before[0][2] == 0.0
        assert got_before == first_gen[: len(got_before)]
        # The loss is stamped after the last value received and before the next one.
        loss_ms = rows[cut][3]
        assert counts_before[-1][3] <= loss_ms <= counts_after[0][3]
        # After: the current value read on reconnect, then everything server 2 was given.
        second_gen = [(n, t) for g, n, t, _ in writer.written if g == 2]
        values_after = [int(v) for _, _, v, _, _ in counts_after]  # type: ignore[call-overload]
        start = values_after[0]
        assert values_after == list(range(start, final + 1))
        assert start <= min(n for g, n, _, conn in writer.written if g == 2 and conn)
        after_times = {int(v): t for _, _, v, t, _ in counts_after}  # type: ignore[call-overload]
        for n, t in second_gen:
            if n > start:
                assert after_times[n] == t
        # State resumes from the fresh baseline after `unknown`; a state stamped before the
        # loss is the current state on reconnect, so it is stamped when it was read.
        press_1 = [r for r in rows[cut:] if r[:2] == ("press-1", "state")]
        press_2 = [r for r in rows[cut:] if r[:2] == ("press-2", "state")]
        assert [r[2] for r in press_1] == ["unknown", 0.0]
        assert [r[2] for r in press_2] == ["unknown", 6.0]
        assert press_2[1][3] > press_2[0][3] > ms(kept)
        assert metrics.reconnects.labels("plc-1")._value.get() == 1
    finally:
        writing.set()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_security_rejects_wrong_settings_and_accepts_cert_and_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest.opcua")
    server_cert, server_key = make_certificate(
        tmp_path / "server", "test-plc", "urn:linepulse:test-plc:server", server=True
    )
    client_cert, client_key = make_certificate(
        tmp_path / "client", "ingest", CLIENT_URI, server=False
    )
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n", encoding="utf-8")
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port, ServerSecurity(server_cert, server_key, {"ingest": "s3cret"}))
    await plc.start({"press-1": machine_variables()})
    machine = [by_node_id("press-1", state="State", total_count="TotalCount")]
    secure = {
        "mode": "SignAndEncrypt",
        "policy": "Basic256Sha256",
        "certificate": str(client_cert),
        "private_key": str(client_key),
    }
    sources = [
        source(
            "no-security",
            plc.endpoint,
            machine,
            credentials={"username": "ingest", "password": "s3cret"},
        ),
        source(
            "wrong-password",
            plc.endpoint,
            machine,
            security=secure,
            credentials={"username": "ingest", "password": "guess"},
        ),
        source("no-user", plc.endpoint, machine, security=secure),
        source(
            "right",
            plc.endpoint,
            machine,
            security=secure,
            credentials={"username": "ingest", "password_file": str(password_file)},
        ),
    ]
    # One plant per source: a machine is read from one source in a plant config.
    ingesters = {}
    for spec in sources:
        config = plant([spec], machines=("press-1",))
        ingesters[spec["id"]] = OpcuaIngester(
            config.sources.opcua[0],
            config,
            CollectingSink(),
            IngestMetrics.create(CollectorRegistry()),
        )

    def sink_of(sid: str) -> CollectingSink:
        sink = ingesters[sid].sink
        assert isinstance(sink, CollectingSink)
        return sink

    def failures(sid: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(f"opcua {sid}: cannot connect to {plc.endpoint}")
        ]

    def retried(sid: str) -> bool:
        return len(failures(sid)) >= 3

    try:
        async with (
            running(ingesters["no-security"]) as t1,
            running(ingesters["wrong-password"]) as t2,
            running(ingesters["no-user"]) as t3,
            running(ingesters["right"]),
        ):
            await until(lambda: ingesters["right"].connected, "the secure connection")
            stamp = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
            await plc.write("press-1.TotalCount", 42, ua.VariantType.UInt32, stamp)
            await until(
                lambda: (
                    ("press-1", "total_count", 42.0, ms(stamp), "good") in sink_of("right").rows()
                ),
                "data over the secure session",
            )
            for sid in ("no-security", "wrong-password", "no-user"):
                await until(partial(retried, sid), f"{sid} to retry")
            # Still running: a refusal is logged and retried, never a crash.
            assert not t1.done()
            assert not t2.done()
            assert not t3.done()
        for sid in ("no-security", "wrong-password", "no-user"):
            # Only the `unknown` marker: nothing from the server got through.
            assert [r[1:3] for r in sink_of(sid).rows()] == [("state", "unknown")]
            assert not ingesters[sid].connected
        # Each log line names the endpoint, the settings and the reason.
        assert (
            "(security None, user ingest): the server offers no endpoint for this security "
            "mode" in failures("no-security")[0]
        )
        assert (
            "(security SignAndEncrypt, user ingest): the server rejected the user (wrong "
            "username or password)" in failures("wrong-password")[0]
        )
        assert (
            "(security SignAndEncrypt, user anonymous): the server rejected the identity "
            "token" in failures("no-user")[0]
        )
    finally:
        await plc.stop()


async def test_stop_while_the_server_is_away_returns_and_marks_unknown_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.ingest.opcua")
    (port,) = free_loopback_ports(1)  # nothing listens here
    endpoint = f"opc.tcp://127.0.0.1:{port}/plc/"
    config = plant([source("plc-1", endpoint, [by_node_id("press-1", state="State")])])
    sink = CollectingSink()
    metrics = IngestMetrics.create(CollectorRegistry())
    ingester = OpcuaIngester(config.sources.opcua[0], config, sink, metrics)

    def retries() -> list[str]:
        return [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]

    async with running(ingester) as task:
        await until(lambda: len(retries()) >= 3, "three retries")
        assert not task.done()
    # `running` has set stop and awaited run(): it returned, with the marker flushed.
    # Only the endpoint's machine, once for the whole outage.
    assert [r[:3] for r in sink.rows()] == [("press-1", "state", "unknown")]
    assert retries()[:3] == [
        f"opcua plc-1: retrying {endpoint} in 0.2 s",
        f"opcua plc-1: retrying {endpoint} in 0.4 s",
        f"opcua plc-1: retrying {endpoint} in 0.8 s",
    ]
    assert "connection refused" in caplog.text
    assert metrics.connected.labels("plc-1")._value.get() == 0


async def test_values_with_no_reading_or_no_source_time_are_withheld_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not emitted, not dead letters either (they are not bad input): BadWaitingForInitialData
    and values without a SourceTimestamp are counted by reason and logged once per node."""
    caplog.set_level(logging.INFO, logger="services.ingest.opcua")
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables()})
    machine = by_node_id("press-1", state="State", total_count="TotalCount")
    config = plant([source("plc-1", plc.endpoint, [machine])], machines=("press-1",))
    sink = CollectingSink()
    metrics = IngestMetrics.create(CollectorRegistry())
    ingester = OpcuaIngester(config.sources.opcua[0], config, sink, metrics)
    t0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    try:
        async with running(ingester):
            await until(lambda: ingester.connected and len(sink.rows()) >= 2, "the baseline")
            before = len(sink.rows())
            waiting = StatusCodes.BadWaitingForInitialData
            await plc.write("press-1.TotalCount", None, ua.VariantType.Null, t0, waiting)
            await plc.write("press-1.State", 6, ua.VariantType.Int32, None)  # no source time
            await plc.write("press-1.State", 5, ua.VariantType.Int32, None)
            stamped = t0 + timedelta(milliseconds=10)
            await plc.write("press-1.State", 4, ua.VariantType.Int32, stamped)
            await until(lambda: len(sink.rows()) > before, "the stamped value")
        assert sink.rows()[before:] == [("press-1", "state", 4, ms(stamped), "good")]
        assert sink.letters == []
        withheld = metrics.withheld.labels
        assert withheld("plc-1", "no_source_timestamp")._value.get() == 2
        assert withheld("plc-1", "waiting_for_initial_data")._value.get() == 1
        assert sum(1 for r in caplog.records if "without a SourceTimestamp" in r.getMessage()) == 1
        assert sum(1 for r in caplog.records if "has no value yet" in r.getMessage()) == 1
    finally:
        await plc.stop()


def _last_is(sink: CollectingSink, value: int) -> bool:
    return sink.rows()[-1][2] == value


async def test_a_value_read_at_first_start_sorts_before_a_slow_clocks_next_readings() -> None:
    """A PLC whose clock is 5 s behind ours: the counter value read at the first connect
    (unchanged for a minute, so stamped anew) must not be stamped ahead of the PLC's next
    readings, or the counter steps back in event time (found with `linepulse simulate`
    started before the ingester)."""
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables()})
    now = datetime.now(UTC)
    await plc.write("press-1.TotalCount", 1000, ua.VariantType.UInt32, now - timedelta(seconds=60))
    machine = by_node_id("press-1", total_count="TotalCount")
    config = plant([source("plc-1", plc.endpoint, [machine])], machines=("press-1",))
    sink = CollectingSink()
    metrics = IngestMetrics.create(CollectorRegistry())
    ingester = OpcuaIngester(config.sources.opcua[0], config, sink, metrics)
    try:
        async with running(ingester):
            await until(lambda: ingester.connected and len(sink.rows()) >= 1, "the baseline")
            for value, behind_s in ((1001, 5.0), (1002, 4.0)):
                stamped = datetime.now(UTC) - timedelta(seconds=behind_s)
                await plc.write("press-1.TotalCount", value, ua.VariantType.UInt32, stamped)
                await until(partial(_last_is, sink, value), f"reading {value}")
    finally:
        await plc.stop()
    readings = sorted((ts, value) for _, _, value, ts, _ in sink.of("press-1", "total_count"))
    assert [value for _, value in readings] == [1000, 1001, 1002]


async def test_a_restarted_ingester_backfills_the_gap_from_the_servers_history(
    tmp_path: Path,
) -> None:
    """Issue 19, item 3: changes made while the ingester was stopped reach the sink from the
    server's history (HistoryRead), in order and with their own times, before the live
    values; a node without history keeps today's behaviour (its current value only)."""
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables()})
    await plc.historize("press-1.TotalCount", "press-1.State")  # not Temperature
    spec = source(
        "plc-1",
        plc.endpoint,
        [by_node_id("press-1", state="State", total_count="TotalCount", temperature="Temperature")],
    )
    config = plant([spec], machines=("press-1",), state_dir=tmp_path / "state")
    t0 = datetime.now(UTC)  # after the variables' first values

    def at(i: int) -> datetime:
        return t0 + timedelta(milliseconds=250 * i)

    try:
        first = CollectingSink()
        metrics = IngestMetrics.create(CollectorRegistry())
        ingester = OpcuaIngester(config.sources.opcua[0], config, first, metrics)
        async with running(ingester):
            await until(lambda: ingester.connected, "the first connect")
            for i in range(1, 6):
                await plc.write("press-1.TotalCount", i, ua.VariantType.UInt32, at(i))
            await until(lambda: (ms(at(5)), 5.0) in counts(first), "count 5 before the stop")
        assert (tmp_path / "state" / "opcua-plc-1.json").exists()  # the marks, saved at stop
        # Stopped: the PLC goes on counting, stops once, and the temperature moves. asyncua's
        # historian samples its nodes (a PLC's records every change): writes 50 ms apart.
        for i in range(6, 21):
            await plc.write("press-1.TotalCount", i, ua.VariantType.UInt32, at(i))
            if i == 12:
                await plc.write("press-1.State", 3, ua.VariantType.Int32, at(12))  # stopped
            if i == 14:
                await plc.write("press-1.Temperature", 30.0, ua.VariantType.Double, at(14))
            if i == 16:
                await plc.write("press-1.State", 1, ua.VariantType.Int32, at(16))  # running
            if i == 18:
                await plc.write("press-1.Temperature", 31.0, ua.VariantType.Double, at(18))
            await asyncio.sleep(0.05)
        second = CollectingSink()
        registry = CollectorRegistry()
        metrics = IngestMetrics.create(registry)
        async with running(OpcuaIngester(config.sources.opcua[0], config, second, metrics)):
            await until(lambda: (ms(at(20)), 20.0) in counts(second), "count 20 after the start")
        got = counts(second)
        assert [c for c in got if c[1] > 5] == [(ms(at(i)), float(i)) for i in range(6, 21)]
        states = [(ts, value) for _, _, value, ts, _ in second.of("press-1", "state")]
        assert (ms(at(12)), 3) in states
        assert (ms(at(16)), 1) in states
        # No history for the temperature: only its current value, as before.
        temperatures = [value for _, _, value, _, _ in second.of("press-1", "temperature")]
        assert 30.0 not in temperatures
        assert temperatures[-1] == 31.0
        backfilled = registry.get_sample_value(
            "linepulse_ingest_backfilled_total", {"source": "plc-1"}
        )
        assert backfilled is not None
        assert backfilled >= 15 + 2  # the counts and the two state changes
    finally:
        await plc.stop()


def counts(sink: CollectingSink) -> list[tuple[int, float]]:
    return [(ts, float(str(value))) for _, _, value, ts, _ in sink.of("press-1", "total_count")]


async def test_a_connection_lost_and_back_is_filled_from_history_as_it_happened(
    tmp_path: Path,
) -> None:
    """The network between ingester and server fails for a while (the server and its
    history stay up): the machine is `unknown` from the loss, then stated again 1 ms later
    as it was, and every change the server recorded meanwhile arrives with its own time."""
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port)
    await plc.start({"press-1": machine_variables()})
    await plc.historize("press-1.TotalCount", "press-1.State")
    relay = TcpCut(port)
    await relay.mend()
    endpoint = f"opc.tcp://127.0.0.1:{relay.port}/plc/"
    spec = source(
        "plc-1", endpoint, [by_node_id("press-1", state="State", total_count="TotalCount")]
    )
    config = plant([spec], machines=("press-1",), state_dir=tmp_path / "state")
    sink = CollectingSink()
    ingester = OpcuaIngester(
        config.sources.opcua[0], config, sink, IngestMetrics.create(CollectorRegistry())
    )
    t0 = datetime.now(UTC)

    def at(i: int) -> datetime:
        return t0 + timedelta(milliseconds=100 * i)

    try:
        async with running(ingester):
            await until(lambda: ingester.connected, "the first connect")
            await plc.write("press-1.State", 1, ua.VariantType.Int32, at(1))  # running
            for i in range(2, 5):
                await plc.write("press-1.TotalCount", i, ua.VariantType.UInt32, at(i))
                await asyncio.sleep(0.05)
            await until(lambda: (ms(at(4)), 4.0) in counts(sink), "count 4 before the cut")
            await relay.cut()
            await until(lambda: not ingester.connected, "the loss noticed", patience=60)
            for i in range(5, 12):
                await plc.write("press-1.TotalCount", i, ua.VariantType.UInt32, at(i))
                if i == 8:
                    await plc.write("press-1.State", 3, ua.VariantType.Int32, at(8))  # stopped
                await asyncio.sleep(0.05)
            await relay.mend()
            await until(lambda: (ms(at(11)), 11.0) in counts(sink), "count 11 after the cut")
        assert [c for c in counts(sink) if c[1] >= 5] == [
            (ms(at(i)), float(i)) for i in range(5, 12)
        ]
        states = [(ts, value) for _, _, value, ts, _ in sink.of("press-1", "state")]
        marks = [ts for ts, value in states if value == "unknown"]
        assert len(marks) == 1, states
        # Running again 1 ms after the mark (as it was), then the stop when it happened.
        assert (marks[0] + 1, 1) in states, states
        assert (ms(at(8)), 3) in states, states
    finally:
        await relay.cut()
        await plc.stop()
