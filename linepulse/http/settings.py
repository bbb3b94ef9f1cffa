"""Who may call a LinePulse HTTP API, how much, and from which pages, as settings: tokens,
limits, CORS, TLS. The guard that enforces them is linepulse/http/guard.py.

- **Tokens.** Tokens come only from an environment variable (several separated by commas
  or whitespace) or a file (one per line; a line starting with `#` is a comment), one per
  client, so that one client's token can be revoked alone. The plant config names where
  they are (`ApiSecurity`); `ApiSecurity.resolve` reads them at start into `ApiAccess`,
  what an app is guarded with. Tokens are `SecretStr` and never logged.
  Reads need a token only with `auth_reads: true`; writes always do.
- **Limits.** `HttpLimits`: the largest request body, and a token bucket's rate and burst
  for reads and for writes, per client; `exempt_paths` (default `/metrics`, `/healthz`,
  `/readyz`: Prometheus and the orchestrator poll them, they are cheap and read nothing
  secret) skip the limits and the read token.
- **CORS.** An explicit allow-list of origins, none by default (the live board is served
  by the KPI API itself, same origin).
- **TLS.** `TlsSettings` (certificate, key, optional CA for client certificates) goes to
  uvicorn through `linepulse.runtime.HttpSettings`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DEFAULT_TOKEN_ENV: Final = "LINEPULSE_API_TOKEN"  # noqa: S105 - a variable's name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpLimits(_Model):
    """Request size and rate limits of one API; a rate of 0 turns that limit off."""

    max_body_bytes: int = Field(default=64 * 1024, ge=1)
    # Reads: a dashboard refreshing a dozen panels every few seconds stays far below this;
    # the burst lets a script page through history without pacing itself.
    read_rate_per_s: float = Field(default=50.0, ge=0)
    read_burst: int = Field(default=500, ge=1)
    # Writes are people coding stops or acking alerts, or a MES re-coding a shift's stops
    # in one go: a burst of 50, then 5 a second.
    write_rate_per_s: float = Field(default=5.0, ge=0)
    write_burst: int = Field(default=50, ge=1)
    exempt_paths: tuple[str, ...] = ("/metrics", "/healthz", "/readyz")


ClientCerts = Literal["none", "optional", "required"]


class TlsSettings(_Model):
    """HTTPS for an API: PEM certificate chain and key; `client_ca` with
    `client_certs: required` asks every client for a certificate signed by that CA."""

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None
    client_certs: ClientCerts = "none"

    def uvicorn_options(self) -> dict[str, Any]:
        """The keyword arguments of `uvicorn.Config` that serve HTTPS."""
        reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
        return {
            "ssl_certfile": str(self.certfile),
            "ssl_keyfile": str(self.keyfile),
            "ssl_ca_certs": None if self.client_ca is None else str(self.client_ca),
            "ssl_cert_reqs": reqs[self.client_certs],
        }


class ApiSecurity(_Model):
    """An API's security settings as the plant config has them (secrets by reference)."""

    token_env: str | None = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    auth_reads: bool = False
    cors_origins: tuple[str, ...] = ()
    limits: HttpLimits = HttpLimits()
    tls: TlsSettings | None = None

    def resolve(
        self,
        where: str = "api",
        environ: Mapping[str, str] | None = None,
        *,
        keys: tuple[str, str] = ("token_env", "token_file"),
    ) -> ApiAccess:
        """The tokens read from the file or the variable now. `where` and `keys` name the
        config keys of these settings (`api.token_env`, `alerts.api_token_file`) in
        messages that say how to set a token."""
        env = os.environ if environ is None else environ
        env_key, file_key = (f"{where}.{key}" for key in keys)
        tokens = read_tokens(self.token_env, self.token_file, env, file_key)
        hint = (
            f"set the environment variable {self.token_env} ({env_key}) or point "
            f"{file_key} at a file with one token per line"
            if self.token_env
            else f"point {file_key} at a file with one token per line"
        )
        return ApiAccess(
            tokens=tokens,
            auth_reads=self.auth_reads,
            limits=self.limits,
            cors_origins=self.cors_origins,
            configure_hint=hint,
        )


# The prefix of the compose stack's example tokens (deploy/linepulse.env.example): a stack
# started without replacing them refuses to start rather than take a published secret.
PLACEHOLDER_TOKEN: Final = "change-me"  # noqa: S105 - the placeholder refused, no secret


def read_tokens(
    env_name: str | None, file: Path | None, environ: Mapping[str, str], file_key: str
) -> tuple[SecretStr, ...]:
    """Tokens from `file` (one per line) and from the variable `env_name` (comma or
    whitespace separated), in that order; an unreadable file is an error naming its key."""
    found: list[str] = []
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"{file_key}: cannot read {file}: {error.strerror}") from None
        for line in text.splitlines():
            token = line.strip()
            if token and not token.startswith("#"):
                found.append(token)
    if env_name:
        found.extend(part for part in environ.get(env_name, "").replace(",", " ").split())
    if any(token.lower().startswith(PLACEHOLDER_TOKEN) for token in found):
        where = f"{env_name} or {file_key}" if env_name else file_key
        raise ValueError(
            f"{where}: a token is still the placeholder of deploy/linepulse.env.example "
            f"({PLACEHOLDER_TOKEN}...); put a real one there, e.g. `openssl rand -hex 16`"
        )
    return tuple(SecretStr(token) for token in dict.fromkeys(found))


@dataclass(frozen=True)
class ApiAccess:
    """Resolved settings an app is guarded with: the tokens themselves, not where they are."""

    tokens: tuple[SecretStr, ...] = ()
    auth_reads: bool = False
    limits: HttpLimits = field(default_factory=HttpLimits)
    cors_origins: tuple[str, ...] = ()
    configure_hint: str = (
        f"set the environment variable {DEFAULT_TOKEN_ENV} or a token_file in the config"
    )
