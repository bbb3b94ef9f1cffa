"""Sparkplug B: the codec, topics, and the host's session bookkeeping (pure, no broker)."""

from __future__ import annotations

import logging

import orjson
import pytest

from linepulse.events import source_value
from services.ingest import sparkplug as sp
from services.ingest import sparkplug_b_pb2 as pb
from services.ingest.samples import SampleBatch
from services.ingest.sparkplug import Metric, Payload, SparkplugError, SparkplugTopic

T0 = 1_700_000_000_000

# -- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "datatype"),
    [
        (-128, sp.INT8),
        (127, sp.INT8),
        (-32768, sp.INT16),
        (-(2**31), sp.INT32),
        (2**31 - 1, sp.INT32),
        (-(2**63), sp.INT64),
        (2**63 - 1, sp.INT64),
        (255, sp.UINT8),
        (2**32 - 1, sp.UINT32),
        (2**64 - 1, sp.UINT64),
        (T0, sp.DATETIME),
        (1.1, sp.FLOAT),  # float32 on the wire; read back as the short decimal
        (-0.1, sp.DOUBLE),
        (True, sp.BOOLEAN),
        (False, sp.BOOLEAN),
        ("running", sp.STRING),
        ("long text", sp.TEXT),
        ("", sp.STRING),
    ],
)
def test_every_value_type_survives_a_round_trip(value: sp.Value, datatype: int) -> None:
    metric = Metric(name="m", alias=7, value=value, datatype=datatype, timestamp_ms=T0 + 1)
    decoded = sp.decode_payload(sp.encode_payload([metric], seq=3, timestamp_ms=T0))
    assert decoded == Payload(timestamp_ms=T0, seq=3, metrics=[metric])
    assert type(decoded.metrics[0].value) is type(value)


def test_null_and_inferred_datatypes() -> None:
    metrics = [
        Metric(name="a", alias=None, value=None, datatype=sp.DOUBLE, is_null=True),
        Metric(name="b", alias=None, value=5, datatype=sp.UNKNOWN),
        Metric(name="c", alias=None, value="x", datatype=sp.UNKNOWN),
    ]
    decoded = sp.decode_payload(sp.encode_payload(metrics, seq=None, timestamp_ms=T0))
    assert decoded.seq is None
    assert [(m.value, m.datatype, m.is_null) for m in decoded.metrics] == [
        (None, sp.DOUBLE, True),
        (5, sp.INT64, False),
        ("x", sp.STRING, False),
    ]


def test_signed_values_written_in_their_own_width_read_the_same() -> None:
    # Tahu writes Int8 -1 as 0xFFFFFFFF; other stacks as 0xFF: both are -1.
    assert sp.convert(0xFFFFFFFF, sp.INT8) == -1
    assert sp.convert(0xFF, sp.INT8) == -1
    assert sp.convert(0x7F, sp.INT8) == 127
    assert sp.convert(2**64 - 2, sp.INT64) == -2
    assert sp.convert(2**64 - 2, sp.UINT64) == 2**64 - 2


@pytest.mark.parametrize(
    ("metric", "error"),
    [
        (Metric("a", None, 300, sp.INT8), "out of range for Int8"),
        (Metric("a", None, -1, sp.UINT32), "out of range for UInt32"),
        (Metric("a", None, "x", sp.INT32), "Int32 needs an int"),
        (Metric("a", None, True, sp.INT32), "Int32 needs an int"),
        (Metric("a", None, 1, sp.BOOLEAN), "Boolean needs a bool"),
        (Metric("a", None, 1, sp.STRING), "String needs a str"),
        (Metric("a", None, 1, sp.TEMPLATE), "Template is not supported"),
        (Metric("a", None, None, sp.UNKNOWN, is_null=True), "needs a datatype"),
    ],
)
def test_encoding_refuses_values_that_do_not_fit(metric: Metric, error: str) -> None:
    with pytest.raises(SparkplugError, match=error):
        sp.encode_payload([metric], seq=0, timestamp_ms=T0)


