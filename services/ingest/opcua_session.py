"""One OPC-UA session of the ingester: client set-up, node resolution, the subscription.

Everything here is per connection attempt: the ingester builds a new asyncua `Client` for
each one (a client reused after a connection loss can hang, asyncua #1660), resolves the
configured nodes again (a rebooted PLC may have rebuilt its address space, or renumbered
its namespaces: `nsu=` NodeIds are looked up in its NamespaceArray each time) and creates
the subscription with all monitored items in one CreateMonitoredItems call, then widens
the queues the server granted too small for its sampling interval (ModifyMonitoredItems).

The subscription goes through asyncua's raw session service (`UaClient`), not its
`Subscription` class: that class turns every notification into an object and either a
queue entry (iterator mode) or a task (handler mode). The ingester's callback receives
each PublishResponse whole and appends its values to a column batch synchronously.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Final

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509

from linepulse.config import COUNTER_SIGNALS
from linepulse.log_redaction import redact_log_arguments
from linepulse.sources import OpcuaNode, OpcuaSource
from services.ingest.opcua_values import (
    local_node_id,
    parse_browse_path,
    parse_node_id,
    relative_path,
    status_name,
)

PublishCallback = Callable[[ua.PublishResult], Awaitable[None]]

# Keep-alives at least this often (ms) while nothing changes, and a server-side
# subscription lifetime of at least this long (ms) without publish requests.
KEEPALIVE_MS = 5_000
LIFETIME_MS = 60_000
MAX_NOTIFICATIONS_PER_PUBLISH = 10_000

_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_POLICIES = {"Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256}


# Signals that must report every change: a deadband would hide state changes, counter
# steps and product changes (the core counts and times them).
NO_DEADBAND: Final = frozenset({"state", "product", *COUNTER_SIGNALS})
# Signals sampled as fast as the server can (sampling interval 0) unless the source sets
# an interval: a state held for less than one sampling interval is never seen, and a
# counter step within one is merged into the next. The reason goes with the state.
FASTEST: Final = NO_DEADBAND | {"reason"}
# Part 4 §5.12.1.2: 0 asks for the fastest practical rate, a negative interval for the
# subscription's publishing interval.
SAMPLE_FASTEST: Final = 0.0
SAMPLE_AT_PUBLISHING: Final = -1.0


@dataclass(frozen=True)
class Route:
    """Where a configured node's values go: machine and signal, and how to name it."""

    machine: str
    signal: str
    node: OpcuaNode

    @property
    def deadband(self) -> float | None:
        """The node's absolute deadband; never one on state, product or counters."""
        return None if self.signal in NO_DEADBAND else self.node.deadband

    @property
    def address(self) -> str:
        return self.node.node_id or f"path {self.node.browse_path}"

    @cached_property
    def key(self) -> str:
        """ "machine/signal": the node's name that outlives a session (its handle does not),
        under which its history-backfill mark is kept."""
        return f"{self.machine}/{self.signal}"

    @property
    def where(self) -> str:
        """The dead letter's `where`: machine/signal and the node, for finding the tag."""
        return f"{self.machine}/{self.signal} ({self.address})"


@dataclass(frozen=True)
class Monitored:
    """A route whose node resolved; `handle` is its ClientHandle in the subscription."""

    handle: int
    route: Route
    node_id: ua.NodeId


@dataclass(frozen=True)
class Unresolved:
    """A route whose node this server does not have (or not as a Variable), and why."""

    route: Route
    why: str


@dataclass(frozen=True)
class Created:
    """A monitored item as the server set it up: what was asked and what it granted (ms).

    `asked_sampling_ms` is the interval asked for, the publishing interval for a request
    of "the publishing interval" (-1); `queue_size` is the queue one publishing interval
    of changes needs at the granted sampling interval (`queue_size_for`)."""

    item: Monitored
    asked_sampling_ms: float
    sampling_ms: float
    queue_size: int
    granted_queue_size: int


@dataclass(frozen=True)
class Subscribed:
    """The subscription as created: its id, the publishing interval the server granted
    (ms), the items it accepted and the refusals as readable text."""

    subscription_id: int
    publishing_ms: float
    created: list[Created]
    refused: list[str]

    @property
    def items(self) -> list[Monitored]:
        return [c.item for c in self.created]


def routes_of(source: OpcuaSource) -> list[Route]:
    """Every configured (machine, signal, node) of a source, in config order."""
    return [
        Route(machine.machine, signal, node)
        for machine in source.machines
        for signal, node in machine.nodes.items()
    ]


