"""`kafka.security` in the plant config: what it accepts, the errors it gives, and the
aiokafka arguments it becomes. The broker side is tests/integration/test_kafka_security.py."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from linepulse.bus.clients import AioKafkaClients
from linepulse.bus.security import (
    KafkaSecurity,
    KafkaSecurityError,
    client_kwargs,
    redact_sasl_in_aiokafka_logs,
)
from linepulse.config import ConfigError, parse_config
from tests.integration.pki import TestCa


def plant(security: dict[str, Any]) -> dict[str, Any]:
    return {
        "site": "s",
        "lines": [{"id": "l1", "machines": [{"id": "m1", "ideal_cycle_time_s": 1.0}]}],
        "kafka": {"security": security},
    }


def test_no_section_means_plaintext_and_no_client_arguments() -> None:
    config = parse_config(plant({}))
    assert config.kafka.security == KafkaSecurity()
    assert client_kwargs(config.kafka.security) == {}
    assert AioKafkaClients(config.kafka.security).options() == {}


@pytest.mark.parametrize(
    ("security", "said"),
    [
        (
            {"protocol": "SASL_SSL"},
            "kafka.security: protocol SASL_SSL needs a username",
        ),
        ({"protocol": "SASL_PLAINTEXT", "username": ""}, "needs a username"),
        ({"protocol": "TLS"}, "kafka.security.protocol: Input should be 'PLAINTEXT'"),
        (
            {"protocol": "SASL_SSL", "username": "u", "sasl_mechanism": "GSSAPI"},
            "kafka.security.sasl_mechanism",
        ),
        (
            {"protocol": "SSL", "username": "u"},
            "username only apply to SASL_PLAINTEXT or SASL_SSL, not SSL",
        ),
        (
            {"username": "u", "password_env": "P"},
            "username, password_env only apply to SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT",
        ),
        (
            {"protocol": "SASL_SSL", "username": "u", "password_env": "P", "password_file": "f"},
            "give one of password_env, password_file, not both",
        ),
        (
            {"protocol": "SASL_PLAINTEXT", "username": "u", "ca_file": "ca.pem"},
            "ca_file only apply to SSL or SASL_SSL, not SASL_PLAINTEXT",
        ),
        ({"check_hostname": False}, "check_hostname only apply to SSL or SASL_SSL"),
        (
            {"protocol": "SSL", "certificate": "c.pem"},
            "certificate and private_key go together",
        ),
        ({"protocol": "SSL", "password": "x"}, "kafka.security.password: unknown key"),
    ],
)
def test_inconsistent_settings_are_refused_naming_the_key(
    security: dict[str, Any], said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(plant(security))
    assert said in str(refused.value)


def sasl(**extra: Any) -> KafkaSecurity:
    return KafkaSecurity.model_validate({"protocol": "SASL_PLAINTEXT", "username": "u", **extra})


def test_the_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KAFKA_SECRET", "named")
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", "default")
    assert sasl(password_env="MY_KAFKA_SECRET").password() == "named"
    assert sasl().password() == "default"


def test_the_password_comes_from_a_file_without_its_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", "default")
    secret = tmp_path / "secret"
    secret.write_text("from-file\n", encoding="utf-8")
    assert sasl(password_file=secret).password() == "from-file"


def test_a_missing_secret_says_where_it_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LINEPULSE_KAFKA_PASSWORD", raising=False)
    monkeypatch.delenv("MY_KAFKA_SECRET", raising=False)
    with pytest.raises(KafkaSecurityError, match="LINEPULSE_KAFKA_PASSWORD is not set"):
        sasl().password()
    with pytest.raises(
        KafkaSecurityError, match=r"kafka\.security\.password_env: environment variable MY_KAFKA"
    ):
        sasl(password_env="MY_KAFKA_SECRET").password()
    with pytest.raises(KafkaSecurityError, match=r"kafka\.security\.password_file: cannot read"):
        sasl(password_file=tmp_path / "absent").password()


def test_sasl_ssl_becomes_aiokafka_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = TestCa(tmp_path / "pki")
    client = ca.issue("ingest", server=False)
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", "pw")
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        username="u",
        ca_file=ca.certificate,
        certificate=client.certificate,
        private_key=client.key,
        check_hostname=False,
    )
    kwargs = client_kwargs(security)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED  # check_hostname off, verification on
    assert not context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "LinePulse test CA"),),)
    ]


async def test_the_security_arguments_win_over_the_callers() -> None:
    clients = AioKafkaClients(KafkaSecurity(protocol="SSL"))
    # A service passing its own protocol cannot turn TLS off.
    assert clients.options()["security_protocol"] == "SSL"
    producer: Any = clients.producer(bootstrap_servers="127.0.0.1:1", security_protocol="PLAINTEXT")
    try:
        assert producer.client._security_protocol == "SSL"
    finally:
        await producer.stop()  # never started: nothing to send, only closed


def test_unreadable_tls_files_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(KafkaSecurityError, match=r"kafka\.security\.ca_file: no such file"):
        KafkaSecurity(protocol="SSL", ca_file=tmp_path / "absent.pem").ssl_context()
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(KafkaSecurityError, match="cannot load the TLS files"):
        KafkaSecurity(protocol="SSL", ca_file=garbage).ssl_context()


def test_the_password_is_in_no_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEPULSE_KAFKA_PASSWORD", "hunter2")
    security = sasl()
    clients = AioKafkaClients(security)
    assert clients.options()["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(clients)
    assert "hunter2" not in repr(security)
    assert "hunter2" not in str(parse_config(plant({"protocol": "SASL_SSL", "username": "u"})))


def test_the_sasl_request_is_blanked_in_aiokafkas_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka logs every request at DEBUG; the SASL PLAIN one carries the password."""

    class SaslAuthenticateRequest_v1:  # aiokafka's struct name, as logged
        def __repr__(self) -> str:
            return "SaslAuthenticateRequest_v1(sasl_auth_bytes=b'u\\x00u\\x00hunter2')"

    redact_sasl_in_aiokafka_logs()
    redact_sasl_in_aiokafka_logs()  # once per process, however many clients are made
    logger = logging.getLogger("aiokafka.conn")
    assert len(logger.filters) == 1
    caplog.set_level(logging.DEBUG, logger="aiokafka.conn")
    logger.debug("Request to %s:%d %d: %s", "h", 1, 3, SaslAuthenticateRequest_v1())
    logger.debug("Request to %s:%d %d: %s", "h", 1, 4, "MetadataRequest_v1()")
    assert "hunter2" not in caplog.text
    assert "Request to h:1 3: SaslAuthenticateRequest(<redacted>)" in caplog.text
    assert "Request to h:1 4: MetadataRequest_v1()" in caplog.text
