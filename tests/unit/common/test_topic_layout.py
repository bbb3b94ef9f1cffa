"""Topic layouts: the comparison with the plant config, the messages, and the start-up
check on the in-process bus (which keeps topic configs as Kafka does)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiokafka.admin.client
import aiokafka.client
import pytest
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.protocol.metadata import MetadataRequest_v5
from prometheus_client import CollectorRegistry

from linepulse.bus import AioKafkaClients, InProcessBroker, InProcessClients
from linepulse.bus.topics import (
    BrokerUnreachableError,
    FoundTopic,
    KafkaStartError,
    TopicLayoutError,
    TopicsMissingError,
    WantedTopic,
    _connect,
    check_topics,
    ensure_topics,
    layout_message,
    mismatches,
    missing_message,
    wanted_topics,
)
from linepulse.config import KafkaSettings, Topic
from linepulse.runtime import free_loopback_ports
from services.alerts.service import AlertService
from services.kpi.checkpoint import DirectoryStore
from services.kpi.core.engine import Core
from services.kpi.materializer import Materializer
from services.kpi.metrics import KpiMetrics
from services.kpi.worker import KpiWorker
from tests.unit.kpi.test_store import plant_config

BUS = "in-process"
KAFKA = KafkaSettings()  # telemetry and kpi: 6 partitions; dlq and status: 1


def test_wanted_topics_follow_the_config() -> None:
    kafka = KafkaSettings(telemetry=Topic(name="tel", partitions=3), kpi=Topic(name="k"))
    assert wanted_topics(kafka) == [
        WantedTopic("telemetry", "tel", 3, 1, compacted=False),
        WantedTopic("kpi", "k", 6, 1, compacted=True),
        WantedTopic("dlq", "telemetry.dlq", 1, 1, compacted=False),
        WantedTopic("status", "machine.status", 1, 1, compacted=True),
        WantedTopic("reasons", "stops.reasons", 1, 1, compacted=True),
        WantedTopic("alerts", "alerts.state", 1, 1, compacted=True),
        WantedTopic("spc", "spc.points", 1, 1, compacted=True),
    ]
    assert [w.role for w in wanted_topics(kafka, ["status", "telemetry"])] == [
        "telemetry",
        "status",
    ]


@pytest.mark.parametrize(
    ("role", "partitions", "policy", "partitions_differ", "policy_differs"),
    [
        ("telemetry", 6, "delete", False, False),
        ("telemetry", 1, "delete", True, False),  # what a broker's auto-creation makes
        ("telemetry", 12, "delete", True, False),
        ("telemetry", 6, "compact", False, True),  # would compact batches away
        ("telemetry", 6, "compact,delete", False, True),
        ("telemetry", 6, "", False, True),
        ("kpi", 6, "compact", False, False),
        ("kpi", 6, "compact,delete", False, False),  # compacted, and bounded
        ("kpi", 6, "delete,compact", False, False),
        ("kpi", 6, "Compact", False, False),
        ("kpi", 6, "delete", False, True),
        ("kpi", 1, "delete", True, True),  # the compose stack's kpi topic (issue 14)
        ("status", 1, "compact", False, False),
        ("status", 2, "compact", True, False),
        ("dlq", 1, "delete", False, False),
    ],
)
def test_what_counts_as_a_mismatch(
    role: str, partitions: int, policy: str, partitions_differ: bool, policy_differs: bool
) -> None:
    (wanted,) = [w for w in wanted_topics(KAFKA) if w.role == role]
    found = {wanted.name: FoundTopic(wanted.name, partitions, policy)}
    result = mismatches(wanted_topics(KAFKA), found)
    if not (partitions_differ or policy_differs):
        assert result == []
        return
    (mismatch,) = result
    assert mismatch.wanted == wanted
    assert (mismatch.partitions_differ, mismatch.policy_differs) == (
        partitions_differ,
        policy_differs,
    )


def test_a_missing_topic_is_no_mismatch() -> None:
    assert mismatches(wanted_topics(KAFKA), {}) == []


def test_the_message_names_topic_found_expected_and_the_fix() -> None:
    wanted = {w.role: w for w in wanted_topics(KAFKA)}
    found = {
        "telemetry": FoundTopic("telemetry", 1, "delete"),
        "kpi": FoundTopic("kpi", 1, "delete"),
        "status": FoundTopic("machine.status", 1, "delete"),
    }
    wrong = mismatches(wanted.values(), {f.name: f for f in found.values()})
    message = layout_message("kafka:9092", wrong)
    assert "\n" not in message  # one paragraph
    assert (
        "topic 'telemetry' has 1 partition and cleanup.policy=delete, expected 6 partitions "
        "(kafka.telemetry.partitions)"
    ) in message
    assert (
        "topic 'kpi' has 1 partition and cleanup.policy=delete, expected 6 partitions "
        "(kafka.kpi.partitions) and cleanup.policy=compact"
    ) in message
    assert (
        "topic 'machine.status' has 1 partition and cleanup.policy=delete, expected 1 "
        "partition (kafka.status.partitions) and cleanup.policy=compact"
    ) in message
    delete = "`kafka-topics.sh --bootstrap-server kafka:9092 --delete --topic telemetry`"
    assert f"either delete 'telemetry', 'kpi' (their records are lost) with {delete};" in message
    assert "then start `linepulse kpi`, which creates the missing topics" in message
    compact = (
        "`kafka-configs.sh --bootstrap-server kafka:9092 --alter --entity-type topics "
        "--entity-name {} --add-config cleanup.policy=compact`"
    )
    assert f"To fix it, run {compact.format('machine.status')}; and either" in message
    assert (
        "or keep them: set kafka.telemetry.partitions: 1 and kafka.kpi.partitions: 1 in the "
        f"plant config and run {compact.format('kpi')}."
    ) in message
    assert "--command-config" not in message

    secured = layout_message("kafka:9093", wrong, secured=True)
    assert "--bootstrap-server kafka:9093 --command-config client.properties --delete" in secured
    assert "client.properties: the TLS/SASL client settings" in secured


def test_the_missing_message_gives_the_create_commands() -> None:
    missing = [w for w in wanted_topics(KAFKA) if w.role in ("kpi", "telemetry")]
    message = missing_message("b:9092", missing, service="linepulse alerts", waited_s=60)
    assert message.startswith("Kafka at b:9092 has no topic 'telemetry', 'kpi' (waited 60 s).")
    assert "linepulse alerts never creates topics: start `linepulse kpi`" in message
    assert (
        "`kafka-topics.sh --bootstrap-server b:9092 --create --topic kpi --partitions 6 "
        "--replication-factor 1 --config cleanup.policy=compact`"
    ) in message
    assert (
        "--topic telemetry --partitions 6 --replication-factor 1 --config cleanup.policy=delete"
    ) in message


# -- on the in-process bus --------------------------------------------------------------


async def test_ensure_creates_missing_topics_with_the_layout() -> None:
    broker = InProcessBroker()
    partitions = await ensure_topics(BUS, KAFKA, InProcessClients(broker))
    assert partitions == {
        "telemetry": 6,
        "kpi": 6,
        "dlq": 1,
        "status": 1,
        "reasons": 1,
        "alerts": 1,
        "spc": 1,
    }
    assert broker.topics() == [
        "alerts.state",
        "kpi",
        "machine.status",
        "spc.points",
        "stops.reasons",
        "telemetry",
        "telemetry.dlq",
    ]
    policies = {t: (broker.topic_config(t) or {})["cleanup.policy"] for t in broker.topics()}
    assert policies == {
        "alerts.state": "compact",
        "kpi": "compact",
        "machine.status": "compact",
        "spc.points": "compact",
        "stops.reasons": "compact",
        "telemetry": "delete",
        "telemetry.dlq": "delete",
    }
    # Again, with everything there: nothing changes, and it passes.
    assert await ensure_topics(BUS, KAFKA, InProcessClients(broker)) == partitions


async def test_ensure_creates_only_the_roles_asked_for() -> None:
    broker = InProcessBroker()
    await ensure_topics(BUS, KAFKA, InProcessClients(broker), roles=("telemetry", "dlq"))
    assert broker.topics() == ["telemetry", "telemetry.dlq"]


async def test_ensure_refuses_an_existing_topic_laid_out_otherwise() -> None:
    broker = InProcessBroker()
    broker.create_topic("kpi", 1)  # as a broker auto-creates it: 1 partition, delete
    with pytest.raises(TopicLayoutError) as refused:
        await ensure_topics(BUS, KAFKA, InProcessClients(broker))
    assert "topic 'kpi' has 1 partition and cleanup.policy=delete" in str(refused.value)
    # The others were created; the wrong one is left as it is, for its owner to fix.
    assert broker.partitions("kpi") == 1
    assert broker.partitions("telemetry") == 6


async def test_a_creation_the_broker_refuses_is_an_error_naming_the_keys() -> None:
    kafka = KafkaSettings(kpi=Topic(name="kpi", replication=3))
    with pytest.raises(TopicLayoutError, match=r"refused to create topic 'kpi'") as refused:
        await ensure_topics(BUS, kafka, InProcessClients(InProcessBroker()))
    assert "INVALID_REPLICATION_FACTOR" in str(refused.value)
    assert "kafka.kpi.replication" in str(refused.value)


async def test_check_never_creates_and_names_the_service() -> None:
    broker = InProcessBroker()
    with pytest.raises(TopicsMissingError, match="the KPI API never creates topics"):
        await check_topics(
            BUS, KAFKA, InProcessClients(broker), roles=("kpi",), service="the KPI API"
        )
    assert broker.topics() == []


async def test_check_waits_for_a_topic_created_meanwhile() -> None:
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    checking = asyncio.create_task(
        check_topics(BUS, KAFKA, clients, roles=("kpi",), service="test", wait_s=3600)
    )
    await asyncio.sleep(0)  # let it look once and start waiting
    assert not checking.done()
    await ensure_topics(BUS, KAFKA, clients, roles=("kpi",))
    assert await asyncio.wait_for(checking, 30) == {"kpi": 6}


async def test_check_returns_nothing_when_stopped_while_waiting() -> None:
    stop = asyncio.Event()
    checking = asyncio.create_task(
        check_topics(
            BUS,
            KAFKA,
            InProcessClients(InProcessBroker()),
            roles=("kpi",),
            service="test",
            wait_s=3600,
            stop=stop,
        )
    )
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(checking, 30) == {}


async def test_each_service_refuses_a_wrong_topic_on_the_in_process_bus(tmp_path: Path) -> None:
    """The worker, the API's materializer and the alerts service check before they build a
    consumer: on the demo's bus as on Kafka."""
    plant = plant_config()
    broker = InProcessBroker()
    clients = InProcessClients(broker)
    broker.create_topic(plant.kafka.telemetry.name, 1)
    broker.create_topic(plant.kafka.kpi.name, plant.kafka.kpi.partitions)  # not compacted
    await ensure_topics(BUS, plant.kafka, clients, roles=("dlq", "status", "reasons", "spc"))
    stop = asyncio.Event()
    worker = KpiWorker(
        Core.from_config(plant),
        plant.kafka,
        BUS,
        DirectoryStore(tmp_path),
        KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    with pytest.raises(TopicLayoutError, match="topic 'telemetry' has 1 partition"):
        await worker.run(stop)
    materializer = Materializer(
        plant.kafka,
        BUS,
        store=_NoStore(),
        metrics=KpiMetrics.create(CollectorRegistry()),
        clients=clients,
    )
    with pytest.raises(TopicLayoutError, match=r"expected 6 partitions .* cleanup.policy=compact"):
        await materializer.run(stop)
    alerts = AlertService(plant, BUS, tmp_path / "alerts", clients=clients)
    with pytest.raises(TopicLayoutError, match="topic 'telemetry' has 1 partition"):
        await alerts.wait_for_topics(stop, wait_s=0)


async def test_alerts_wait_for_their_topics_and_never_create_them(tmp_path: Path) -> None:
    plant = plant_config()
    broker = InProcessBroker()
    alerts = AlertService(plant, BUS, tmp_path / "alerts", clients=InProcessClients(broker))
    with pytest.raises(TopicsMissingError, match="linepulse alerts never creates topics"):
        await alerts.wait_for_topics(asyncio.Event(), wait_s=0)
    assert broker.topics() == []
    with pytest.raises(UnknownTopicOrPartitionError):
        await InProcessClients(broker).producer().send(plant.kafka.kpi.name, value=b"{}")


class _NoTable:
    def upsert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        raise AssertionError("nothing is read from a refused topic")


class _NoStore:
    history = _NoTable()
    status = _NoTable()
    spc = _NoTable()

    @property
    def stops(self) -> _NoStore:
        return self

    def apply_corrections(
        self, entries: Sequence[Mapping[str, Any]], withdrawn: Sequence[tuple[str, int]]
    ) -> None:
        raise AssertionError("nothing is read from a refused topic")


# -- aiokafka's clients -----------------------------------------------------------------


async def test_linepulse_aiokafka_clients_never_ask_the_broker_to_create_a_topic() -> None:
    """What goes on the wire: Metadata v5's allow_auto_topic_creation (its default in
    aiokafka 0.14 is true); the integration test shows the broker's side."""
    consumer = AioKafkaClients().consumer("t", bootstrap_servers="127.0.0.1:1")
    await consumer.stop()
    for module in (aiokafka.client, aiokafka.admin.client):
        request = module.MetadataRequest(["t"]).build(MetadataRequest_v5)
        assert request.allow_auto_topic_creation is False


async def test_a_broker_that_never_answers_is_one_error_naming_it_and_the_fix() -> None:
    """No broker on the port (aiokafka's real admin client, nothing mocked): the start-up
    wait ends in `BrokerUnreachableError` (exit 2 from the CLI), not a traceback."""
    (port,) = free_loopback_ports(1)
    bootstrap = f"127.0.0.1:{port}"
    clients = AioKafkaClients()
    admin = clients.admin(bootstrap_servers=bootstrap)
    with pytest.raises(BrokerUnreachableError) as refused:
        await _connect(clients, admin, bootstrap, None, secured=True, wait_s=0.1)
    message = str(refused.value)
    assert message.startswith(f"Kafka at {bootstrap} did not answer within 0 s")
    assert "TLS/SASL settings (kafka.security)" in message
    assert isinstance(refused.value, KafkaStartError)
    stop = asyncio.Event()
    stop.set()  # a service stopped while it waits leaves at once
    assert not await _connect(clients, admin, bootstrap, stop, secured=False, wait_s=60)
