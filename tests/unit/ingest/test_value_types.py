"""Each ingester gives a value the type it had at the source, and the KPI side decodes that
type from the Arrow record the Kafka sink sends (issue 14, item 3: "0042" from OPC-UA and
"0815" from Sparkplug B arrived as 42.0 and 815.0).

Each test goes through the ingester's own event building into a `SampleBatch`, then
`encode_arrow` (what the sink sends) and `decode_records` (what the KPI worker reads), and
compares type and value (3 == 3.0 in Python, so equality alone would not do).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from asyncua import ua
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig, parse_config
from linepulse.events import to_json_events
from linepulse.wire import ARROW, decode_records, encode_arrow
from services.ingest import sparkplug as sp
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from services.ingest.opcua_values import plain_value
from services.ingest.samples import DeadLetter, SampleBatch
from services.ingest.sparkplug import Metric

T0 = 1_793_599_200_000
OUT_OF_RANGE = "value is outside the 64-bit integer range -2**63..2**63-1"


def decoded_values(batch: SampleBatch) -> tuple[list[tuple[type, Any]], list[str]]:
    """The values the KPI side reads from the record the sink sends, with their types; the
    reasons of the dead letters."""
    frame, letters = batch.take()
    decoded = decode_records([(encode_arrow(frame), [("content-type", ARROW.encode())], 0)])
    assert decoded.rejected == []
    values = [e["value"] for e in to_json_events(decoded.events)]
    return [(type(v), v) for v in values], [letter.reason for letter in letters]


def typed(*values: Any) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in values]


# -- MQTT: JSON payloads by JSON type, plain payloads by the JSON number grammar -------------


class _NoSink:
    async def put(self, events: pl.DataFrame) -> None:  # pragma: no cover - never flushed
        raise AssertionError("driven synchronously: nothing is flushed")

    async def dead_letter(self, letters: list[DeadLetter]) -> None:  # pragma: no cover
        raise AssertionError("driven synchronously: nothing is flushed")

    def position(self) -> int:  # pragma: no cover - never flushed
        raise AssertionError("nothing is flushed")

    async def kept(self, position: int) -> None:  # pragma: no cover - never flushed
        raise AssertionError("nothing is flushed")


def plant() -> PlantConfig:
    return parse_config(
        {
            "site": "types",
            "lines": [{"id": "line-1", "machines": [{"id": "m1"}, {"id": "press1"}]}],
            "sources": {
                "mqtt": [
                    {
                        "id": "broker",
                        "topics": [
                            {"pattern": "json/{machine}/{signal}"},
                            {"pattern": "plain/{machine}/{signal}", "format": "plain"},
                        ],
                        "sparkplug": {"group": "G"},
                    }
                ]
            },
        }
    )


def ingester() -> MqttIngester:
    config = plant()
    return MqttIngester(
        config.sources.mqtt[0], config, _NoSink(), IngestMetrics.create(CollectorRegistry())
    )


def test_mqtt_json_payloads_keep_the_json_type() -> None:
    mqtt = ingester()
    payloads = [
        ("product", b'{"value": "0042", "ts": 1793599200000}'),
        ("product", b'"1e3"'),
        ("product", b'{"value": "NaN"}'),
        ("total_count", b'{"value": 9007199254740993}'),
        ("total_count", b"9223372036854775807"),
        ("temperature", b'{"value": 0.1}'),
        ("temperature", b"3.0"),
        ("door_open", b'{"value": true}'),
    ]
    for signal, payload in payloads:
        mqtt._plain(f"json/m1/{signal}", payload)
    values, letters = decoded_values(mqtt._batch)
    assert letters == []
    assert values == typed("0042", "1e3", "NaN", 2**53 + 1, 2**63 - 1, 0.1, 3.0, True)


@pytest.mark.parametrize("number", [b"9223372036854775808", b"18446744073709551616"])
def test_mqtt_json_integers_beyond_64_bits_are_dead_letters(number: bytes) -> None:
    mqtt = ingester()
    mqtt._plain("json/m1/total_count", b'{"value": ' + number + b"}")
    values, letters = decoded_values(mqtt._batch)
    assert values == []
    assert letters == [
        f"total_count: {OUT_OF_RANGE}: {number.decode()} (send it as a float or as text)"
    ]


def test_mqtt_plain_payloads_are_numbers_only_when_json_would_read_one() -> None:
    mqtt = ingester()
    for payload in (b"0042", b"1e3", b"NaN", b"9007199254740993", b"3.0", b"true"):
        mqtt._plain("plain/m1/reading", payload)
    values, letters = decoded_values(mqtt._batch)
    assert letters == []
    assert values == typed("0042", 1000.0, "NaN", 2**53 + 1, 3.0, "true")


# -- Sparkplug B: the metric's datatype decides ---------------------------------------------


def sparkplug_values(
    metrics: list[Metric], *, data_datatype: bool = False
) -> tuple[list[tuple[type, Any]], list[str]]:
    """Birth a device with `metrics` and send them again by alias in a DDATA, as an edge
    node does (without the datatype, which the birth declared, unless `data_datatype`);
    both go through the codec and the ingester's host."""
    mqtt = ingester()
    host = mqtt.host
    assert host is not None
    node = [Metric(sp.BDSEQ, None, 0, sp.UINT64)]
    birth = [Metric(m.name, i, m.value, m.datatype) for i, m in enumerate(metrics)]
    data = [
        Metric(None, i, m.value, m.datatype if data_datatype else sp.UNKNOWN)
        for i, m in enumerate(metrics)
    ]
    messages = [(sp.NBIRTH, None, node), (sp.DBIRTH, "press1", birth), (sp.DDATA, "press1", data)]
    for seq, (kind, device, sent) in enumerate(messages):
        where = sp.parse_topic(sp.topic("G", kind, "edge1", device))
        assert where is not None
        raw = sp.encode_payload(sent, seq=seq, timestamp_ms=T0 + seq)
        assert host.handle(where, sp.decode_payload(raw), T0 + 10, mqtt._batch, raw) is None
    return decoded_values(mqtt._batch)