def test_encoding_refuses_a_seq_out_of_range() -> None:
    with pytest.raises(SparkplugError, match=r"seq must be 0\.\.255"):
        sp.encode_payload([], seq=256, timestamp_ms=T0)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not protobuf at all", "wire format is corrupt"),
        (b'{"value": 1}', "wire format is corrupt"),
        (b"\xff\xff\xff\xff", "wire format is corrupt"),
        (b"", "empty Sparkplug B payload"),
        (pb.Payload(seq=300).SerializeToString(), r"seq must be 0\.\.255"),
    ],
)
def test_garbage_is_a_sparkplug_error_with_a_reason(data: bytes, error: str) -> None:
    with pytest.raises(SparkplugError, match=error):
        sp.decode_payload(data)


def test_metrics_that_are_not_telemetry_values_decode_without_a_value() -> None:
    message = pb.Payload(timestamp=T0, seq=0)
    message.metrics.add(name="blob", datatype=sp.BYTES, bytes_value=b"\x00")
    message.metrics.add(name="ds", datatype=sp.DATASET).dataset_value.num_of_columns = 1
    decoded = sp.decode_payload(message.SerializeToString())
    assert [(m.name, m.value, m.datatype) for m in decoded.metrics] == [
        ("blob", None, sp.BYTES),
        ("ds", None, sp.DATASET),
    ]


def test_rebirth_request_is_the_node_control_metric() -> None:
    decoded = sp.decode_payload(sp.rebirth_request(T0))
    assert decoded.metrics == [Metric(sp.REBIRTH, None, True, sp.BOOLEAN)]


# -- topics ---------------------------------------------------------------------------------


def test_topics_and_parsing_agree() -> None:
    assert sp.topic("G", sp.DDATA, "edge1", "press1") == "spBv1.0/G/DDATA/edge1/press1"
    assert sp.topic("G", sp.NBIRTH, "edge1") == "spBv1.0/G/NBIRTH/edge1"
    assert sp.parse_topic("spBv1.0/G/DDATA/edge1/press1") == SparkplugTopic(
        "G", "DDATA", "edge1", "press1"
    )
    assert sp.parse_topic("spBv1.0/G/NDEATH/edge1") == SparkplugTopic("G", "NDEATH", "edge1")


@pytest.mark.parametrize(
    "name",
    [
        "spBv1.0/STATE/host1",  # a host application's state, not an edge node's
        "spBv1.0/G/DDATA/edge1",  # device type without a device
        "spBv1.0/G/NDATA/edge1/dev",  # node type with a device
        "spBv1.0/G/XDATA/edge1",
        "spAv1.0/G/NDATA/edge1",
        "spBv1.0//NDATA/edge1",
        "plant/L1/press1/state",
    ],
)
def test_what_is_not_a_sparkplug_topic(name: str) -> None:
    assert sp.parse_topic(name) is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("G", "DDATA", "e"), "is a device message"),
        (("G", "NDATA", "e", "d"), "is a node message"),
        (("G", "BOGUS", "e"), "unknown Sparkplug message type"),
        (("G/x", "NDATA", "e"), "not a valid Sparkplug id"),
        (("G", "NDATA", "e+"), "not a valid Sparkplug id"),
    ],
)
def test_bad_topic_parts_are_refused(args: tuple[str, ...], error: str) -> None:
    with pytest.raises(SparkplugError, match=error):
        sp.topic(*args)


# -- the host's bookkeeping -----------------------------------------------------------------


class Edge:
    """A scripted edge node: builds the messages, counting seq as a real one would."""

    def __init__(self, host: sp.SparkplugHost, name: str = "edge1") -> None:
        self.host = host
        self.name = name
        self.seq = 0
        self.batch = SampleBatch(["press1", "press2", "edge1"], "src")

    def send(
        self,
        kind: str,
        metrics: list[Metric],
        *,
        device: str | None = None,
        seq: int | None = None,
        at: int = T0,
    ) -> str | None:
        if kind == sp.NBIRTH:
            self.seq = 0
        if kind != sp.NDEATH:
            seq = self.seq if seq is None else seq
            self.seq = sp.next_seq(seq)
        where = SparkplugTopic("G", kind, self.name, device)
        return self.host.handle(where, Payload(at, seq, metrics), at + 5, self.batch, b"raw")

    def rows(self) -> list[tuple[object, ...]]:
        frame, _ = self.batch.take()
        return [(r[0], r[1], r[2], source_value(*r[3:6])) for r in frame.rows()]


def host(**devices: str) -> sp.SparkplugHost:
    return sp.SparkplugHost(
        "G",
        devices=devices,
        metrics={"Production/Count": "total_count"},
        machines=["press1", "press2", "edge1"],
    )


