"""When the KPI publisher sends open-window records, on the in-process bus with a clock the
test moves: a changed record goes out at once or within its kind's cadence, the changes in
between coalesce (the latest wins), a shift record keeps its slower cadence, finals go out
at once and replace their key's waiting open record, and `force` sends everything."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.config import KafkaSettings, PlantConfig, WindowKind
from services.kpi.metrics import KpiMetrics
from services.kpi.publisher import KpiPublisher, WorkerStats
from tests.telemetry_samples import four_line_plant

KPI_PARTITIONS = 2
START = {"1m": "2026-11-02T06:00:00Z", "shift": "2026-11-02T06:00:00Z"}


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(
    window: WindowKind, total: int, *, final: bool = False, machine: str = "m0-0"
) -> dict[str, Any]:
    return {
        "line": "line-0",
        "machine": machine,
        "window": window,
        "window_start": START.get(window, "2026-11-02T06:00:00Z"),
        "final": final,
        "total_count": total,
    }


class Bench:
    """A publisher on a started in-process producer, and what reached the kpi topic."""

    def __init__(self, kafka: KafkaSettings | None = None) -> None:
        plant: PlantConfig = four_line_plant("publisher-test", 1)
        self.kafka = kafka or plant.kafka
        self.broker = InProcessBroker()
        self.broker.create_topic(self.kafka.kpi.name, KPI_PARTITIONS)
        self.producer = InProcessClients(self.broker).producer()
        self.clock = Clock()
        metrics = KpiMetrics.create(CollectorRegistry(), plant)
        self.publisher = KpiPublisher(
            self.producer, self.kafka, KPI_PARTITIONS, metrics, WorkerStats(), clock=self.clock
        )

    async def __aenter__(self) -> Bench:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def at(self, now: float, *records: dict[str, Any]) -> None:
        """At `now`: the step's records handed over, then the loop's publishing pass."""
        self.clock.now = now
        await self.publisher.records(list(records))
        await self.publisher.publish_due_open()

    def sent(self) -> list[tuple[str, bool, int]]:
        """(window, final, total_count) of every record on the kpi topic, in send order
        per partition (one key stays on one partition)."""
        out = []
        for partition in range(KPI_PARTITIONS):
            for stored in self.broker.log(self.kafka.kpi.name, partition):
                value = orjson.loads(stored.value or b"null")
                out.append((value["window"], value["final"], value["total_count"]))
        return out


async def test_a_change_goes_out_at_once_then_within_the_deadline_latest_wins() -> None:
    async with Bench() as bench:
        await bench.at(0.0, record("1m", 1))
        assert bench.sent() == [("1m", False, 1)]  # nothing sent for a deadline: at once
        await bench.at(0.05, record("1m", 2))
        await bench.at(0.1, record("1m", 3))
        assert bench.sent() == [("1m", False, 1)]
        assert bench.publisher.open_due_in() == pytest.approx(0.1)
        await bench.at(0.2)
        assert bench.sent() == [("1m", False, 1), ("1m", False, 3)]
        assert bench.publisher.open_due_in() is None  # nothing waits


async def test_each_kind_keeps_its_cadence() -> None:
    # A deadline of 0.25 s: its multiples are exact in binary, as 0.2's are not.
    kafka = KafkaSettings.model_validate({"open_deadline_s": 0.25})
    async with Bench(kafka) as bench:
        assert bench.kafka.open_cadence("shift") == 5.0  # the default
        await bench.at(0.0, record("1m", 1), record("shift", 1))
        for tick in range(1, 20):  # a change of both every 0.25 s for 4.75 s
            await bench.at(tick * 0.25, record("1m", tick + 1), record("shift", tick + 1))
        assert [s for s in bench.sent() if s[0] == "shift"] == [("shift", False, 1)]
        assert len([s for s in bench.sent() if s[0] == "1m"]) == 20  # every deadline
        assert bench.publisher.open_due_in() == pytest.approx(0.25)
        await bench.at(5.0)
        assert [s for s in bench.sent() if s[0] == "shift"] == [
            ("shift", False, 1),
            ("shift", False, 20),
        ]


async def test_a_final_goes_out_at_once_and_replaces_the_waiting_open_record() -> None:
    async with Bench() as bench:
        await bench.at(0.0, record("shift", 1))
        await bench.at(1.0, record("shift", 2))  # waits for the cadence
        bench.clock.now = 1.5
        await bench.publisher.records([record("shift", 3, final=True)])
        assert bench.sent() == [("shift", False, 1), ("shift", True, 3)]
        await bench.at(10.0)  # the open record it replaced never follows it
        assert bench.sent() == [("shift", False, 1), ("shift", True, 3)]


async def test_force_sends_every_waiting_record_whatever_its_cadence() -> None:
    async with Bench() as bench:
        await bench.at(0.0, record("1m", 1), record("shift", 1))
        await bench.at(0.1, record("1m", 2), record("shift", 2), record("shift", 1, machine="m0-1"))
        assert len(bench.sent()) == 2
        await bench.publisher.publish_due_open(force=True)
        assert sorted(bench.sent()) == [
            ("1m", False, 1),
            ("1m", False, 2),
            ("shift", False, 1),
            ("shift", False, 1),
            ("shift", False, 2),
        ]
        assert bench.publisher.open_due_in() is None


@pytest.mark.parametrize(("interval", "sends"), [(0.0, 3), (1.0, 1)])
async def test_open_interval_s_of_earlier_configs_paces_every_kind_as_before(
    interval: float, sends: int
) -> None:
    kafka = KafkaSettings.model_validate({"open_interval_s": interval})
    async with Bench(kafka) as bench:
        for now in (0.0, 0.1, 0.2):
            await bench.at(now, record("1m", 1), record("shift", 1))
        assert len([s for s in bench.sent() if s[0] == "1m"]) == sends
        assert len([s for s in bench.sent() if s[0] == "shift"]) == sends


async def test_the_kinds_due_are_built_and_go_out_with_the_next_publish() -> None:
    """The worker asks the core for the open records of the kinds due only: a kind is due
    once its cadence has passed since its last send (1m: 0.2 s, shift: 5 s), and what is
    built for it then goes out at the next publish, not a cadence later."""
    kinds: tuple[WindowKind, ...] = ("1m", "shift")
    async with Bench() as bench:
        publisher = bench.publisher
        assert publisher.kinds_due(kinds) == {"1m", "shift"}  # nothing sent yet
        await bench.at(0.0, record("1m", 1), record("shift", 1))
        bench.clock.now = 0.1
        assert publisher.kinds_due(kinds) == set()
        bench.clock.now = 0.25
        assert publisher.kinds_due(kinds) == {"1m"}
        await bench.at(0.26, record("1m", 2))  # built for the due kind: out at once
        assert sorted(bench.sent()) == [("1m", False, 1), ("1m", False, 2), ("shift", False, 1)]
        bench.clock.now = 5.1
        assert publisher.kinds_due(kinds) == {"1m", "shift"}
