"""deploy/docker-compose.yml and the Dockerfile name only what exists, without an engine
(tests/deploy builds the images and runs the stack on podman).

Every service, depends_on, mounted host path, port and cross-reference (Prometheus targets,
Grafana datasources, the plant's hosts) is checked against the compose file with its
variables at their defaults, the repo and the `linepulse` CLI itself (its sub-commands and
their options, parsed by click).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from linepulse.config import PlantConfig, load_config
from services.app.cli import app

REPO = Path(__file__).parents[3]
DEPLOY = REPO / "deploy"
RAW_COMPOSE = (DEPLOY / "docker-compose.yml").read_text()


def at_defaults(text: str) -> str:
    """The compose file as compose reads it with none of its variables set: `${X:-d}` is d
    (`$$` stays `$`, as compose un-escapes it)."""
    unset = re.findall(r"\$\{(\w+)(?!:-)[}?:]", text)
    assert not unset, f"variables without a default: {unset}"
    return re.sub(r"(?<!\$)\$\{\w+:-([^}]*)\}", r"\1", text)


COMPOSE: dict[str, Any] = yaml.safe_load(at_defaults(RAW_COMPOSE))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
LINEPULSE_IMAGE = "localhost/linepulse:latest"
LINEPULSE = sorted(n for n, s in SERVICES.items() if s.get("image") == LINEPULSE_IMAGE)
# Ports the images listen on by default: deploy/kafka/kafka.sh's KAFKA_PORT and controller
# port, the Debian packages' defaults, Grafana's documentation.
IMAGE_PORTS = {
    "localhost/linepulse-kafka": {9092, 9093},
    "localhost/linepulse-prometheus": {9090},
    "localhost/linepulse-alertmanager": {9093, 9094},
    "docker.io/grafana/grafana": {3000},
}
# The only services published on the host, and on loopback unless LINEPULSE_BIND says so.
PUBLISHED = {"api", "alerts", "prometheus", "grafana"}


def cli() -> Any:
    """The CLI as click sees it (typer's group: `commands`, `params`, `make_context`)."""
    group = typer.main.get_command(app)
    assert set(getattr(group, "commands", {})) >= {"kpi", "api", "ingest", "alerts", "simulate"}
    return group


def invocation(service: str) -> tuple[str, dict[str, Any]]:
    """The sub-command of a LinePulse service and its parsed options (environment applied)."""
    group = cli()
    args = list(SERVICES[service]["command"])
    takes_value = {o for p in group.params if not getattr(p, "is_flag", False) for o in p.opts}
    while args[0].startswith("-"):
        args = args[2:] if args[0] in takes_value else args[1:]
    name, rest = args[0], args[1:]
    assert name in group.commands, f"{service}: `linepulse {name}` is no sub-command"
    env = {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        context = group.commands[name].make_context(name, rest)
    return name, context.params


def host_path(service: str, container_path: str) -> Path:
    """The repo file a container path of a service is bind-mounted from."""
    for volume in SERVICES[service].get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith(".") and container_path == target:
            return (DEPLOY / source).resolve()
        if source.startswith(".") and container_path.startswith(target.rstrip("/") + "/"):
            return (DEPLOY / source / container_path[len(target.rstrip("/")) + 1 :]).resolve()
    raise AssertionError(f"{service}: nothing mounted at {container_path}")


def plant(service: str = "ingest") -> PlantConfig:
    config = SERVICES[service]["environment"]["LINEPULSE_CONFIG"]
    return load_config(host_path(service, config))


def listens(service: str) -> set[int]:
    """The ports a service listens on, from its own configuration."""
    spec = SERVICES[service]
    if service in LINEPULSE:
        name, params = invocation(service)
        if name == "simulate":
            return {urlsplit(s.endpoint).port or 4840 for s in plant(service).sources.opcua}
        if name == "kpi" and not params["api"]:
            return set()
        return {params["port"]} if params.get("port") else set()
    image = spec["image"].rsplit(":", 1)[0]
    if image == "localhost/linepulse-mosquitto":
        conf = host_path(service, "/etc/mosquitto/mosquitto.conf").read_text()
        return {int(p) for p in re.findall(r"^listener\s+(\d+)", conf, re.M)}
    return IMAGE_PORTS[image]


def test_services_have_an_image_or_build() -> None:
    assert set(LINEPULSE) == {"simulate", "ingest", "kpi", "api", "alerts"}
    for name in {"kafka", "mosquitto", "prometheus", "alertmanager", "grafana"}:
        assert name in SERVICES
    for name, spec in SERVICES.items():
        assert "image" in spec or "build" in spec, name
    for name in LINEPULSE:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    # deploy/images.sh builds every other image but Grafana's (no Debian package).
    script = (DEPLOY / "images.sh").read_text()
    containerfile = (DEPLOY / "images" / "Containerfile").read_text()
    for name, spec in SERVICES.items():
        image = spec["image"]
        if image == LINEPULSE_IMAGE or name == "grafana":
            continue
        assert image == f"localhost/linepulse-{name}:latest", name
        assert re.search(rf"^FROM apt AS {name}$", containerfile, re.M), name
        assert re.search(rf"^STANDINS=\(.*\b{name}\b", script, re.M), name
    assert SERVICES["grafana"]["profiles"] == ["grafana"]


def test_depends_on_names_services() -> None:
    for name, spec in SERVICES.items():
        for other in spec.get("depends_on", {}):
            assert other in SERVICES, f"{name} depends on unknown {other}"
            assert other != name


def test_mounts_exist() -> None:
    named = set(COMPOSE.get("volumes", {}))
    for name, spec in SERVICES.items():
        for volume in spec.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} is not in the repo"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_ports_are_well_formed_and_listened_on(service: str) -> None:
    spec = SERVICES[service]
    published = []
    for mapping in spec.get("ports", []):
        match = re.fullmatch(r"127\.0\.0\.1:(\d+):(\d+)(?:/(tcp|udp))?", str(mapping))
        assert match, f"{service}: {mapping!r} is not a port published on 127.0.0.1"
        published.append(int(match.group(2)))
    assert bool(published) == (service in PUBLISHED), service
    exposed = [int(str(p)) for p in spec.get("expose", [])]
    assert all(0 < p < 65536 for p in published + exposed)
    assert set(published + exposed) <= listens(service), service


@pytest.mark.parametrize("service", LINEPULSE)
def test_linepulse_commands_parse(service: str) -> None:
    name, params = invocation(service)
    if params.get("port") and name != "simulate":
        assert params["host"] == "0.0.0.0", f"{service} must listen beyond its container"  # noqa: S104
    assert params["config"] == Path("/etc/linepulse/plant.yaml")
    for key in ("db", "state_dir"):
        if params.get(key) is not None:
            assert str(params[key]).startswith("/var/lib/linepulse/"), (service, key)


def test_the_tokens_come_from_the_env_file() -> None:
    example = (DEPLOY / "linepulse.env.example").read_text()
    names = set(re.findall(r"^(\w+)=", example, re.M))
    config = plant("alerts")
    assert config.alerts.api_token_env in names
    assert config.api.token_env in names
    for name in LINEPULSE:
        assert SERVICES[name]["env_file"] == "linepulse.env", name
    assert "deploy/linepulse.env" in (REPO / ".gitignore").read_text().splitlines()


def test_healthchecks_ask_the_ports_services_listen_on() -> None:
    for name in LINEPULSE:
        check = " ".join(SERVICES[name].get("healthcheck", {}).get("test", []))
        for port in re.findall(r"127\.0\.0\.1:(\d+)", check):
            assert int(port) in listens(name), name


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    assert parts.hostname is not None
    assert parts.port is not None, url
    return parts.hostname, parts.port


def _points_at_a_service(url: str) -> None:
    host, port = _endpoint(url)
    assert host in SERVICES, f"{url}: no compose service {host}"
    assert port in listens(host), f"{url}: {host} does not listen on {port}"


def test_the_plant_config_loads_and_names_compose_services() -> None:
    config = plant()
    for source in config.sources.opcua:
        _points_at_a_service(source.endpoint)
    for mqtt in config.sources.mqtt:
        _points_at_a_service(f"{mqtt.host}:{mqtt.port}")
    for channel in config.alerts.channels:
        if channel.url is not None:
            _points_at_a_service(channel.url)
    for name in LINEPULSE:
        _points_at_a_service(SERVICES[name]["environment"]["LINEPULSE_KAFKA"])


def test_prometheus_scrapes_the_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for target in targets - {"localhost:9090"}:
        _points_at_a_service(target)
    for name in LINEPULSE:
        for port in listens(name) if name != "simulate" else ():
            assert f"{name}:{port}" in targets, f"{name} is not scraped"
    for manager in config["alerting"]["alertmanagers"]:
        for target in manager["static_configs"][0]["targets"]:
            _points_at_a_service(target)


def test_grafana_datasources_and_plugins() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning" / "datasources" / "linepulse.yml"
    sources = yaml.safe_load(provisioning.read_text())["datasources"]
    plugins = SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"].split(",")
    for source in sources:
        _points_at_a_service(source["url"])
        if source["type"] != "prometheus":
            assert source["type"] in plugins, f"{source['type']} is not installed"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    provider = DEPLOY / "grafana" / "provisioning" / "dashboards" / "linepulse.yml"
    path = yaml.safe_load(provider.read_text())["providers"][0]["options"]["path"]
    assert (DEPLOY / mounts[path]).is_dir()
    assert list((DEPLOY / mounts[path]).glob("*.json"))


DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.split(maxsplit=1)
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def test_dockerfile_base_is_slim_and_user_is_not_root() -> None:
    bases = [args for op, args in INSTRUCTIONS if op == "FROM"]
    assert bases == ["${BASE}"]
    default = next(args for op, args in INSTRUCTIONS if op == "ARG" and args.startswith("BASE="))
    assert re.fullmatch(r"BASE=python:3\.11-slim(-\w+)?", default)
    assert SERVICES["api"]["build"]["args"]["BASE"] == default.removeprefix("BASE=")
    users = [args.strip() for op, args in INSTRUCTIONS if op == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    assert [op for op, _ in INSTRUCTIONS].index("USER") < [op for op, _ in INSTRUCTIONS].index(
        "ENTRYPOINT"
    )


def test_dockerfile_copies_what_exists_and_runs_linepulse() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copies = [args.split() for op, args in INSTRUCTIONS if op == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repo"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    entrypoint = next(args for op, args in INSTRUCTIONS if op == "ENTRYPOINT")
    assert entrypoint.strip() == '["linepulse"]'
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'linepulse = "services.app.cli:main"' in pyproject
    install = next(args for op, args in INSTRUCTIONS if op == "RUN" and "pip install" in args)
    assert "pip install ." in install
    assert "[dev]" not in install