def born(edge: Edge, bd_seq: int = 1) -> None:
    assert edge.send(sp.NBIRTH, [Metric(sp.BDSEQ, None, bd_seq, sp.UINT64)]) is None
    birth = [
        Metric("Production/Count", 1, 10, sp.UINT32),
        Metric("state", 2, "running", sp.STRING),
        Metric("temperature", 3, -4, sp.INT16),
        Metric("Device Control/Rebirth", 4, False, sp.BOOLEAN),
    ]
    assert edge.send(sp.DBIRTH, birth, device="press1") is None
    edge.batch.take()


def test_births_declare_aliases_and_data_is_read_through_them() -> None:
    edge = Edge(host())
    assert edge.send(sp.NBIRTH, [Metric(sp.BDSEQ, None, 1, sp.UINT64)]) is None
    birth = [
        Metric("Production/Count", 1, 10, sp.UINT32),
        Metric("state", 2, "running", sp.STRING),
        Metric("temperature", 3, -4, sp.INT16),
        Metric("Device Control/Rebirth", 4, False, sp.BOOLEAN),
    ]
    assert edge.send(sp.DBIRTH, birth, device="press1") is None
    # Birth values are current values: samples too (bookkeeping metrics are not).
    assert edge.rows() == [
        (T0, "press1", "total_count", 10.0),
        (T0, "press1", "state", "running"),
        (T0, "press1", "temperature", -4.0),
    ]
    # Data by alias, no datatype on the wire (Sparkplug says leave it out): the birth's
    # Int16 reads 0xFFFE as -2. A metric timestamp is the event time.
    data = [
        Metric(None, 1, 11, sp.UNKNOWN, timestamp_ms=T0 + 100),
        Metric(None, 3, 0xFFFE, sp.UNKNOWN),
    ]
    assert edge.send(sp.DDATA, data, device="press1", at=T0 + 200) is None
    assert edge.rows() == [
        (T0 + 100, "press1", "total_count", 11.0),
        (T0 + 200, "press1", "temperature", -2.0),
    ]
    assert edge.host.seq_gaps == 0


def test_device_ids_map_to_machines_through_config() -> None:
    edge = Edge(host(**{"edge1/plc-7": "press2"}))
    born(edge)
    edge.send(sp.DBIRTH, [Metric("speed", 1, 3.5, sp.DOUBLE)], device="plc-7")
    edge.send(sp.DDATA, [Metric(None, 1, 4.5, sp.UNKNOWN)], device="plc-7")
    assert edge.rows() == [(T0, "press2", "speed", 3.5), (T0, "press2", "speed", 4.5)]


def test_unknown_device_is_one_dead_letter_per_message() -> None:
    edge = Edge(host())
    born(edge)
    edge.send(sp.DBIRTH, [Metric(f"m{i}", i, i, sp.INT32) for i in range(50)], device="ghost")
    frame, letters = edge.batch.take()
    assert frame.height == 0
    assert [letter.reason for letter in letters] == [
        "unknown machine 'ghost' (Sparkplug device edge1/ghost)"
    ]
    assert letters[0].raw == b"raw"


def test_an_alias_the_birth_did_not_declare_is_held_then_a_dead_letter() -> None:
    edge = Edge(host())
    born(edge)
    reason = edge.send(sp.DDATA, [Metric(None, 99, 1, sp.UNKNOWN)], device="press1")
    assert reason == "unknown alias 99"
    # Held off: the next bad message within REBIRTH_HOLDOFF_MS does not ask again.
    assert edge.send(sp.DDATA, [Metric(None, 98, 1, sp.UNKNOWN)], device="press1") is None
    assert edge.batch.take()[1] == []  # held for the birth asked for
    assert edge.host.rebirths_asked == 1
    # No birth within HOLD_MS: what was held goes where it always went, a dead letter.
    edge.send(sp.NDATA, [], at=T0 + sp.HOLD_MS)
    _, letters = edge.batch.take()
    assert ["unknown alias(es) [99]" in x.reason for x in letters] == [True, False]
    assert "unknown alias(es) [98]" in letters[1].reason
    assert edge.host.unknown_aliases == 2


