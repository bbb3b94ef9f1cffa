"""OPC-UA certificates against a real asyncua server that checks them: a PLC that only
trusts the certificates in its trust list accepts the ingester's and refuses another one
with the same application URI, and the ingester says so and retries. Passwords over the
secure channel and the wrong-settings cases are in test_ingest_opcua.py.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from prometheus_client import CollectorRegistry

from linepulse.runtime import free_loopback_ports
from services.ingest.metrics import IngestMetrics
from services.ingest.opcua import OpcuaIngester
from tests.integration.opcua_server import (
    CLIENT_URI,
    PlcServer,
    ServerSecurity,
    machine_variables,
    make_certificate,
)
from tests.integration.test_ingest_opcua import (
    CollectingSink,
    by_node_id,
    ms,
    plant,
    running,
    source,
    until,
)

pytestmark = pytest.mark.integration

PASSWORD = "opcua-s3cret-pw"


async def test_the_plc_trusts_only_listed_certificates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: the password must appear in none
    monkeypatch.setenv("PLC_PASSWORD", PASSWORD)
    server_cert, server_key = make_certificate(
        tmp_path / "server", "test-plc", "urn:linepulse:test-plc:server", server=True
    )
    trusted_cert, trusted_key = make_certificate(
        tmp_path / "trusted", "ingest", CLIENT_URI, server=False
    )
    # Same name, same URI, another key: what an impostor on the plant network would present.
    other_cert, other_key = make_certificate(tmp_path / "other", "ingest", CLIENT_URI, server=False)
    trust_list = tmp_path / "plc-trusted"
    trust_list.mkdir()
    (trust_list / "ingest.pem").write_bytes(trusted_cert.read_bytes())
    store = TrustStore([trust_list], [])
    await store.load()
    (port,) = free_loopback_ports(1)
    plc = PlcServer(port, ServerSecurity(server_cert, server_key, {"ingest": PASSWORD}))
    await plc.start({"press-1": machine_variables()})
    plc.server.set_certificate_validator(
        CertificateValidator(
            CertificateValidatorOptions.TRUSTED | CertificateValidatorOptions.TIME_RANGE, store
        )
    )
    machine = [by_node_id("press-1", total_count="TotalCount")]
    user = {"username": "ingest", "password_env": "PLC_PASSWORD"}

    def secure(cert: Path, key: Path) -> dict[str, str]:
        return {
            "mode": "SignAndEncrypt",
            "policy": "Basic256Sha256",
            "certificate": str(cert),
            "private_key": str(key),
        }

    ingesters = {}
    for sid, (cert, key) in {
        "trusted": (trusted_cert, trusted_key),
        "untrusted": (other_cert, other_key),
    }.items():
        spec = source(sid, plc.endpoint, machine, security=secure(cert, key), credentials=user)
        config = plant([spec], machines=("press-1",))
        ingesters[sid] = OpcuaIngester(
            config.sources.opcua[0],
            config,
            CollectingSink(),
            IngestMetrics.create(CollectorRegistry()),
        )

    def refusals() -> list[str]:
        prefix = f"opcua untrusted: cannot connect to {plc.endpoint}"
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]

    try:
        async with running(ingesters["trusted"]), running(ingesters["untrusted"]) as refused:
            await until(lambda: ingesters["trusted"].connected, "the trusted certificate")
            stamp = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
            await plc.write("press-1.TotalCount", 7, ua.VariantType.UInt32, stamp)
            sink = ingesters["trusted"].sink
            assert isinstance(sink, CollectingSink)
            await until(
                lambda: ("press-1", "total_count", 7.0, ms(stamp), "good") in sink.rows(),
                "data over the trusted session",
            )
            await until(lambda: len(refusals()) >= 2, "the untrusted one to be refused twice")
            assert not refused.done()  # refused, logged, retried
            assert not ingesters["untrusted"].connected
    finally:
        await plc.stop()
    assert "the server does not trust the client certificate" in refusals()[0], refusals()
    assert "(security SignAndEncrypt, user ingest)" in refusals()[0]
    untrusted_sink = ingesters["untrusted"].sink
    assert isinstance(untrusted_sink, CollectingSink)
    assert [r[1:3] for r in untrusted_sink.rows()] == [("state", "unknown")]  # only the marker
    # asyncua logs each request at DEBUG; ActivateSession's (the user token) is blanked.
    assert "ActivateSessionRequest(<redacted>)" in caplog.text
    assert PASSWORD not in caplog.text
