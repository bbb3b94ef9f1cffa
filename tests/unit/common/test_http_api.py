"""What the KPI API and the alerts API share (linepulse/http/api.py), checked on both real
apps (TestClient, lifespan running): docs served from the package with no URL outside the
server, one error shape in their OpenAPI documents and their answers (every service's
named errors through the one handler), and /metrics without `*_created`."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.errors import LinePulseError
from linepulse.http.api import create_api
from services.alerts import errors as alerts_errors
from services.alerts.api import create_app as create_alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.metrics import AlertMetrics
from services.alerts.store import AlertStore
from services.kpi import errors as kpi_errors
from services.kpi.api import create_app as create_kpi_app
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from tests.integration.test_alerts_api import PLANT as ALERTS_PLANT
from tests.unit.kpi.test_store import plant_config

# Every URL a page names: src/href attributes, `url: '...'` in the inline script, and any
# absolute http(s) URL anywhere in it.
_ATTRIBUTE_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_SCRIPT_URL = re.compile(r"""\burl:\s*["']([^"']+)["']""")
_SPEC_URL = re.compile(r"""spec-url\s*=\s*["']([^"']+)["']""")
_ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>)]+""")


@pytest.fixture
def kpi_client(tmp_path: Path) -> Iterator[TestClient]:
    plant = plant_config()
    registry = CollectorRegistry()
    KpiMetrics.create(registry, plant)
    with (
        KpiStore(tmp_path / "kpi.duckdb", plant) as store,
        TestClient(create_kpi_app(plant, store, registry)) as client,
    ):
        yield client


@pytest.fixture
def alerts_client(tmp_path: Path) -> Iterator[TestClient]:
    registry = CollectorRegistry()
    AlertMetrics.create(registry).sent.labels(channel="log").inc()  # a counter with a sample
    engine = AlertEngine(ALERTS_PLANT, AlertStore.in_dir(tmp_path))
    with TestClient(create_alerts_app(engine, registry, None)) as client:
        yield client


# A query each API must refuse with a 422.
BAD_QUERY = {
    "kpi_client": "/v1/kpis/current?window=2m",
    "alerts_client": "/v1/alerts?state=nonsense",
}


# A line neither plant has, asked for in each API.
UNKNOWN_LINE = {
    "kpi_client": "/v1/kpis/current?line=nope",
    "alerts_client": "/v1/alerts?line=nope",
}
SERVICES = Path(__file__).resolve().parents[3] / "services"


@pytest.fixture(params=sorted(BAD_QUERY))
def api(request: pytest.FixtureRequest) -> tuple[TestClient, str]:
    """Each API's client and the name of its fixture."""
    return request.getfixturevalue(request.param), request.param


@pytest.fixture
def client(api: tuple[TestClient, str]) -> TestClient:
    return api[0]


def page_urls(html: str) -> list[str]:
    return [
        *_ATTRIBUTE_URL.findall(html),
        *_SCRIPT_URL.findall(html),
        *_SPEC_URL.findall(html),
        *_ABSOLUTE_URL.findall(html),
    ]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_are_served_from_the_package(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = page_urls(response.text)
    assert urls, response.text
    outside = [u for u in urls if not u.startswith("/")]
    assert outside == [], f"{page} names URLs outside the server: {outside}"
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, urls
    # Swagger UI's bundle (about a megabyte), not a stub that loads it from elsewhere.
    assert all(len(client.get(u).content) > 100_000 for u in scripts)


def test_swagger_ui_does_not_call_the_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


def test_every_documented_error_is_the_one_shape(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "ValidationError" not in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")) or "content" not in response:
                    continue
                if (path, status) == ("/readyz", "503"):
                    continue  # a health answer, {"status": "not ready", "detail": why}
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (
                    method,
                    path,
                    status,
                )
    assert spec["components"]["schemas"]["ErrorDetail"]["required"] == ["detail"]


def test_a_validation_error_is_one_sentence(api: tuple[TestClient, str]) -> None:
    client, name = api
    response = client.get(BAD_QUERY[name])
    assert response.status_code == 422
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str)
    assert "query parameter" in body["detail"]


def test_metrics_have_no_created_series(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert "# TYPE linepulse_" in text
    assert re.search(r"^linepulse_\w+_total(\{[^}]*\})? ", text, re.M)  # counters are there ...
    assert "_created" not in text  # ... without their creation-time twins


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (kpi_errors.NotFound("unknown line 'l9'; GET /v1/machines lists lines"), 404),
        (kpi_errors.BadRequest("'from' must be RFC 3339"), 422),
        (kpi_errors.InvalidRecord("records[3].oee: must be <= 1", index=3), 422),
        (kpi_errors.Conflict("the stop is too old to restate"), 409),
        (kpi_errors.Unavailable("Kafka is down; retry later"), 503),
        (alerts_errors.UnknownLine("l9", ["L1", "L2"]), 404),
        (alerts_errors.UnknownMachine.on_line("M1", "L1", "L2"), 404),
        (alerts_errors.UnknownAlert("f00"), 404),
        (alerts_errors.AlertConflict("alert f00 is resolved"), 409),
        (alerts_errors.UnknownSilence("s1"), 404),
        (alerts_errors.InvalidSilence("ends_at must be in the future"), 422),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_a_named_error_of_each_service_is_its_status_and_one_sentence(
    error: LinePulseError, status: int
) -> None:
    """The one handler that `create_api` installs, with no help from the service."""
    app = create_api(title="errors")

    @app.get("/fail")
    def fail() -> None:
        raise error

    with TestClient(app) as client:
        response = client.get("/fail")
    assert response.status_code == status
    assert response.json() == {"detail": error.detail}


def test_an_unknown_line_is_the_same_answer_shape_in_both_apis(
    api: tuple[TestClient, str],
) -> None:
    client, name = api
    response = client.get(UNKNOWN_LINE[name])
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail"}
    assert body["detail"].startswith("unknown line 'nope'; ")


def test_no_service_raises_a_bare_http_exception() -> None:
    """Services name their errors (services/*/errors.py); FastAPI's `HTTPException` would
    bypass them and their one handler."""
    offenders = [
        f"{path.relative_to(SERVICES)}:{node.lineno}"
        for path in sorted(SERVICES.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Name | ast.Attribute)
        and (node.id if isinstance(node, ast.Name) else node.attr) == "HTTPException"
    ]
    assert offenders == []
