"""A replicated alerts service on the in-process bus: one instance active, the other a
standby holding its state; when the active one stops, the standby takes over with every
alert, silence and outbox row, and a fenced writer cannot write any more.

The real-Kafka drill (kill -9 of the active instance, pages counted at a receiver) is
tests/integration/test_alerts_failover.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.errors import ProducerFenced

from linepulse.alerting import HighAvailability
from linepulse.bus import InProcessBroker, InProcessClients
from linepulse.bus.topics import ensure_topics
from linepulse.calendar import Calendar
from linepulse.config import PlantConfig
from services.alerts.model import Matcher, Notification
from services.alerts.notes import ShiftNotes
from services.alerts.replication import (
    ActiveFirstAssignor,
    ActiveInstance,
    StateWriter,
    decode,
    store_records,
)
from services.alerts.service import AlertService
from services.app.demo import demo_plant

NOW_MS = int(time.time() * 1000)


def replicated_plant() -> PlantConfig:
    plant = demo_plant([4840, 4841], 1883)
    alerts = plant.alerts.model_copy(update={"high_availability": HighAvailability(enabled=True)})
    return plant.model_copy(update={"alerts": alerts})


@contextlib.asynccontextmanager
async def running(service: AlertService) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(task.run(stop), name=task.name) for task in service.tasks]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        service.close()


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def two_instances(tmp_path: Path) -> tuple[AlertService, AlertService]:
    """Two replicated instances on one in-process broker, not started yet."""
    clients = InProcessClients(InProcessBroker())
    plant = replicated_plant()
    await ensure_topics("in-process", plant.kafka, clients)
    return tuple(  # type: ignore[return-value]
        AlertService(plant, "in-process", tmp_path / name, clients, url=f"http://{name}")
        for name in ("a", "b")
    )


def notification(key: str) -> Notification:
    return Notification(
        key=key,
        group=f"g-{key}",
        channel="no-such-channel",
        kind="firing",
        recipient="lead",
        alerts=(),
        created_at=NOW_MS,
        escalation=0,
    )


async def test_the_standby_takes_over_with_the_active_instances_state(tmp_path: Path) -> None:
    first, second = await two_instances(tmp_path)
    assert first.failover is not None
    assert second.failover is not None
    async with running(first) as stop_first:
        await until(lambda: first.failover.role == "active")  # type: ignore[union-attr]
        assert first.failover.writes_here()
        assert first.metrics.active._value.get() == 1
        async with running(second):
            silence = first.engine.add_silence(
                (Matcher("line", "line-1"),), NOW_MS, NOW_MS + 3_600_000, "lead", "test", NOW_MS
            )
            # A shift note is a row of the same store: it travels the same way.
            plant = first.plant
            line = plant.lines[0].id
            note = ShiftNotes(first.engine.store, Calendar(plant)).add(line, "drips", "ann", NOW_MS)
            seen = ShiftNotes(second.engine.store, Calendar(plant))
            day = date.fromisoformat(note["date"])
            # The standby shows it (reloaded from the topic) and knows who is active.
            await until(lambda: [s.id for s in second.engine.silences(NOW_MS)] == [silence.id])
            await until(lambda: seen.of_shift(line, day, note["shift"]) == [note])
            assert second.failover.role == "standby"
            assert not second.failover.writes_here()
            assert second.metrics.active._value.get() == 0
            assert second.failover.active is not None
            assert second.failover.active.url == "http://a"
            stop_first.set()  # the active instance goes: the standby takes over
            await until(lambda: second.failover.role == "active")  # type: ignore[union-attr]
            assert [s.id for s in second.engine.silences(NOW_MS)] == [silence.id]
            assert seen.of_shift(line, day, note["shift"]) == [note]
            assert second.failover.active.url == "http://b"
            assert second.metrics.active._value.get() == 1


async def test_outbox_rows_reach_the_standby_with_their_keys_and_status(tmp_path: Path) -> None:
    first, second = await two_instances(tmp_path)
    async with running(first), running(second):
        await until(lambda: first.failover.role == "active")  # type: ignore[union-attr]
        first.outbox.enqueue([notification("k-1"), notification("k-2")])
        # The channel does not exist: the active instance gives the rows up as failed.
        await until(lambda: [r.status for r in second.outbox.rows()] == ["failed", "failed"])
        assert [r.key for r in second.outbox.rows()] == ["k-1", "k-2"]


async def test_a_row_is_sent_only_once_a_successor_would_know_of_it(tmp_path: Path) -> None:
    """The outbox of the active instance sends a row only once it is on the topic: a
    report sent before then would be owed again, and sent again, after a takeover."""
    first, second = await two_instances(tmp_path)
    async with running(first), running(second):
        failover = first.failover
        assert failover is not None
        await until(lambda: failover.role == "active")
        await until(failover.may_deliver)
        written_at_send: list[bool] = []
        deliver = first.outbox._deliver

        async def watched(*args: Any) -> None:
            assert failover.writer is not None
            written_at_send.append(failover.writer.settled)
            await deliver(*args)

        first.outbox._deliver = watched  # type: ignore[method-assign,assignment]
        report = replace(
            notification("report/line-1/2026-11-02/early/console/ann"),
            channel="console",
            kind="report",
            extra={"subject": "Shift report line-1 early 2026-11-02"},
        )
        first.outbox.enqueue([report])
        # Queued here, not yet on the topic: it waits, though this instance may act.
        assert failover.may_act()
        assert not failover.may_deliver()
        await until(lambda: [r.status for r in second.outbox.rows()] == ["delivered"])
        assert written_at_send == [True]


async def test_a_fenced_writer_cannot_write(tmp_path: Path) -> None:
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    broker.create_topic("alerts.state", 1, {"cleanup.policy": "compact"})
    me = ActiveInstance("old", None, NOW_MS, 0)
    old = clients.transactional_producer("group")
    await old.start()
    writer = StateWriter(old, "alerts.state", me, lease_s=3)
    await writer.flush()
    assert writer.lease_held()
    new = clients.transactional_producer("group")
    await new.start()  # a successor: the old writer is fenced
    writer.add(store_records([("meta", "started", (1, {"at": 1}))]))
    with pytest.raises(Exception, match="fenced"):
        await writer.flush()
    assert not writer.lease_held()
    with pytest.raises(ProducerFenced):
        await old.begin_transaction()
    records = [(r.key, r.value) for r in broker.log("alerts.state", 0)]
    decoded = decode(records)
    assert decoded.rows == []  # the fenced write never reached the topic
    assert decoded.active is not None
    assert decoded.active.instance == "old"


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


def _assign(claims: dict[str, bytes]) -> dict[str, list[tuple[str, list[int]]]]:
    members = {m: ConsumerProtocolMemberMetadata(0, ["alerts.state"], c) for m, c in claims.items()}
    assigned = ActiveFirstAssignor.assign(_Cluster(), members)
    return {m: list(a.assignment) for m, a in assigned.items()}


def test_the_group_keeps_the_active_instance_and_prefers_the_later_takeover() -> None:
    owned = [("alerts.state", [0])]
    # A standby joining does not move the partition from the active member.
    assert _assign({"a": b"", "b": b"1000"}) == {"a": [], "b": owned}
    # A frozen member back with its old claim loses to the one that took over after it.
    assert _assign({"old": b"1000", "new": b"2000"}) == {"old": [], "new": owned}
    # Nobody active: the first member id, whatever the join order.
    assert _assign({"z": b"", "a": b""}) == {"z": [], "a": owned}