def subscription_parameters(source: OpcuaSource) -> ua.CreateSubscriptionParameters:
    """Publishing interval from the config; keep-alive about every KEEPALIVE_MS and a
    lifetime of at least 3 keep-alives (Part 4 §5.13.2) and LIFETIME_MS."""
    interval = float(source.publishing_interval_ms)
    keepalive = max(1, math.ceil(KEEPALIVE_MS / interval))
    lifetime = max(3 * keepalive, math.ceil(LIFETIME_MS / interval))
    return ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=interval,
        RequestedLifetimeCount=lifetime,
        RequestedMaxKeepAliveCount=keepalive,
        MaxNotificationsPerPublish=MAX_NOTIFICATIONS_PER_PUBLISH,
        PublishingEnabled=True,
        Priority=0,
    )


def sampling_ms(source: OpcuaSource, route: Route) -> float:
    """The sampling interval to ask for (ms): the source's when set; else the fastest
    (0) for the signals the KPIs time and count (`FASTEST`), the publishing interval (-1)
    for analog tags, which a faster sampling would only make noisier."""
    if source.sampling_interval_ms is not None:
        return float(source.sampling_interval_ms)
    return SAMPLE_FASTEST if route.signal in FASTEST else SAMPLE_AT_PUBLISHING


def queue_size_for(configured: int, publishing_ms: float, sampling_ms: float) -> int:
    """A monitored-item queue that holds every change of one publishing interval: the
    server samples up to publishing/sampling times between two publishes (Part 4
    §5.12.1.5), and a full queue drops a change. At least `configured`. A sampling
    interval of 0 (the server reports each change as it happens) gives no bound: the
    configured size."""
    if sampling_ms <= 0:
        return configured
    return max(configured, math.ceil(publishing_ms / sampling_ms))


def item_request(
    source: OpcuaSource, item: Monitored, publishing_ms: float
) -> ua.MonitoredItemCreateRequest:
    """A monitored item for the node's Value: the sampling interval of `sampling_ms`, a
    queue for one publishing interval of changes (`queue_size_for`) that discards the
    oldest when it overflows all the same (the latest value is the one that must not be
    lost), an absolute deadband (Part 4 §7.22.2) where the node has one."""
    sampling = sampling_ms(source, item.route)
    params = ua.MonitoringParameters(
        ClientHandle=item.handle,
        SamplingInterval=sampling,
        QueueSize=queue_size_for(source.queue_size, publishing_ms, sampling),
        DiscardOldest=True,
    )
    deadband = item.route.deadband
    if deadband is not None:
        params.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute,
            DeadbandValue=float(deadband),
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=item.node_id, AttributeId=AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=params,
    )


