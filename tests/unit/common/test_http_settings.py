"""The settings of the HTTP APIs (linepulse/http/settings.py), pure logic: where tokens
come from, the TLS options uvicorn gets, and the config sections of both APIs. The guard
that enforces them is tested in tests/unit/common/test_http_guard.py, on real apps in
tests/unit/kpi/test_api_security.py and tests/integration/test_api_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from linepulse.alerting import AlertSettings
from linepulse.config import parse_config
from linepulse.http.settings import ApiSecurity, HttpLimits, TlsSettings


def secrets_of(security: ApiSecurity, environ: dict[str, str]) -> list[str]:
    return [t.get_secret_value() for t in security.resolve("api", environ).tokens]


def test_tokens_come_from_a_file_one_per_line_and_from_the_variable(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# board\nt-board\n\n  t-grafana  \n#t-revoked\nt-board\n", "utf-8")
    security = ApiSecurity(token_env="LP_TOKENS", token_file=file)
    environ = {"LP_TOKENS": "t-env1, t-env2\tt-grafana"}
    assert secrets_of(security, environ) == ["t-board", "t-grafana", "t-env1", "t-env2"]
    assert secrets_of(ApiSecurity(token_env="LP_TOKENS"), {}) == []
    assert secrets_of(ApiSecurity(token_env="LP_TOKENS"), {"LP_TOKENS": " , "}) == []
    assert secrets_of(ApiSecurity(token_env=None), {"LINEPULSE_API_TOKEN": "x"}) == []
    assert secrets_of(ApiSecurity(), {"LINEPULSE_API_TOKEN": "x"}) == ["x"]


def test_an_unreadable_token_file_names_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"^api\.token_file: cannot read .*nope"):
        ApiSecurity(token_file=missing).resolve("api", {})
    alerts = AlertSettings(api_token_file=missing)
    with pytest.raises(ValueError, match=r"^alerts\.api_token_file: cannot read"):
        alerts.api_access({})


def test_the_example_env_files_placeholder_token_is_refused(tmp_path: Path) -> None:
    """deploy/linepulse.env.example's tokens would let anyone who read it write."""
    example = Path(__file__).parents[3] / "deploy" / "linepulse.env.example"
    values = dict(
        line.split("=", 1)
        for line in example.read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    )
    with pytest.raises(ValueError, match=r"^LINEPULSE_API_TOKEN or api\.token_file: .*placeholder"):
        ApiSecurity().resolve("api", values)
    with pytest.raises(ValueError, match=r"placeholder"):
        AlertSettings().api_access(values)
    file = tmp_path / "tokens"
    file.write_text("Change-Me-too\n", "utf-8")
    with pytest.raises(ValueError, match=r"^api\.token_file: .*placeholder"):
        ApiSecurity(token_env=None, token_file=file).resolve("api", {})
    assert secrets_of(ApiSecurity(), {"LINEPULSE_API_TOKEN": "a-real-one"}) == ["a-real-one"]


def test_resolved_tokens_do_not_show_in_reprs(tmp_path: Path) -> None:
    access = ApiSecurity(token_env="T").resolve("api", {"T": "very-secret-value"})
    assert "very-secret-value" not in repr(access)
    assert "very-secret-value" not in str(access)


def test_the_hint_says_which_keys_set_a_token() -> None:
    hint = ApiSecurity().resolve("api", {}).configure_hint
    assert "LINEPULSE_API_TOKEN (api.token_env)" in hint
    assert "api.token_file" in hint
    alerts = AlertSettings().api_access({}).configure_hint
    assert "LINEPULSE_ALERTS_TOKEN (alerts.api_token_env)" in alerts
    assert "alerts.api_token_file" in alerts


def test_tls_settings_become_uvicorn_options(tmp_path: Path) -> None:
    plain = TlsSettings(certfile=tmp_path / "c.pem", keyfile=tmp_path / "k.pem")
    assert plain.uvicorn_options() == {
        "ssl_certfile": str(tmp_path / "c.pem"),
        "ssl_keyfile": str(tmp_path / "k.pem"),
        "ssl_ca_certs": None,
        "ssl_cert_reqs": ssl.CERT_NONE,
    }
    mutual = plain.model_copy(update={"client_ca": tmp_path / "ca.pem", "client_certs": "required"})
    assert mutual.uvicorn_options()["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert mutual.uvicorn_options()["ssl_ca_certs"] == str(tmp_path / "ca.pem")


def test_the_plant_config_has_an_api_section_and_the_alerts_keep_their_keys(
    tmp_path: Path,
) -> None:
    base = {"site": "s", "lines": [{"id": "l", "machines": [{"id": "m"}]}]}
    default = parse_config(base)
    assert default.api.auth_reads is False
    assert default.api.token_env == "LINEPULSE_API_TOKEN"
    assert default.api.cors_origins == ()
    assert default.api.limits == HttpLimits()
    assert default.api.limits.max_body_bytes == 64 * 1024
    assert default.api.tls is None
    plant = parse_config(
        {
            **base,
            "api": {
                "token_env": None,
                "token_file": str(tmp_path / "tokens"),
                "auth_reads": True,
                "cors_origins": ["https://grafana.plant.example"],
                "limits": {"max_body_bytes": 1024, "write_rate_per_s": 0.2, "write_burst": 5},
                "tls": {"certfile": "/etc/lp/api.pem", "keyfile": "/etc/lp/api.key"},
            },
            "alerts": {
                "api_token_env": "ALERTS_TOKEN",
                "cors_origins": ["https://board.plant.example"],
                "api_limits": {"read_rate_per_s": 5},
            },
        }
    )
    assert plant.api.auth_reads is True
    assert plant.api.limits.write_burst == 5
    assert plant.api.tls is not None
    assert plant.api.tls.client_certs == "none"
    access = plant.alerts.api_access({"ALERTS_TOKEN": "a1,a2"})
    assert [t.get_secret_value() for t in access.tokens] == ["a1", "a2"]
    assert access.cors_origins == ("https://board.plant.example",)
    assert access.limits.read_rate_per_s == 5
    with pytest.raises(ValidationError):
        ApiSecurity.model_validate({"token": "inline secrets are not a key"})
    with pytest.raises(ValidationError):
        HttpLimits(max_body_bytes=0)


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("api", ["--tls-cert", "{cert}"], "needs both --tls-cert and --tls-key"),
        ("alerts", ["--tls-key", "{cert}"], "needs both --tls-cert and --tls-key"),
        ("ingest", ["--tls-client-ca", "{cert}"], "--tls-client-ca needs --tls-cert"),
        ("kpi", ["--tls-cert", "{cert}", "--tls-key", "{missing}"], "--tls-key: cannot read"),
    ],
)
def test_the_tls_flags_are_checked_before_anything_starts(
    tmp_path: Path, command: str, flags: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from services.app.cli import app

    cert = tmp_path / "cert.pem"
    cert.write_text("not used: the flags are refused first", "utf-8")
    args = [f.format(cert=cert, missing=tmp_path / "missing.key") for f in flags]
    plant = tmp_path / "plant.yaml"
    plant.write_text("site: s\nlines: [{id: l, machines: [{id: m}]}]\n", "utf-8")
    common = ["--config", str(plant), "--kafka", "127.0.0.1:1"]  # never reached
    result = CliRunner().invoke(app, [command, *common, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
