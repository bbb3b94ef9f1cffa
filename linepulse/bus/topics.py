"""The layout LinePulse's Kafka topics must have, checked at every start, created where allowed.

A topic is used only when it has the layout the plant config (`kafka:`) asks for, because
LinePulse relies on more than its existence:

- `telemetry` (`kafka.telemetry`): `partitions` fixes each line's home partition (murmur2 of
  the line id modulo the count) and so which worker's state holds which line; `delete`
  policy, since a batch record is keyed by its first machine only and compaction would drop
  whole batches.
- `kpi` and `machine.status` (`kafka.kpi`, `kafka.status`): compacted (`compact`, or
  `compact,delete` for a bounded one): the API rebuilds its store from the latest record
  per key (a KPI record per window; a status per state a machine entered, `machine@since`);
  never compacted, they grow without end, and a record key's partition must not change
  under the records already written.
- `telemetry.dlq` (`kafka.dlq`): `delete`.
- `stops.reasons` (`kafka.reasons`): compacted: the reason corrections of stops and
  their audit, one record a correction, from which every API replica rebuilds them.
- `alerts.state` (`kafka.alerts`): compacted, one partition: the replicated alerts
  service's state (services/alerts/replication.py) is the latest record per key, and
  the instance holding partition 0 is the active one.

A topic that a client's metadata request made on a broker with `auto.create.topics.enable`
(the broker's default, and what the compose stack's alerts consumers did: issue 14) has
the broker's defaults, one partition and `delete`. So every service checks, before it
builds a consumer or a producer, the topics it uses: `ensure_topics` (at the start of
`linepulse kpi` and `api`, the ingest sink's connect, `linepulse produce`, the demo)
creates the missing ones with the configured layout; `check_topics` (the alerts service,
and the KPI worker and the API's materializer as they start) never creates any, and the
alerts service waits for them. Either raises `TopicLayoutError`, whose message names each
topic, what it has, what the config expects and the command that fixes it; the CLI prints
it and exits 2, as for any config error. Replication factors are not compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

from linepulse.bus.clients import AIOKAFKA, Admin, KafkaClients
from linepulse.config import KafkaSettings, Topic

log = logging.getLogger(__name__)

TopicRole = Literal["telemetry", "kpi", "dlq", "status", "reasons", "alerts", "spc"]  # `kafka:`'s
TOPIC_ROLES: Final[tuple[TopicRole, ...]] = get_args(TopicRole)
COMPACTED: Final[frozenset[TopicRole]] = frozenset({"kpi", "status", "reasons", "alerts", "spc"})
# What the KPI worker reads and writes (the alerts topic is the alerts service's alone).
KPI_ROLES: Final[tuple[TopicRole, ...]] = ("telemetry", "kpi", "dlq", "status", "spc")

CLEANUP_POLICY: Final = "cleanup.policy"
# How long a topic this process has just created may take to show in the metadata.
CREATED_VISIBLE_S: Final = 10.0
POLL_S: Final = 0.5
_TOPIC_EXISTS: Final = TopicAlreadyExistsError.errno
# Creates every topic (the API, ingest and `produce` create those they use).
TOPIC_CREATOR: Final = "`linepulse kpi`"
# How long a service starting waits for its broker to answer: services and broker are often
# started together (compose, a plant PC booting), and the broker is the slowest of them.
BROKER_WAIT_S: Final = 120.0
BROKER_RETRY_S: Final = 2.0
# While waiting, a line in the log this often (the first attempt's failure is logged at once).
BROKER_WAIT_LOG_S: Final = 30.0


class KafkaStartError(Exception):
    """A service cannot start on its Kafka topics; the message says why and what fixes it
    (the CLI prints it and exits 2)."""


class TopicLayoutError(KafkaStartError):
    """A topic a service uses is missing, laid out differently from the plant config, or
    could not be created or read; the message says which, and the command that fixes it."""


class BrokerUnreachableError(KafkaStartError):
    """No broker of the bootstrap list answered while a service waited to start."""


class TopicsMissingError(TopicLayoutError):
    """Topics a service that never creates topics waited for did not appear."""


@dataclass(frozen=True)
class WantedTopic:
    """A topic as the plant config wants it."""

    role: TopicRole
    name: str
    partitions: int
    replication: int
    compacted: bool

    @property
    def policy(self) -> str:
        """The cleanup.policy LinePulse creates the topic with."""
        return "compact" if self.compacted else "delete"

    @property
    def key(self) -> str:
        """The plant config key of its partition count."""
        return f"kafka.{self.role}.partitions"

    def accepts(self, policies: frozenset[str]) -> bool:
        """A compacted topic must compact (a `delete` next to it bounds its size); any
        other must only delete."""
        return "compact" in policies if self.compacted else policies == {"delete"}

    def new_topic(self) -> NewTopic:
        return NewTopic(
            name=self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication,
            topic_configs={CLEANUP_POLICY: self.policy},
        )


@dataclass(frozen=True)
class FoundTopic:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    cleanup_policy: str  # as the broker reports it, e.g. "compact,delete"

    @property
    def policies(self) -> frozenset[str]:
        return frozenset(p.strip().lower() for p in self.cleanup_policy.split(",") if p.strip())


@dataclass(frozen=True)
class Mismatch:
    wanted: WantedTopic
    found: FoundTopic

    @property
    def partitions_differ(self) -> bool:
        return self.found.partitions != self.wanted.partitions

    @property
    def policy_differs(self) -> bool:
        return not self.wanted.accepts(self.found.policies)


def wanted_topics(
    kafka: KafkaSettings, roles: Iterable[TopicRole] = TOPIC_ROLES
) -> list[WantedTopic]:
    """The topics of `roles` as the config wants them, in `TOPIC_ROLES` order."""
    chosen = set(roles)
    wanted = []
    for role in TOPIC_ROLES:
        if role in chosen:
            topic: Topic = getattr(kafka, role)
            wanted.append(
                WantedTopic(
                    role, topic.name, topic.partitions, topic.replication, role in COMPACTED
                )
            )
    return wanted


def mismatches(wanted: Iterable[WantedTopic], found: Mapping[str, FoundTopic]) -> list[Mismatch]:
    """The wanted topics that exist with another partition count or cleanup policy
    (missing ones are not mismatches: they are created or waited for)."""
    out = []
    for topic in wanted:
        have = found.get(topic.name)
        if have is None:
            continue
        mismatch = Mismatch(topic, have)
        if mismatch.partitions_differ or mismatch.policy_differs:
            out.append(mismatch)
    return out


# -- messages ---------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _tool(name: str, bootstrap: str, args: str, secured: bool) -> str:
    extra = " --command-config client.properties" if secured else ""
    return f"`{name} --bootstrap-server {bootstrap}{extra} {args}`"


def _secured_note(secured: bool) -> str:
    return (
        " (client.properties: the TLS/SASL client settings of a LinePulse user)" if secured else ""
    )


def _alter_policy(bootstrap: str, wanted: WantedTopic, secured: bool) -> str:
    return _tool(
        "kafka-configs.sh",
        bootstrap,
        f"--alter --entity-type topics --entity-name {wanted.name} "
        f"--add-config {CLEANUP_POLICY}={wanted.policy}",
        secured,
    )


def _names(topics: Iterable[WantedTopic]) -> str:
    return ", ".join(f"'{w.name}'" for w in topics)


def layout_message(bootstrap: str, found: Sequence[Mismatch], *, secured: bool = False) -> str:
    """One paragraph: each topic, what it has, what is expected, and the commands that fix
    it. A policy is altered in place; a partition count is not (raising it would move keys
    and lines away from the records and checkpoints already written): the topic is
    deleted and created anew, or the config follows the topic."""
    problems = []
    for m in found:
        w, f = m.wanted, m.found
        expected = f"{_plural(w.partitions, 'partition')} ({w.key})"
        if m.policy_differs:
            expected += f" and cleanup.policy={w.policy}"
        problems.append(
            f"topic '{w.name}' has {_plural(f.partitions, 'partition')} and "
            f"cleanup.policy={f.cleanup_policy or '(none)'}, expected {expected}"
        )
    fixes = [
        f"run {_alter_policy(bootstrap, m.wanted, secured)}"
        for m in found
        if m.policy_differs and not m.partitions_differ
    ]
    resized = [m for m in found if m.partitions_differ]
    if resized:
        deletes = "; ".join(
            _tool("kafka-topics.sh", bootstrap, f"--delete --topic {m.wanted.name}", secured)
            for m in resized
        )
        keys = " and ".join(f"{m.wanted.key}: {m.found.partitions}" for m in resized)
        keep = f"set {keys} in the plant config"
        altered = [_alter_policy(bootstrap, m.wanted, secured) for m in resized if m.policy_differs]
        if altered:
            keep += f" and run {'; '.join(altered)}"
        fixes.append(
            f"either delete {_names(m.wanted for m in resized)} (their records are lost) with "
            f"{deletes}, then start {TOPIC_CREATOR}, which creates the missing topics with the "
            f"configured layout; or keep {'it' if len(resized) == 1 else 'them'}: {keep}"
        )
    return (
        f"Kafka at {bootstrap}: {'; '.join(problems)}. LinePulse does not use a topic laid "
        "out differently from the plant config (a topic auto-created by a broker with "
        "auto.create.topics.enable=true has the broker's defaults, usually 1 partition and "
        f"cleanup.policy=delete). To fix it, {'; and '.join(fixes)}{_secured_note(secured)}."
    )


def missing_message(
    bootstrap: str,
    missing: Sequence[WantedTopic],
    *,
    service: str,
    waited_s: float,
    secured: bool = False,
) -> str:
    creates = "; ".join(
        _tool(
            "kafka-topics.sh",
            bootstrap,
            f"--create --topic {w.name} --partitions {w.partitions} "
            f"--replication-factor {w.replication} --config {CLEANUP_POLICY}={w.policy}",
            secured,
        )
        for w in missing
    )
    return (
        f"Kafka at {bootstrap} has no topic {_names(missing)}"
        f"{f' (waited {waited_s:.0f} s)' if waited_s > 0 else ''}. "
        f"{service} never creates topics: start {TOPIC_CREATOR}, which creates them with the "
        f"layout of the plant config, or create them: {creates}{_secured_note(secured)}."
    )


def _error_text(code: int, message: str | None) -> str:
    name = for_code(code).message
    return f"{name}: {message}" if message else name


# -- talking to the broker --------------------------------------------------------------


async def read_topics(admin: Admin, bootstrap: str, names: Sequence[str]) -> dict[str, FoundTopic]:
    """The layout of those of `names` that exist and are ready (none is created: no
    LinePulse client asks for that, see linepulse/bus/clients.py)."""
    existing = set(await admin.list_topics())
    present = [name for name in names if name in existing]
    if not present:
        return {}
    partitions = {
        described["topic"]: len(described["partitions"])
        for described in await admin.describe_topics(present)
        if described["error_code"] == 0  # else not ready yet (a topic being created)
    }
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, {CLEANUP_POLICY: None})
        for name in partitions
    ]
    policies: dict[str, str] = {}
    for response in await admin.describe_configs(resources) if resources else []:
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"] != 0:
                raise TopicLayoutError(
                    f"Kafka at {bootstrap}: cannot read the cleanup.policy of topic '{name}' "
                    f"({_error_text(resource['error_code'], resource['error_message'])}); the "
                    "LinePulse user needs DescribeConfigs on its topics"
                )
            for entry in resource["config_entries"]:
                if entry["config_names"] == CLEANUP_POLICY:
                    policies[name] = entry["config_value"] or ""
    return {
        name: FoundTopic(name, count, policies.get(name, "")) for name, count in partitions.items()
    }


async def _create(admin: Admin, bootstrap: str, missing: Sequence[WantedTopic]) -> None:
    """Create `missing` with the configured layout; one that another service created
    meanwhile is left as it is (and checked like any other)."""
    response = await admin.create_topics([w.new_topic() for w in missing])
    by_name = {w.name: w for w in missing}
    created = []
    for result in response.to_object()["topic_errors"]:
        code = result["error_code"]
        if code == _TOPIC_EXISTS:
            continue
        w = by_name[result["topic"]]
        if code != 0:
            raise TopicLayoutError(
                f"Kafka at {bootstrap} refused to create topic '{w.name}' "
                f"({_plural(w.partitions, 'partition')}, replication factor {w.replication}, "
                f"cleanup.policy={w.policy}): {_error_text(code, result.get('error_message'))}. "
                f"Check kafka.{w.role}.partitions and kafka.{w.role}.replication in the plant "
                "config against the cluster (a replication factor above its number of brokers "
                "is refused)"
            )
        created.append(f"{w.name} ({_plural(w.partitions, 'partition')}, {w.policy})")
    if created:
        log.info("created topics %s on %s", ", ".join(created), bootstrap)


async def _pause(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def _connect(
    clients: KafkaClients,
    admin: Admin,
    bootstrap: str,
    stop: asyncio.Event | None,
    *,
    secured: bool,
    wait_s: float = BROKER_WAIT_S,
) -> bool:
    """Start `admin`, waiting up to `wait_s` for a broker that does not answer yet (probed
    by TCP first: aiokafka logs an ERROR line for each failed bootstrap); False if `stop`
    is set meanwhile. Raises `BrokerUnreachableError` after that."""
    started = time.monotonic()
    logged_at: float | None = None
    while True:
        failure = "no address of it accepts a connection"
        if await clients.reachable(bootstrap):
            try:
                await admin.start()
            except KafkaConnectionError as error:
                failure = str(error)
            else:
                if logged_at is not None:
                    waited = time.monotonic() - started
                    log.info("Kafka at %s answers after %.0f s", bootstrap, waited)
                return True
        now = time.monotonic()
        if now - started >= wait_s:
            await admin.close()
            check = "the address, that the broker runs" + (
                ", and the TLS/SASL settings (kafka.security)" if secured else ""
            )
            raise BrokerUnreachableError(
                f"Kafka at {bootstrap} did not answer within {wait_s:.0f} s ({failure}); "
                f"check {check}"
            )
        if logged_at is None or now - logged_at >= BROKER_WAIT_LOG_S:
            log.warning(
                "Kafka at %s does not answer yet (%s); waiting up to %.0f s in all",
                bootstrap,
                failure,
                wait_s,
            )
            logged_at = now
        await _pause(BROKER_RETRY_S, stop)
        if stop is not None and stop.is_set():
            await admin.close()
            return False


async def _settle(
    bootstrap: str,
    kafka: KafkaSettings,
    clients: KafkaClients,
    roles: Iterable[TopicRole],
    *,
    create: bool,
    wait_s: float,
    stop: asyncio.Event | None,
    service: str,
) -> dict[TopicRole, int]:
    wanted = wanted_topics(kafka, roles)
    names = [w.name for w in wanted]
    secured = kafka.security.protocol != "PLAINTEXT"
    admin = clients.admin(bootstrap_servers=bootstrap, client_id="linepulse-admin")
    if not await _connect(clients, admin, bootstrap, stop, secured=secured):
        return {}
    try:
        found = await read_topics(admin, bootstrap, names)
        missing = [w for w in wanted if w.name not in found]
        if missing and create:
            await _create(admin, bootstrap, missing)
            wait_s = max(wait_s, CREATED_VISIBLE_S)
        elif missing and wait_s > 0:
            log.warning(
                "waiting up to %.0f s for topic(s) %s on %s: %s never creates topics; %s does",
                wait_s,
                ", ".join(w.name for w in missing),
                bootstrap,
                service,
                TOPIC_CREATOR,
            )
        started = time.monotonic()
        while missing:
            if stop is not None and stop.is_set():
                return {}
            found = await read_topics(admin, bootstrap, names)
            missing = [w for w in wanted if w.name not in found]
            if missing and time.monotonic() - started >= wait_s:
                raise TopicsMissingError(
                    missing_message(
                        bootstrap, missing, service=service, waited_s=wait_s, secured=secured
                    )
                )
            if missing:
                await _pause(POLL_S, stop)
        wrong = mismatches(wanted, found)
        if wrong:
            raise TopicLayoutError(layout_message(bootstrap, wrong, secured=secured))
        return {w.role: found[w.name].partitions for w in wanted}
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str,
    kafka: KafkaSettings,
    clients: KafkaClients = AIOKAFKA,
    *,
    roles: Iterable[TopicRole] = TOPIC_ROLES,
) -> dict[TopicRole, int]:
    """Create the missing topics of `roles` with the configured layout, then check them
    all; their partition counts. Raises `TopicLayoutError` (a topic laid out otherwise,
    or one the broker would not create)."""
    return await _settle(
        bootstrap, kafka, clients, roles, create=True, wait_s=0.0, stop=None, service=""
    )


async def check_topics(
    bootstrap: str,
    kafka: KafkaSettings,
    clients: KafkaClients = AIOKAFKA,
    *,
    roles: Iterable[TopicRole],
    service: str,
    wait_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> dict[TopicRole, int]:
    """Check the topics of `roles`, never creating one; their partition counts. Waits up
    to `wait_s` for missing ones, then raises `TopicsMissingError` naming `service`
    ("linepulse alerts"); returns {} if `stop` is set while it waits. Raises
    `TopicLayoutError` for a topic laid out otherwise."""
    return await _settle(
        bootstrap, kafka, clients, roles, create=False, wait_s=wait_s, stop=stop, service=service
    )
