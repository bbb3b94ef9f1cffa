"""The KPI API over real HTTP (uvicorn on loopback through linepulse.runtime.serve_http):
HTTPS with a certificate from a CA made here, client certificates, the body limit on a
streamed (chunked) body, the CORS preflight of an allowed and a foreign origin, and the
rate limit's 429 with Retry-After, driven by a small bucket rather than by time."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from linepulse.config import PlantConfig
from linepulse.http.settings import ApiAccess, HttpLimits, TlsSettings
from linepulse.runtime import free_loopback_ports, serve_http
from services.kpi.api import create_app
from services.kpi.store import KpiStore
from tests.unit.kpi.test_stops import M1_DAY, ms, plant_config

pytestmark = pytest.mark.integration

TOKEN = "tls-test-token"
BOARD_ORIGIN = "https://board.plant.example"


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by the same CA, for mutual TLS
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    subject: str,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("LinePulse test CA", _name("LinePulse test CA"), ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("127.0.0.1", ca_cert.subject, ca_key, server_key, server=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("grafana", ca_cert.subject, ca_key, client_key)
    pki = Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


# -- the served API ------------------------------------------------------------------------


@pytest.fixture
def plant() -> PlantConfig:
    return plant_config()


@pytest.fixture
def store(tmp_path: Path, plant: PlantConfig) -> Iterator[KpiStore]:
    with KpiStore(tmp_path / "kpi.duckdb", plant) as opened:
        opened.status.upsert(M1_DAY)
        yield opened


def kpi_app(
    plant: PlantConfig,
    store: KpiStore,
    *,
    limits: HttpLimits | None = None,
    cors_origins: tuple[str, ...] = (),
) -> FastAPI:
    guard = ApiAccess(
        tokens=(SecretStr(TOKEN),), limits=limits or HttpLimits(), cors_origins=cors_origins
    )
    return create_app(plant, store, CollectorRegistry(), access=guard)


@asynccontextmanager
async def served(app: FastAPI, tls: TlsSettings | None = None) -> AsyncIterator[str]:
    """`app` served by uvicorn as the services serve it; yields its base URL."""
    (port,) = free_loopback_ports(1)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        server = serve_http(group, stop, app, "127.0.0.1", port, "api", lifespan="on", tls=tls)
        app.state.board.stop_when(lambda: server.should_exit)
        try:
            async with asyncio.timeout(20):
                while not server.started:
                    await asyncio.sleep(0.02)
            yield f"{'http' if tls is None else 'https'}://127.0.0.1:{port}"
        finally:
            stop.set()


def trusting(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


# -- TLS -----------------------------------------------------------------------------------


async def test_https_with_the_ca_answers_and_plain_http_does_not(
    pki: Pki, plant: PlantConfig, store: KpiStore
) -> None:
    tls = TlsSettings(certfile=pki.server_cert, keyfile=pki.server_key)
    async with served(kpi_app(plant, store), tls) as url:
        async with httpx.AsyncClient(verify=trusting(pki), timeout=10) as client:
            response = await client.get(url + "/v1/machines")
            assert response.status_code == 200
            assert [m["machine"] for m in response.json()] == ["m1", "m2", "m3"]
            assert response.http_version == "HTTP/1.1"
        # Plain HTTP to the TLS port: the server expects a TLS handshake and hangs up.
        plain = url.replace("https://", "http://")
        async with httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(plain + "/v1/machines")
        # A client that does not trust the CA refuses the server's certificate.
        async with httpx.AsyncClient(timeout=10) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(url + "/v1/machines")


async def test_client_certificates_when_required(
    pki: Pki, plant: PlantConfig, store: KpiStore
) -> None:
    tls = TlsSettings(
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        client_ca=pki.ca,
        client_certs="required",
    )
    async with served(kpi_app(plant, store), tls) as url:
        async with httpx.AsyncClient(verify=trusting(pki, client_cert=True), timeout=10) as client:
            assert (await client.get(url + "/healthz")).status_code == 200
        async with httpx.AsyncClient(verify=trusting(pki), timeout=10) as client:
            with pytest.raises(httpx.TransportError):  # no certificate: handshake refused
                await client.get(url + "/healthz")


# -- size, CORS, rate ----------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_streamed_or_declared(
    plant: PlantConfig, store: KpiStore
) -> None:
    app = kpi_app(plant, store, limits=HttpLimits(max_body_bytes=1024))
    reason = f"/v1/stops/m1@{ms(10)}/reason"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    chunks: list[bytes] = []

    async def streamed(parts: int) -> AsyncIterator[bytes]:
        yield b'{"reason": "jam", "by": "ann", "note": "'
        for _ in range(parts):
            chunks.append(b"x" * 256)
            yield b"x" * 256
        yield b'"}'

    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        declared = await client.post(reason, content=b"{" + b" " * 2000 + b"}", headers=auth)
        assert declared.status_code == 413
        assert "1024 bytes" in declared.json()["detail"]
        # No Content-Length: chunked, so only counting the bytes as they come catches it.
        big = await client.post(reason, content=streamed(8), headers=auth)
        assert big.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in big.request.headers
        assert big.status_code == 413
        # Under the limit, the same streamed shape reaches the endpoint (no producer: 503).
        small = await client.post(reason, content=streamed(1), headers=auth)
        assert small.status_code == 503, small.text
        assert "without a producer" in small.json()["detail"]
        assert (await client.get(f"/v1/stops/m1@{ms(10)}")).json()["corrections"] == 0


async def test_cors_preflight_for_an_allowed_origin_only(
    plant: PlantConfig, store: KpiStore
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    reason = f"/v1/stops/m1@{ms(10)}/reason"
    app = kpi_app(plant, store, cors_origins=(BOARD_ORIGIN,))
    async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        allowed = await client.options(reason, headers={**preflight, "Origin": BOARD_ORIGIN})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == BOARD_ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers
        foreign = await client.options(
            reason, headers={**preflight, "Origin": "https://evil.example"}
        )
        assert foreign.status_code == 400
        assert "access-control-allow-origin" not in foreign.headers
        # A refusal still carries the CORS headers, so the page can read why.
        refused = await client.post(reason, json={}, headers={"Origin": BOARD_ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == BOARD_ORIGIN
    async with served(kpi_app(plant, store)) as url:  # the default: no origin allowed
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            closed = await client.options(reason, headers={**preflight, "Origin": BOARD_ORIGIN})
            assert "access-control-allow-origin" not in closed.headers
            read = await client.get("/v1/machines", headers={"Origin": BOARD_ORIGIN})
            assert read.status_code == 200
            assert "access-control-allow-origin" not in read.headers


async def test_the_rate_limit_answers_429_with_retry_after(
    plant: PlantConfig, store: KpiStore
) -> None:
    # Three reads, then one every 100 s: the fourth is refused whatever the machine's speed.
    limits = HttpLimits(read_rate_per_s=0.01, read_burst=3)
    async with served(kpi_app(plant, store, limits=limits)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            codes = [(await client.get("/v1/machines")).status_code for _ in range(3)]
            assert codes == [200, 200, 200]
            limited = await client.get("/v1/stops")
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 100
            assert "retry in" in limited.json()["detail"]
            assert (await client.get("/metrics")).status_code == 200  # exempt
            assert (await client.get("/healthz")).status_code == 200
            # A valid token is a client of its own, with a full bucket.
            keyed = await client.get("/v1/machines", headers={"X-API-Key": TOKEN})
            assert keyed.status_code == 200