def test_data_before_any_birth_is_held_and_decoded_by_the_birth_it_asks_for() -> None:
    edge = Edge(host())
    data = [Metric(None, 1, 5, sp.UNKNOWN, timestamp_ms=T0 - 50)]
    reason = edge.send(sp.DDATA, data, device="press1", seq=17)
    assert reason == "unknown alias 1"
    assert edge.batch.take()[0].height == 0  # held, not dropped, not a dead letter
    born(edge)  # the rebirth: NBIRTH, then the device's DBIRTH declaring alias 1
    assert edge.host.held_decoded == 1
    assert edge.host.before_birth == 0


def test_held_data_of_a_node_that_never_rebirths_is_counted_not_dead_lettered() -> None:
    edge = Edge(host())
    edge.send(sp.DDATA, [Metric(None, 1, 5, sp.UNKNOWN)], device="press1", seq=17)
    edge.send(sp.NDATA, [], at=T0 + sp.HOLD_MS, seq=18)
    _, letters = edge.batch.take()
    # A host that started after the node cannot know its aliases: not bad input.
    assert letters == []
    assert (edge.host.before_birth, edge.host.unknown_aliases) == (1, 0)


def test_held_messages_per_node_are_bounded() -> None:
    edge = Edge(host())
    for i in range(sp.HOLD_MESSAGES + 5):
        edge.send(sp.DDATA, [Metric(None, 1, i, sp.UNKNOWN)], device="press1", seq=i % 256)
    assert len(edge.host.nodes["edge1"].held) == sp.HOLD_MESSAGES
    assert edge.host.before_birth == 5  # the ones past the bound, as without holding


def test_sessions_survive_a_restart_through_a_snapshot() -> None:
    before = Edge(host())
    born(before)
    assert before.host.changed
    doc = orjson.loads(orjson.dumps(before.host.snapshot()))  # as the file holds it
    assert not before.host.changed
    after = Edge(host())
    assert after.host.restore(doc) == 1
    after.seq = 40  # the node went on while the ingester was away
    data = [Metric(None, 1, 12, sp.UNKNOWN), Metric(None, 3, 0xFFFE, sp.UNKNOWN)]
    reason = after.send(sp.DDATA, data, device="press1", at=T0 + 300)
    # Decoded at once with the saved aliases and datatypes (Int16 0xFFFE is -2) ...
    assert after.rows() == [
        (T0 + 300, "press1", "total_count", 12.0),
        (T0 + 300, "press1", "temperature", -2.0),
    ]
    # ... and one rebirth asked, in case the node was born again meanwhile; no seq gap.
    assert reason == "restored its session from before the restart"
    assert after.host.seq_gaps == 0
    assert after.send(sp.DDATA, data, device="press1") is None


def test_a_snapshot_of_another_group_or_version_is_refused() -> None:
    doc = host().snapshot()
    other = sp.SparkplugHost("H", devices={}, metrics={}, machines=["press1"])
    with pytest.raises(ValueError, match="group 'G'"):
        other.restore(doc)
    with pytest.raises(ValueError, match="version 0"):
        host().restore({**doc, "version": 0})