def application_uri(certificate: x509.Certificate) -> str | None:
    """The URI in the certificate's SubjectAltName: the client must present it as its
    application URI, or the server rejects the session (Part 4 §5.6.2)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def _is_activate(value: object) -> bool:
    return isinstance(value, ua.ActivateSessionRequest)


def _redact_passwords_in_asyncua_logs() -> None:
    """asyncua logs every request it sends at DEBUG, ActivateSession's user token with it,
    whose password is in clear when the token policy does not encrypt it."""
    redact_log_arguments(
        "asyncua.client.ua_client.UASocketProtocol", "ActivateSessionRequest", _is_activate
    )


async def new_client(source: OpcuaSource) -> Client:
    """A fresh asyncua client with the source's timeout, security and user.

    Raises (`OSError`, `ValueError`, asyncua errors) when the certificate, key or password
    cannot be had, or the server offers no endpoint for the configured security."""
    # A health probe (a Read of ServerStatus) runs this often with this timeout; a dead
    # connection whose socket stays open is found within about two intervals.
    watchdog_s = max(1.0, min(source.timeout_s / 2, 5.0))
    client = Client(source.endpoint, timeout=source.timeout_s, watchdog_intervall=watchdog_s)
    client.name = f"LinePulse ingest {source.id}"
    client.description = client.name
    client.application_uri = f"urn:linepulse:ingest:{source.id}"
    security = source.security
    if security.mode != "None":
        if security.certificate is None or security.private_key is None:  # the model checks
            raise ValueError(f"security mode {security.mode} needs certificate and private_key")
        cert = await uacrypto.load_certificate(str(security.certificate))
        uri = application_uri(cert)
        if uri is None:
            raise ValueError(
                f"client certificate {security.certificate} has no application URI in its "
                "SubjectAltName; OPC-UA servers reject such certificates"
            )
        client.application_uri = uri
        await client.set_security(
            _POLICIES[security.policy],
            certificate=str(security.certificate),
            private_key=str(security.private_key),
            server_certificate=(
                str(security.server_certificate) if security.server_certificate else None
            ),
            mode=_MODES[security.mode],
        )
    if source.credentials is not None:
        client.set_user(source.credentials.username)
        password = source.credentials.secret()
        if password is not None:
            _redact_passwords_in_asyncua_logs()
            client.set_password(password)
    return client


async def resolve(client: Client, routes: list[Route]) -> tuple[list[Monitored], list[Unresolved]]:
    """This server's NodeIds for all routes, numbered by route as ClientHandles, and the
    routes whose node it does not have, each with the reason.

    `nsu=` NodeIds are looked up in the server's NamespaceArray (read once, when one is
    configured), browse paths translated in one TranslateBrowsePaths call, and every node
    then checked in one Read of its NodeClass: a subscription to a node that does not
    exist is refused or, by some servers, accepted and never served."""
    unresolved: list[Unresolved] = []
    parsed: dict[int, ua.NodeId] = {}
    paths: list[tuple[int, ua.BrowsePath]] = []
    objects = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
    for index, route in enumerate(routes):
        try:
            if route.node.node_id is not None:
                parsed[index] = parse_node_id(route.node.node_id)
            else:
                names = parse_browse_path(route.node.browse_path or "")
                paths.append(
                    (index, ua.BrowsePath(StartingNode=objects, RelativePath=relative_path(names)))
                )
        except ValueError as error:
            unresolved.append(Unresolved(route, str(error)))
    namespaces: list[str] = []
    if any(getattr(node_id, "NamespaceUri", None) for node_id in parsed.values()):
        namespaces = list(await client.get_namespace_array())
    node_ids: dict[int, ua.NodeId] = {}
    for index, node_id in parsed.items():
        try:
            node_ids[index] = local_node_id(node_id, namespaces)
        except ValueError as error:
            unresolved.append(Unresolved(routes[index], str(error)))
    if paths:
        results = await client.uaclient.translate_browsepaths_to_nodeids([p for _, p in paths])
        for (index, _), result in zip(paths, results, strict=True):
            route = routes[index]
            if not result.StatusCode.is_good() or not result.Targets:
                why = f"browse path not found ({status_name(result.StatusCode)})"
                unresolved.append(Unresolved(route, why))
                continue
            target = result.Targets[0].TargetId  # an ExpandedNodeId; a local one is a NodeId
            node_ids[index] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
    unresolved.extend(await _not_variables(client, routes, node_ids))
    monitored = [
        Monitored(handle, routes[handle], node_ids[handle])
        for handle in range(len(routes))
        if handle in node_ids
    ]
    order = {id(route): index for index, route in enumerate(routes)}
    unresolved.sort(key=lambda u: order[id(u.route)])
    return monitored, unresolved


async def _not_variables(
    client: Client, routes: list[Route], node_ids: dict[int, ua.NodeId]
) -> list[Unresolved]:
    """Read every node's NodeClass; drop (from `node_ids`) and return those the server does
    not have, or has as something other than a Variable (an Object has no Value)."""
    if not node_ids:
        return []
    order = sorted(node_ids)
    params = ua.ReadParameters(
        MaxAge=0,
        TimestampsToReturn=ua.TimestampsToReturn.Neither,
        NodesToRead=[
            ua.ReadValueId(NodeId=node_ids[index], AttributeId=AttributeIds.NodeClass)
            for index in order
        ],
    )
    results: list[ua.DataValue] = await client.uaclient.read(params)
    unresolved: list[Unresolved] = []
    for index, result in zip(order, results, strict=True):
        status = result.StatusCode
        if status is not None and not status.is_good():
            why = f"no such node on the server ({status_name(status)})"
        else:
            node_class = result.Value.Value if result.Value is not None else None
            if node_class == ua.NodeClass.Variable:
                continue
            known = {c.value: c.name for c in ua.NodeClass}
            name = known.get(node_class, repr(node_class)) if isinstance(node_class, int) else "?"
            why = f"the node's class is {name}, not Variable: it has no value to monitor"
        unresolved.append(Unresolved(routes[index], why))
        del node_ids[index]
    return unresolved


async def subscribe(
    client: Client, source: OpcuaSource, items: list[Monitored], callback: PublishCallback
) -> Subscribed:
    """Create the subscription and all its monitored items in one call; then, for items
    whose queue the server granted smaller than one publishing interval of changes at the
    sampling interval it granted, ask for that queue (ModifyMonitoredItems, one call)."""
    result = await client.uaclient.create_subscription(subscription_parameters(source), callback)
    subscription_id = int(result.SubscriptionId)
    publishing = float(result.RevisedPublishingInterval) or float(source.publishing_interval_ms)
    if not items:
        return Subscribed(subscription_id, publishing, [], [])
    requests = [item_request(source, item, publishing) for item in items]
    params = ua.CreateMonitoredItemsParameters(
        SubscriptionId=subscription_id,
        ItemsToCreate=requests,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
    )
    results = await client.uaclient.create_monitored_items(params)
    created: list[Created] = []
    refused: list[str] = []
    short: list[tuple[int, ua.MonitoredItemModifyRequest]] = []
    for item, request, made in zip(items, requests, results, strict=True):
        if not made.StatusCode.is_good():
            route = item.route
            refused.append(
                f"{route.machine}/{route.signal} ({route.address}): {made.StatusCode.name}"
            )
            continue
        asked = request.RequestedParameters.SamplingInterval
        granted = float(made.RevisedSamplingInterval)
        needed = queue_size_for(source.queue_size, publishing, granted)
        if int(made.RevisedQueueSize) < needed:
            wider = request.RequestedParameters
            wider.QueueSize = needed
            wider.SamplingInterval = granted
            short.append(
                (
                    len(created),
                    ua.MonitoredItemModifyRequest(
                        MonitoredItemId=made.MonitoredItemId, RequestedParameters=wider
                    ),
                )
            )
        created.append(
            Created(
                item,
                publishing if asked < 0 else asked,
                granted,
                needed,
                int(made.RevisedQueueSize),
            )
        )
    if short:
        modified = await client.uaclient.modify_monitored_items(
            ua.ModifyMonitoredItemsParameters(
                SubscriptionId=subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToModify=[request for _, request in short],
            )
        )
        for (position, _), change in zip(short, modified, strict=True):
            if change.StatusCode.is_good():
                before = created[position]
                created[position] = Created(
                    before.item,
                    before.asked_sampling_ms,
                    float(change.RevisedSamplingInterval),
                    before.queue_size,
                    int(change.RevisedQueueSize),
                )
    return Subscribed(subscription_id, publishing, created, refused)


async def read_current(client: Client, items: list[Monitored]) -> list[ua.DataValue]:
    """The current value of every monitored node, in one Read with both timestamps."""
    if not items:
        return []
    params = ua.ReadParameters(
        MaxAge=0,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        NodesToRead=[
            ua.ReadValueId(NodeId=item.node_id, AttributeId=AttributeIds.Value) for item in items
        ],
    )
    values: list[ua.DataValue] = await client.uaclient.read(params)
    return values


def failure_reason(error: BaseException) -> str:
    """What went wrong, in words an operator can act on (asyncua's own text is terse)."""
    name = type(error).__name__
    if name in _HINTS:
        return f"{_HINTS[name]} ({name})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (server not running or wrong port)"
    if isinstance(error, TimeoutError):
        return "timed out waiting for the server"
    text = str(error) or repr(error)
    if "No matching endpoints" in text:
        return f"the server offers no endpoint for this security mode and policy ({text})"
    if isinstance(error, ConnectionError):
        return f"the connection closed (server stopped or network lost): {text}"
    return f"{name}: {text}"


_HINTS: Final = {
    "BadUserAccessDenied": "the server rejected the user (wrong username or password)",
    "BadIdentityTokenInvalid": "the server requires a user (username/password)",
    "BadIdentityTokenRejected": "the server rejected the identity token (a user is needed?)",
    "BadSecurityPolicyRejected": "the server does not accept this security policy",
    "BadSecurityModeRejected": "the server does not accept this security mode",
    "BadSecurityChecksFailed": "security checks failed (certificate or key mismatch)",
    "BadCertificateUntrusted": "the server does not trust the client certificate",
    "BadCertificateInvalid": "the server rejected the client certificate as invalid",
    "BadCertificateUriInvalid": "the certificate's application URI does not match",
}


async def read_history(
    client: Client,
    items: list[tuple[Monitored, datetime]],
    max_values: int,
) -> tuple[list[tuple[Monitored, ua.DataValue]], list[tuple[Monitored, str]]]:
    """The raw history (HistoryRead, Part 11 §6.4.3) of each item from its start on, with no
    end time (so a server clock ahead of ours loses nothing), at most `max_values` a node;
    and the items whose server keeps none, with the reason. One read per node: servers
    differ in how many nodes a HistoryRead may name."""
    found: list[tuple[Monitored, ua.DataValue]] = []
    without: list[tuple[Monitored, str]] = []
    for item, start in items:
        node = client.get_node(item.node_id)
        try:
            values = await node.read_raw_history(start, None, max_values, return_bounds=False)
        except UaStatusCodeError as error:
            without.append((item, status_name(ua.StatusCode(error.code))))
            continue
        found.extend((item, value) for value in values)
    return found, without
