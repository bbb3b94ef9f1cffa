"""The MQTT ingester against a real Mosquitto that only speaks TLS and only lets known users
in: TLS and a password together, a wrong password, and a broker that requires client
certificates. (TLS alone against the system store, and passwords without TLS, are in
test_ingest_mqtt.py.) Secrets come from the environment or a file, and no log line at
DEBUG carries them.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import MosquittoBroker
from tests.integration.pki import Issued, TestCa
from tests.integration.test_ingest_mqtt import T0, Harness, publish, unique, wait_until

pytestmark = pytest.mark.integration

USER = "line-reader"
PASSWORD = "mqtt-s3cret-pw"


def password_file(folder: Path) -> Path:
    passwords = folder / "passwd"
    subprocess.run(  # noqa: S603 - Debian's mosquitto_passwd, before any I/O
        ["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD],  # noqa: S607
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    return passwords


def tls_config(ca: TestCa, server: Issued, *, require_certificate: bool) -> str:
    return (
        f"cafile {ca.certificate}\ncertfile {server.certificate}\nkeyfile {server.key}\n"
        f"require_certificate {'true' if require_certificate else 'false'}\n"
    )


@pytest.fixture
def pki(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@pytest.fixture
def tls_with_passwords(tmp_path: Path, pki: TestCa) -> Iterator[MosquittoBroker]:
    """TLS only, no anonymous clients."""
    broker = MosquittoBroker(
        tmp_path / "broker",
        extra_config=tls_config(pki, pki.issue("broker", server=True), require_certificate=False)
        + f"password_file {password_file(tmp_path)}\nallow_anonymous false\n",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def topics() -> tuple[str, list[dict[str, str]]]:
    pre = unique("s")
    return pre, [{"pattern": f"{pre}/{{line}}/{{machine}}/{{signal}}"}]


async def test_tls_and_a_password_from_the_environment_carry_data_and_no_log_has_it(
    tls_with_passwords: MosquittoBroker,
    pki: TestCa,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the ingester's, aiomqtt's and paho's own logging
    monkeypatch.setenv("LINE_READER_PASSWORD", PASSWORD)
    pre, patterns = topics()
    harness = Harness(
        tls_with_passwords.port,
        {
            "id": unique("tls-user-"),
            "topics": patterns,
            "tls": {"ca": str(pki.certificate)},
            "credentials": {"username": USER, "password_env": "LINE_READER_PASSWORD"},
        },
    )
    async with harness.running():
        await publish(
            tls_with_passwords.port,
            [(f"{pre}/L1/press1/state", '{"value": "running", "ts": 1700000000000}')],
            username=USER,
            password=PASSWORD,
            tls_context=ssl.create_default_context(cafile=str(pki.certificate)),
        )
        await wait_until(lambda: harness.sink.samples >= 1, "the sample over TLS")
    assert harness.sink.rows() == [(T0, "press1", "state", "running")]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(harness.source)


async def test_a_wrong_password_over_tls_is_refused_retried_and_not_logged(
    tls_with_passwords: MosquittoBroker,
    pki: TestCa,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("a-wrong-guess\n", encoding="utf-8")
    _, patterns = topics()
    harness = Harness(
        tls_with_passwords.port,
        {
            "id": unique("tls-wrong-"),
            "topics": patterns,
            "tls": {"ca": str(pki.certificate)},
            "credentials": {"username": USER, "password_file": str(wrong)},
        },
    )

    def refusals() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "services.ingest.mqtt" and "failed or lost" in r.getMessage()
        ]

    async with harness.running(wait_connected=False) as task:
        await wait_until(lambda: len(refusals()) >= 2, "two refused attempts")
        assert not task.done()  # refused, logged, retried: not crashed
        assert not harness.connected()
    # The TLS handshake succeeded (the CA is right): the broker names the password.
    assert "Not authorized" in refusals()[0], refusals()
    assert "CERTIFICATE_VERIFY_FAILED" not in caplog.text
    assert "a-wrong-guess" not in caplog.text


async def test_a_broker_requiring_client_certificates(
    tmp_path: Path, pki: TestCa, caplog: pytest.LogCaptureFixture
) -> None:
    client = pki.issue("ingest", server=False)
    broker = MosquittoBroker(
        tmp_path / "broker",
        extra_config=tls_config(pki, pki.issue("broker", server=True), require_certificate=True),
    )
    broker.start()
    pre, patterns = topics()
    try:
        caplog.set_level(logging.WARNING, logger="services.ingest.mqtt")
        anonymous = Harness(
            broker.port,
            {"id": unique("no-cert-"), "topics": patterns, "tls": {"ca": str(pki.certificate)}},
        )
        async with anonymous.running(wait_connected=False) as task:
            await wait_until(
                lambda: any("failed or lost" in r.getMessage() for r in caplog.records),
                "the broker to refuse a client without a certificate",
            )
            assert not task.done()
            assert not anonymous.connected()
        # The ingester's own line says only "timed out"; paho's, on the same logger, why.
        assert "CERTIFICATE_REQUIRED" in caplog.text
        tls = {
            "ca": str(pki.certificate),
            "certificate": str(client.certificate),
            "private_key": str(client.key),
        }
        with_cert = Harness(broker.port, {"id": unique("cert-"), "topics": patterns, "tls": tls})
        context = ssl.create_default_context(cafile=str(pki.certificate))
        context.load_cert_chain(str(client.certificate), str(client.key))
        async with with_cert.running():
            await publish(
                broker.port,
                [(f"{pre}/L2/oven/temperature", '{"value": 180, "ts": 1700000000000}')],
                tls_context=context,
            )
            await wait_until(lambda: with_cert.sink.samples >= 1, "the sample over mutual TLS")
        assert with_cert.sink.rows() == [(T0, "oven", "temperature", 180.0)]
    finally:
        broker.stop()
