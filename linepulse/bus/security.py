"""How the services authenticate to Kafka and encrypt the connection: the `kafka.security`
section of the plant config, and its translation into aiokafka's client arguments.

Every real client a service makes goes through `AioKafkaClients`, which merges
`client_kwargs(security)` into its arguments, so there is one place where TLS and SASL
are set and no service can forget them. The password is read from an environment variable
or a file when the clients are made (never from the config file itself, so the file can sit
in version control), and it appears in no repr, log line or error message.

PLAINTEXT (the default) adds no arguments at all: a plant without a `security` section
talks to Kafka exactly as before.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Final, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, model_validator

from linepulse.log_redaction import redact_log_arguments

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Where the password comes from when the config names no source: the usual way to hand a
# secret to a container without a file.
PASSWORD_ENV: Final = "LINEPULSE_KAFKA_PASSWORD"  # noqa: S105 - a variable's name

_SASL: Final = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS: Final = ("SSL", "SASL_SSL")


class KafkaSecurityError(ValueError):
    """The security settings cannot be turned into working clients (a missing secret, an
    unreadable certificate); the message names the key and what to fix."""


class KafkaSecurity(BaseModel):
    """`kafka.security`: the protocol, the SASL identity and the TLS files.

    `check_hostname: false` accepts a broker certificate that does not name the host it
    was reached at (still signed by `ca_file`); it exists for brokers behind an address
    their certificate does not list, not as a way to skip verification.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # else the system's trust store
    certificate: Path | None = None  # client certificate (PEM), for brokers that require one
    private_key: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.protocol in _SASL
        if sasl and not self.username:
            raise ValueError(f"protocol {self.protocol} needs a username")
        if not sasl:
            given = [k for k in ("username", "password_env", "password_file") if getattr(self, k)]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to SASL_PLAINTEXT or SASL_SSL, "
                    f"not {self.protocol}: set protocol, or remove them"
                )
        if self.password_env and self.password_file:
            raise ValueError("give one of password_env, password_file, not both")
        if self.protocol not in _TLS:
            given = [k for k in ("ca_file", "certificate", "private_key") if getattr(self, k)]
            if not self.check_hostname:
                given.append("check_hostname")
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to SSL or SASL_SSL, not {self.protocol}"
                )
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (mutual TLS)")
        return self

    def password(self) -> str:
        """The SASL password, read now from `password_env`, `password_file` or
        `LINEPULSE_KAFKA_PASSWORD`, in that order of what the config names."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as error:
                raise KafkaSecurityError(
                    f"kafka.security.password_file: cannot read {self.password_file}: "
                    f"{error.strerror or error}"
                ) from None
        name = self.password_env or PASSWORD_ENV
        value = os.environ.get(name)
        if value is None:
            where = "kafka.security.password_env" if self.password_env else "kafka.security"
            raise KafkaSecurityError(
                f"{where}: environment variable {name} is not set; set it, or name another "
                "with password_env, or a file with password_file"
            )
        return value

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that verifies the broker against `ca_file` (or the system
        store) and presents the client certificate when one is configured."""
        for key in ("ca_file", "certificate", "private_key"):
            path: Path | None = getattr(self, key)
            if path is not None and not path.is_file():
                raise KafkaSecurityError(f"kafka.security.{key}: no such file {path}")
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ca_file, certfile=self.certificate, keyfile=self.private_key
            )
        except (ssl.SSLError, OSError) as error:
            raise KafkaSecurityError(
                f"kafka.security: cannot load the TLS files "
                f"(ca_file {self.ca_file}, certificate {self.certificate}, private_key "
                f"{self.private_key}): {error}"
            ) from None
        context.check_hostname = self.check_hostname
        return context


def _is_sasl_request(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticateRequest")


def redact_sasl_in_aiokafka_logs() -> None:
    """aiokafka logs every request at DEBUG, the SASL PLAIN one included, whose bytes are
    the username and password in clear: blank that request in aiokafka's connection log."""
    redact_log_arguments("aiokafka.conn", "SaslAuthenticateRequest", _is_sasl_request)


def client_kwargs(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka constructor arguments for `security` (the same for producer, consumer and
    admin client); empty for PLAINTEXT. Reads the password and the TLS files now."""
    if security.protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in _TLS:
        kwargs["ssl_context"] = security.ssl_context()
    if security.protocol in _SASL:
        redact_sasl_in_aiokafka_logs()
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.username
        kwargs["sasl_plain_password"] = security.password()
    return kwargs
