"""Fuzz target: Sparkplug B payloads and the host's session state over a run of messages.

One input is a short run of messages from one edge node. Each message is a header byte
(message type and device) and a length-prefixed protobuf payload; the payload bytes are
mutated raw, so both corrupt wire data and well-formed but hostile payloads (any
datatype with any value field, unknown aliases, NaN, seq jumps, a DBIRTH before the
NBIRTH, a late NDEATH) reach `decode_payload` and `SparkplugHost.handle`. Contract:
`decode_payload` raises nothing but `SparkplugError` (with a reason); `handle` raises
nothing; the batch survives `take()` and every dead letter serialises for the DLQ.

    python -m tests.fuzz.sparkplug_payload -atheris_runs=100000
"""

from __future__ import annotations

import logging
import sys

import atheris

with atheris.instrument_imports(include=["linepulse", "services"]):
    import orjson

    from services.ingest import sparkplug as sp
    from services.ingest.samples import SampleBatch

from tests.fuzz.harness import check_reason, fuzz

GROUP = "plant"
MACHINES = ("edge-1", "press", "robot")
TYPES = (sp.NBIRTH, sp.NDATA, sp.DBIRTH, sp.DDATA, sp.DDEATH, sp.NDEATH)
DEVICES = ("press", "robot", "stranger")


def message(kind: int, payload: bytes) -> bytes:
    """The input form of one message: header byte, payload length (2 bytes), payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def seeds() -> list[bytes]:
    """A birth, aliased data, a device's life and the node's death: the session's shape."""
    birth = sp.encode_payload(
        [
            sp.Metric(sp.BDSEQ, None, 3, sp.UINT64),
            sp.Metric("state", 1, "running", sp.STRING),
            sp.Metric("Production/Count", 2, 10, sp.INT32),
            sp.Metric("speed", 3, 1.5, sp.FLOAT),
        ],
        seq=0,
        timestamp_ms=1_793_599_200_000,
    )
    data = sp.encode_payload(
        [sp.Metric(None, 2, -5, sp.UNKNOWN), sp.Metric(None, 3, 2.25, sp.UNKNOWN)],
        seq=1,
        timestamp_ms=1_793_599_201_000,
    )
    device = sp.encode_payload(
        [sp.Metric("total_count", 7, 4, sp.UINT16), sp.Metric("state", 8, None, sp.STRING)],
        seq=2,
        timestamp_ms=1_793_599_202_000,
    )
    death = sp.encode_payload([sp.Metric(sp.BDSEQ, None, 3, sp.UINT64)], seq=None, timestamp_ms=1)
    return [
        message(0, birth) + message(1, data),
        message(0, birth) + message(2, device) + message(3 + 6, data) + message(4, device),
        message(2 + 6, device) + message(5, death) + message(1, data),
    ]


def test_one_input(data: bytes) -> None:
    host = sp.SparkplugHost(
        GROUP,
        devices={"edge-1/press": "press"},
        metrics={"Production/Count": "total_count"},
        machines=MACHINES,
    )
    batch = SampleBatch(MACHINES, "fuzz")
    received = 1_793_599_200_000
    while len(data) >= 3:
        header, size = data[0], int.from_bytes(data[1:3], "big")
        payload, data = data[3 : 3 + size], data[3 + size :]
        kind = TYPES[header % len(TYPES)]
        device = DEVICES[(header // len(TYPES)) % len(DEVICES)] if kind[0] == "D" else None
        where = sp.SparkplugTopic(GROUP, kind, "edge-1", device)
        try:
            decoded = sp.decode_payload(payload)
        except sp.SparkplugError as error:
            check_reason(error)
            continue
        received += 1000
        reason = host.handle(where, decoded, received, batch, payload)
        assert reason is None or reason.strip()
    _, letters = batch.take()
    for letter in letters:
        check_reason(ValueError(letter.reason))
        orjson.dumps(letter.as_record())


def main() -> None:
    logging.disable(logging.WARNING)  # seq gaps and rebirths are expected here, by the million
    fuzz(test_one_input, seeds())


if __name__ == "__main__":
    main()
    sys.exit(0)