def test_sparkplug_datatypes_give_their_type() -> None:
    metrics = [
        Metric("product", None, "0815", sp.STRING),
        Metric("code", None, "1e3", sp.TEXT),
        Metric("label", None, "NaN", sp.STRING),
        Metric("total_count", None, 2**53 + 1, sp.UINT64),
        Metric("good_count", None, 2**63 - 1, sp.INT64),
        Metric("reject_count", None, 4_294_967_295, sp.UINT32),
        Metric("offset", None, -(2**63), sp.INT64),
        Metric("speed", None, 0.1, sp.DOUBLE),
        Metric("torque", None, 3.0, sp.DOUBLE),
        Metric("ratio", None, 0.1, sp.FLOAT),  # float32, read back as its shortest decimal
        Metric("door_open", None, True, sp.BOOLEAN),
        Metric("changed_at", None, T0, sp.DATETIME),
    ]
    values, letters = sparkplug_values(metrics)
    assert letters == []
    want = typed(
        "0815", "1e3", "NaN", 2**53 + 1, 2**63 - 1, 4_294_967_295, -(2**63), 0.1, 3.0, 0.1, True, T0
    )
    assert values == want + want  # the birth's values, then the data's by alias


def test_a_uint64_above_the_int64_maximum_is_a_dead_letter_with_its_reason() -> None:
    metric = Metric("total_count", None, 2**64 - 1, sp.UINT64)
    values, letters = sparkplug_values([metric], data_datatype=True)
    assert values == []
    reason = f"total_count: {OUT_OF_RANGE}: {2**64 - 1} (send it as a float or as text)"
    assert letters == [reason, reason]


def test_a_whole_number_sent_in_an_integer_field_under_a_double_datatype_is_a_float() -> None:
    assert sp.convert(3, sp.DOUBLE) == 3.0
    assert type(sp.convert(3, sp.DOUBLE)) is float
    assert type(sp.convert(3, sp.FLOAT)) is float


# -- OPC-UA: the Variant's type decides ------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "value"),
    [
        (ua.Variant("0042", ua.VariantType.String), "0042"),
        (ua.Variant("1e3", ua.VariantType.String), "1e3"),
        (ua.Variant(ua.LocalizedText("NaN"), ua.VariantType.LocalizedText), "NaN"),
        (ua.Variant(2**53 + 1, ua.VariantType.Int64), 2**53 + 1),
        (ua.Variant(2**63 - 1, ua.VariantType.UInt64), 2**63 - 1),
        (ua.Variant(-(2**63), ua.VariantType.Int64), -(2**63)),
        (ua.Variant(65535, ua.VariantType.UInt16), 65535),
        (ua.Variant(-7, ua.VariantType.SByte), -7),
        (ua.Variant(0.1, ua.VariantType.Double), 0.1),
        (ua.Variant(3, ua.VariantType.Double), 3.0),  # the Variant's type, not the Python one
        (ua.Variant(0.5, ua.VariantType.Float), 0.5),
        (ua.Variant(True, ua.VariantType.Boolean), True),
    ],
)
def test_opcua_variant_types_give_their_type(variant: ua.Variant, value: Any) -> None:
    batch = SampleBatch(["m1"], "plc")
    assert batch.add(T0, "m1", "reading", plain_value(variant))
    values, letters = decoded_values(batch)
    assert letters == []
    assert values == typed(value)


def test_an_opcua_uint64_above_the_int64_maximum_is_a_dead_letter_with_its_reason() -> None:
    batch = SampleBatch(["m1"], "plc")
    assert not batch.add(
        T0, "m1", "total_count", plain_value(ua.Variant(2**64 - 1, ua.VariantType.UInt64))
    )
    values, letters = decoded_values(batch)
    assert values == []
    assert letters == [f"total_count: {OUT_OF_RANGE}: {2**64 - 1} (send it as a float or as text)"]