def test_a_rebirth_asked_on_joining_late_is_info_one_asked_after_a_birth_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Joining after a node's birth, asking for one is Sparkplug's normal start; a node whose
    birth was seen and still sends undeclared aliases has lost step with the host."""
    caplog.set_level(logging.INFO, logger="services.ingest.sparkplug")
    late = Edge(host())
    late.send(sp.DDATA, [Metric(None, 1, 5, sp.UNKNOWN)], device="press1")
    born_first = Edge(host())
    born(born_first)
    born_first.send(sp.DDATA, [Metric(None, 99, 1, sp.UNKNOWN)], device="press1")
    asked = [(r.levelno, r.getMessage()) for r in caplog.records if "rebirth" in r.getMessage()]
    prefix = "sparkplug G/edge1: asking for a rebirth: unknown alias"
    assert asked == [
        (logging.INFO, f"{prefix} 1 (joined after its birth)"),
        (logging.WARNING, f"{prefix} 99"),
    ]


def test_seq_gap_asks_for_a_rebirth_and_wraps_at_255() -> None:
    edge = Edge(host())
    born(edge)
    edge.host.nodes["edge1"].seq, edge.seq = 254, 255
    assert edge.send(sp.DDATA, [Metric(None, 1, 12, sp.UNKNOWN)], device="press1") is None
    assert edge.seq == 0  # 255 -> 0 is no gap
    assert edge.send(sp.DDATA, [Metric(None, 1, 13, sp.UNKNOWN)], device="press1") is None
    reason = edge.send(sp.DDATA, [Metric(None, 1, 14, sp.UNKNOWN)], device="press1", seq=5)
    assert reason == "seq gap: expected 1, got 5"
    assert edge.host.seq_gaps == 1
    # The data around the gap is still used.
    assert [r[3] for r in edge.rows()] == [12.0, 13.0, 14.0]


def test_a_new_birth_resets_seq_and_aliases() -> None:
    edge = Edge(host())
    born(edge)
    edge.send(sp.DDATA, [Metric(None, 1, 12, sp.UNKNOWN)], device="press1", seq=40)
    edge.batch.take()
    born(edge, bd_seq=2)  # seq 0 again: no gap
    assert edge.host.seq_gaps == 1  # only the jump to 40
    assert edge.host.nodes["edge1"].bd_seq == 2


def test_ndeath_marks_the_nodes_machines_unknown_at_receive_time() -> None:
    edge = Edge(host(), name="cell3")  # a gateway, not a machine itself
    born(edge)
    edge.send(sp.DBIRTH, [Metric("state", 1, "idle", sp.STRING)], device="press2")
    edge.batch.take()
    assert edge.send(sp.NDEATH, [Metric(sp.BDSEQ, None, 1, sp.UINT64)], at=T0 + 1000) is None
    assert edge.rows() == [
        (T0 + 1005, "press1", "state", "unknown"),
        (T0 + 1005, "press2", "state", "unknown"),
    ]
    # The session is gone: its aliases are no longer trusted.
    assert edge.send(sp.DDATA, [Metric(None, 1, 1, sp.UNKNOWN)], device="press1") is not None


def test_ndeath_of_an_older_session_is_ignored() -> None:
    edge = Edge(host())
    born(edge, bd_seq=5)
    assert edge.send(sp.NDEATH, [Metric(sp.BDSEQ, None, 4, sp.UINT64)]) is None
    assert edge.rows() == []
    assert edge.send(sp.DDATA, [Metric(None, 1, 12, sp.UNKNOWN)], device="press1") is None
    assert edge.rows() == [(T0, "press1", "total_count", 12.0)]


def test_ddeath_marks_only_that_devices_machine_unknown() -> None:
    edge = Edge(host())
    born(edge)
    edge.send(sp.DBIRTH, [Metric("state", 1, "idle", sp.STRING)], device="press2")
    edge.batch.take()
    assert edge.send(sp.DDEATH, [], device="press1", at=T0 + 50) is None
    assert edge.rows() == [(T0 + 55, "press1", "state", "unknown")]


def test_node_metrics_are_samples_only_when_the_node_is_a_machine() -> None:
    plc = Edge(host(), name="edge1")  # "edge1" is a configured machine here
    plc.send(sp.NBIRTH, [Metric(sp.BDSEQ, None, 0, sp.UINT64), Metric("speed", 1, 2.0, sp.DOUBLE)])
    plc.send(sp.NDATA, [Metric(None, 1, 3.0, sp.UNKNOWN)])
    assert plc.rows() == [(T0, "edge1", "speed", 2.0), (T0, "edge1", "speed", 3.0)]
    gateway = Edge(host(), name="gateway")
    gateway.send(sp.NBIRTH, [Metric("cpu", 1, 2.0, sp.DOUBLE)])
    assert gateway.send(sp.NDATA, [Metric(None, 1, 3.0, sp.UNKNOWN)]) is None
    assert gateway.batch.take()[0].height == 0
    assert gateway.batch.letters == []


def test_values_a_sample_cannot_hold_are_dead_letters_and_nulls_are_skipped() -> None:
    edge = Edge(host())
    born(edge)
    edge.send(
        sp.DDATA,
        [
            Metric("blob", None, None, sp.BYTES),
            Metric("temperature", None, None, sp.INT16, is_null=True),
            Metric("state", None, None, sp.STRING, is_null=True),
            Metric("speed", None, float("nan"), sp.DOUBLE),
        ],
        device="press1",
    )
    frame, letters = edge.batch.take()
    assert frame.rows() == [(T0, "press1", "state", None, None, "unknown", None, "good")]
    assert [letter.reason for letter in letters] == [
        "metric 'blob': datatype Bytes is not a telemetry value",
        "speed: value must be finite, got nan",
    ]
