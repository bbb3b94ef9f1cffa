"""The OPC-UA ingester's pure rules: status code -> quality, Variant -> value, event time,
node addresses and the monitored-item settings built from the config."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto import cert_gen
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import BadUserAccessDenied
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from linepulse.sources import OpcuaSource
from services.ingest.opcua_session import (
    Monitored,
    application_uri,
    failure_reason,
    item_request,
    queue_size_for,
    routes_of,
    sampling_ms,
    subscription_parameters,
)
from services.ingest.opcua_values import (
    UnsupportedValue,
    epoch_ms,
    event_time,
    local_node_id,
    parse_browse_path,
    parse_node_id,
    plain_value,
    quality_of,
    withheld,
)

# -- status code -> quality (OPC UA Part 4 §7.34.1: severity in the top two bits) ---------


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (StatusCodes.Good, "good"),
        (StatusCodes.GoodClamped, "good"),
        (StatusCodes.GoodLocalOverride, "good"),
        (0x0000_0400, "good"),  # Good with info bits set (overflow, semantics changed)
        (StatusCodes.Uncertain, "uncertain"),
        (StatusCodes.UncertainLastUsableValue, "uncertain"),
        (StatusCodes.UncertainSensorNotAccurate, "uncertain"),
        (StatusCodes.UncertainSubstituteValue, "uncertain"),
        (StatusCodes.Bad, "bad"),
        (StatusCodes.BadSensorFailure, "bad"),
        (StatusCodes.BadNodeIdUnknown, "bad"),
        (StatusCodes.BadCommunicationError, "bad"),
        (StatusCodes.BadOutOfService, "bad"),
        (0xC000_0000, "bad"),  # reserved severity: "shall be treated as Bad"
        (0xFFFF_FFFF, "bad"),
    ],
)
def test_status_code_severity_gives_quality(code: int, quality: str) -> None:
    assert quality_of(code) == quality
    assert quality_of(ua.StatusCode(ua.UInt32(code))) == quality


def test_a_missing_status_code_is_good() -> None:
    assert quality_of(None) == "good"


# -- Variant -> value ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (True, ua.VariantType.Boolean, True),
        (-3, ua.VariantType.SByte, -3),
        (200, ua.VariantType.Byte, 200),
        (6, ua.VariantType.Int32, 6),
        (4_294_967_295, ua.VariantType.UInt32, 4_294_967_295),
        (2**40, ua.VariantType.Int64, 2**40),
        (1.5, ua.VariantType.Float, 1.5),
        (21.25, ua.VariantType.Double, 21.25),
        ("Execute", ua.VariantType.String, "Execute"),
        ("", ua.VariantType.String, ""),
        (ua.LocalizedText("Running", "en"), ua.VariantType.LocalizedText, "Running"),
    ],
)
def test_scalars_become_plain_values(value: object, kind: ua.VariantType, expected: object) -> None:
    got = plain_value(ua.Variant(value, kind))
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        (None, "no value"),
        (ua.Variant(None, ua.VariantType.Null), "no value"),
        (ua.Variant([1.0, 2.0], ua.VariantType.Double), "arrays are not supported (Double[])"),
        (ua.Variant([], ua.VariantType.Int32), "arrays are not supported (Int32[])"),
        (ua.Variant(b"\x00\x01", ua.VariantType.ByteString), "value type ByteString"),
        (ua.Variant(datetime(2025, 1, 1, tzinfo=UTC), ua.VariantType.DateTime), "DateTime"),
        (ua.Variant(ua.NodeId(ua.Int32(5)), ua.VariantType.NodeId), "value type NodeId"),
        (ua.Variant(ua.LocalizedText(None), ua.VariantType.LocalizedText), "without text"),
        (
            ua.Variant(ua.QualifiedName("x", 2), ua.VariantType.QualifiedName),
            "value type QualifiedName",
        ),
    ],
)
def test_other_values_are_refused_with_a_reason(variant: ua.Variant | None, reason: str) -> None:
    with pytest.raises(UnsupportedValue, match=re.escape(reason)):
        plain_value(variant)


# -- event time and what is no reading ---------------------------------------------------

SOURCE = datetime(2025, 3, 1, 6, 0, 0, 123000, tzinfo=UTC)
SERVER = datetime(2025, 3, 1, 6, 0, 1, tzinfo=UTC)
SOURCE_MS = 1_740_808_800_123


def _value(
    source_ts: datetime | None, status: int = StatusCodes.Good, server_ts: datetime | None = SERVER
) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(1.0),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        SourceTimestamp=source_ts,  # type: ignore[arg-type]
        ServerTimestamp=server_ts,  # type: ignore[arg-type]
    )


def test_event_time_is_the_source_timestamp_in_ms() -> None:
    assert event_time(_value(SOURCE)) == SOURCE_MS
    # The ServerTimestamp is when the server last saw the value, not when it was taken.
    assert event_time(_value(None)) is None


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # …850.95 ms is in millisecond …850: floored, as every LinePulse timestamp is.
        (datetime(2025, 3, 1, 6, 0, 0, 850950, tzinfo=UTC), SOURCE_MS - 123 + 850),
        (datetime(2025, 3, 1, 6, 0, 0, 999999, tzinfo=UTC), SOURCE_MS - 123 + 999),
        (datetime(2025, 3, 1, 6, 0, 0, 1000, tzinfo=UTC), SOURCE_MS - 123 + 1),
        (datetime(2025, 3, 1, 6, 0, 0, 999, tzinfo=UTC), SOURCE_MS - 123),
        # OPC-UA times are UTC; some stacks leave the zone off.
        (datetime(2025, 3, 1, 6, 0, 0, 850950), SOURCE_MS - 123 + 850),  # noqa: DTZ001
        (datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC), -1),
    ],
)
def test_epoch_ms_floors_sub_millisecond_times(moment: datetime, expected: int) -> None:
    assert epoch_ms(moment) == expected


def test_a_sub_millisecond_source_timestamp_is_floored() -> None:
    stamp = datetime(2025, 3, 1, 6, 0, 0, 850950, tzinfo=UTC)
    assert event_time(_value(stamp)) == SOURCE_MS - 123 + 850


@pytest.mark.parametrize(
    ("status", "source_ts", "expected"),
    [
        (StatusCodes.Good, SOURCE, None),
        (StatusCodes.UncertainLastUsableValue, SOURCE, None),
        (StatusCodes.BadSensorFailure, SOURCE, None),  # a reading: emitted as `bad`
        (StatusCodes.BadWaitingForInitialData, SOURCE, "waiting_for_initial_data"),
        (StatusCodes.BadWaitingForInitialData, None, "waiting_for_initial_data"),
        # info bits (here: overflow) do not change what the code means
        (StatusCodes.BadWaitingForInitialData | 0x0480, SOURCE, "waiting_for_initial_data"),
        (StatusCodes.UncertainInitialValue, SOURCE, "waiting_for_initial_data"),
        (StatusCodes.Good, None, "no_source_timestamp"),
        (StatusCodes.BadSensorFailure, None, "no_source_timestamp"),
    ],
)
def test_no_reading_yet_and_no_source_timestamp_are_withheld(
    status: int, source_ts: datetime | None, expected: str | None
) -> None:
    assert withheld(_value(source_ts, status)) == expected


def test_a_value_without_any_timestamp_is_withheld() -> None:
    assert withheld(_value(None, server_ts=None)) == "no_source_timestamp"


# -- node addresses -----------------------------------------------------------------------


def test_node_ids_parse_from_their_string_form() -> None:
    assert parse_node_id("ns=2;s=press-1.State") == ua.NodeId(
        ua.String("press-1.State"), ua.Int16(2)
    )
    assert parse_node_id("ns=3;i=1001") == ua.NodeId(ua.Int32(1001), ua.Int16(3))
    with pytest.raises(ValueError, match=r"'press-1\.State' is not a NodeId"):
        parse_node_id("press-1.State")


NAMESPACES = ["http://opcfoundation.org/UA/", "urn:vendor:server", "urn:plant:press"]


def test_nsu_node_ids_resolve_against_the_servers_namespace_array() -> None:
    node_id = parse_node_id("nsu=urn:plant:press;s=Press1.State")
    local = local_node_id(node_id, NAMESPACES)
    assert local == ua.NodeId(ua.String("Press1.State"), ua.Int16(2))
    assert type(local) is ua.NodeId  # no NamespaceUri left to put on the wire
    # The same config against a server that registered its namespaces in another order.
    assert local_node_id(node_id, [*NAMESPACES[:2], "urn:other", "urn:plant:press"]) == (
        ua.NodeId(ua.String("Press1.State"), ua.Int16(3))
    )
    numeric = local_node_id(parse_node_id("nsu=urn:plant:press;i=1001"), NAMESPACES)
    assert numeric == ua.NodeId(ua.Int32(1001), ua.Int16(2))
    # NodeIds by index pass as they are.
    plain = parse_node_id("ns=5;s=x")
    assert local_node_id(plain, NAMESPACES) == plain


def test_an_unknown_namespace_uri_is_named() -> None:
    with pytest.raises(ValueError, match=r"namespace 'urn:nowhere' is not on the server"):
        local_node_id(parse_node_id("nsu=urn:nowhere;s=Press1.State"), NAMESPACES)


def test_browse_paths_keep_dots_and_dashes_in_names() -> None:
    assert parse_browse_path("2:Plant/2:press-1/3:Motor.Speed") == [
        ua.QualifiedName(Name="Plant", NamespaceIndex=2),
        ua.QualifiedName(Name="press-1", NamespaceIndex=2),
        ua.QualifiedName(Name="Motor.Speed", NamespaceIndex=3),
    ]
    assert parse_browse_path("/2:Plant/") == [ua.QualifiedName(Name="Plant", NamespaceIndex=2)]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("Plant/press-1", "step 'Plant' must be <namespace index>:<name>"),
        ("2:Plant//2:State", "has an empty step"),
        ("", "has an empty step"),
        ("x:Plant", "step 'x:Plant'"),
    ],
)
def test_bad_browse_paths_are_named(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_browse_path(path)


def _source(**extra: Any) -> OpcuaSource:
    spec: dict[str, Any] = {
        "id": "plc-1",
        "endpoint": "opc.tcp://127.0.0.1:4840",
        "publishing_interval_ms": 100,
        "queue_size": 50,
        "machines": [
            {
                "machine": "press-1",
                "nodes": {
                    "state": "ns=2;s=press-1.State",
                    "total_count": {"node_id": "ns=2;s=press-1.Count", "deadband": 2},
                    "temperature": {"browse_path": "2:Plant/2:press-1/2:T", "deadband": 0.5},
                },
            },
            {"machine": "press-2", "nodes": {"speed": "ns=2;i=7"}},
        ],
        **extra,
    }
    return OpcuaSource.model_validate(spec)


def test_routes_map_every_node_to_its_machine_and_signal() -> None:
    routes = routes_of(_source())
    assert [(r.machine, r.signal, r.address) for r in routes] == [
        ("press-1", "state", "ns=2;s=press-1.State"),
        ("press-1", "total_count", "ns=2;s=press-1.Count"),
        ("press-1", "temperature", "path 2:Plant/2:press-1/2:T"),
        ("press-2", "speed", "ns=2;i=7"),
    ]
    # A deadband applies to analog values only: counters and state report every change.
    assert [r.deadband for r in routes] == [None, None, 0.5, None]


def test_monitored_items_carry_sampling_queue_and_absolute_deadband() -> None:
    source = _source(sampling_interval_ms=20)
    routes = routes_of(source)
    node = ua.NodeId(ua.Int32(9), ua.Int16(2))
    analog = item_request(source, Monitored(7, routes[2], node), 100.0)
    params = analog.RequestedParameters
    assert (params.ClientHandle, params.SamplingInterval, params.QueueSize) == (7, 20.0, 50)
    assert params.DiscardOldest
    assert analog.ItemToMonitor.NodeId == node
    assert isinstance(params.Filter, ua.DataChangeFilter)
    assert params.Filter.DeadbandType == ua.DeadbandType.Absolute
    assert params.Filter.DeadbandValue == 0.5
    counter = item_request(source, Monitored(8, routes[1], node), 100.0).RequestedParameters
    assert not isinstance(counter.Filter, ua.DataChangeFilter)
    # A set sampling interval applies to every node; the queue holds one publishing
    # interval of samples when that is more than the configured size.
    assert counter.SamplingInterval == 20.0
    wide = item_request(source, Monitored(8, routes[1], node), 2000.0).RequestedParameters
    assert wide.QueueSize == 100  # 2000 ms / 20 ms


def test_by_default_the_kpi_signals_are_sampled_as_fast_as_the_server_can() -> None:
    source = _source()
    spec = {
        "machine": "press-1",
        "nodes": {
            s: f"ns=2;s={s}"
            for s in ("state", "total_count", "good_count", "reject_count", "product", "reason")
        }
        | {"speed": "ns=2;s=speed"},
    }
    routes = routes_of(_source(machines=[spec]))
    asked = {route.signal: sampling_ms(source, route) for route in routes}
    # 0: the fastest the server offers (Part 4 §5.12.1.2); -1: the publishing interval.
    assert asked == {
        "state": 0.0,
        "total_count": 0.0,
        "good_count": 0.0,
        "reject_count": 0.0,
        "product": 0.0,
        "reason": 0.0,
        "speed": -1.0,
    }
    node = ua.NodeId(ua.Int32(1))
    state = item_request(source, Monitored(0, routes[0], node), 100.0).RequestedParameters
    assert (state.SamplingInterval, state.QueueSize, state.DiscardOldest) == (0.0, 50, True)


@pytest.mark.parametrize(
    ("configured", "publishing", "sampling", "expected"),
    [
        (100, 500.0, 50.0, 100),  # node-opcua's 50 ms: 10 samples fit the default 100
        (5, 500.0, 50.0, 10),
        (5, 500.0, 30.0, 17),  # ceil(16.7)
        (5, 1000.0, 1.0, 1000),
        (5, 500.0, 0.0, 5),  # every change reported as it happens: no bound to size for
        (5, 500.0, -1.0, 5),
        (5, 100.0, 500.0, 5),
    ],
)
def test_the_queue_holds_a_publishing_interval_of_samples(
    configured: int, publishing: float, sampling: float, expected: int
) -> None:
    assert queue_size_for(configured, publishing, sampling) == expected


def test_subscription_keepalive_and_lifetime() -> None:
    params = subscription_parameters(_source())
    assert params.RequestedPublishingInterval == 100.0
    assert params.RequestedMaxKeepAliveCount == 50  # a keep-alive every 5 s
    assert params.RequestedLifetimeCount == 600  # 60 s, >= 3 keep-alives
    assert params.PublishingEnabled


def test_application_uri_comes_from_the_certificate() -> None:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "ingest",
        {},
        [x509.UniformResourceIdentifier("urn:plant:ingest"), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    assert application_uri(cert) == "urn:plant:ingest"


def test_connection_failures_are_explained() -> None:
    assert "wrong username or password" in failure_reason(BadUserAccessDenied())  # type: ignore[no-untyped-call]
    assert "server not running" in failure_reason(ConnectionRefusedError(111, "refused"))
    assert failure_reason(TimeoutError()) == "timed out waiting for the server"
    assert "no endpoint for this security mode" in failure_reason(
        ua.uaerrors.UaError(
            "No matching endpoints: 1, http://opcfoundation.org/UA/SecurityPolicy#None"
        )
    )
    assert failure_reason(ValueError("environment variable PLC_PW is not set")) == (
        "ValueError: environment variable PLC_PW is not set"
    )


def test_missing_password_file_is_a_connection_failure(tmp_path: Path) -> None:
    source = _source(credentials={"username": "u", "password_file": str(tmp_path / "none")})
    assert source.credentials is not None
    with pytest.raises(OSError, match="none") as caught:
        source.credentials.secret()
    assert "FileNotFoundError" in failure_reason(caught.value)
