"""The Grafana dashboards and Prometheus rules under deploy/ name only what really exists.

Metric names and their labels come from the services' own metric bundles, registered on a
fresh registry and exposed with `generate_latest` (what `/metrics` serves); Infinity panels
must name paths and query parameters of the FastAPI apps' OpenAPI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from linepulse.config import PlantConfig, load_config
from services.alerts.api import create_app as alerts_app
from services.alerts.engine import AlertEngine
from services.alerts.metrics import AlertMetrics
from services.alerts.store import AlertStore
from services.ingest.metrics import IngestMetrics
from services.kpi.api import create_app as kpi_app
from services.kpi.metrics import KpiMetrics
from services.kpi.store import KpiStore
from tests.unit.kpi.test_store import record

DEPLOY = Path(__file__).parents[3] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "linepulse.yml"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Which compose service's app answers an Infinity datasource's host.
APP_OF_HOST = {"api": "kpi", "alerts": "alerts"}

Exposition = dict[str, frozenset[str]]  # sample name -> label names


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_config(DEPLOY / "linepulse" / "plant.yaml")


def _touch(bundle: object) -> None:
    """Give every labelled metric of a bundle one child, so its labels are exposed."""
    for item in fields(bundle):  # type: ignore[arg-type]
        metric = getattr(bundle, item.name)
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))


@pytest.fixture(scope="module")
def exposition(plant: PlantConfig) -> Exposition:
    """Sample names and label names of the KPI, ingest and alerts services' /metrics."""
    registry = CollectorRegistry()
    kpi = KpiMetrics.create(registry, plant)
    line = plant.lines[0]
    kpi.observe_records(
        [record(line.machines[0].id, line=line.id), record(None, line=line.id, window="1h")]
    )
    bundles = (kpi, IngestMetrics.create(registry), AlertMetrics.create(registry))
    for bundle in bundles[1:]:
        _touch(bundle)
    _touch(kpi)  # the service metrics of the KPI bundle (lag, rejects, ...)
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


def _rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def recorded() -> dict[str, frozenset[str]]:
    """Recording rules: name -> the labels its `by (...)` keeps."""
    out = {}
    for rule in _rules():
        if "record" in rule:
            by = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
            out[rule["record"]] = frozenset(
                label.strip() for label in (by.group(1).split(",") if by else ()) if label
            )
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(board: dict[str, Any]) -> Iterator[str]:
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"(?<![\w:$])(?:[a-zA-Z_]\w*(?::\w+)+|linepulse_\w+)")
_SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def problems(expr: str, exposition: Exposition, records: dict[str, frozenset[str]]) -> list[str]:
    """What in a PromQL expression names a metric or a label that does not exist."""
    bare = _STRING.sub('""', expr)
    found = []
    for name in _NAME.findall(bare):
        if ":" in name and name not in records:
            found.append(f"{name}: no recording rule")
        elif ":" not in name and name not in exposition:
            found.append(f"{name}: not in /metrics")
    for name, body in _SELECTOR.findall(bare):
        known = records.get(name) if ":" in name else exposition.get(name)
        if known is None:  # an unknown name is reported above; `up`, `ALERTS` are Prometheus'
            continue
        allowed = known if ":" in name else known | TARGET_LABELS
        found += [f"{name}: no label {x}" for x in _MATCHER.findall(body) if x not in allowed]
    return found


@pytest.mark.parametrize(
    ("expr", "wrong"),
    [
        ("rate(linepulse_dlq[5m])", ["linepulse_dlq: not in /metrics"]),
        ('linepulse_oee_ratio{station="x"}', ["linepulse_oee_ratio: no label station"]),
        ("line:linepulse_oee:shift > 1", ["line:linepulse_oee:shift: no recording rule"]),
        (
            'sum by (job) (rate(linepulse_events_rejected_total{job="a", reason="linepulse_y"}'
            "[5m:1m]))",
            [],
        ),
        (
            'line:linepulse_oee_ratio:shift{line="l", machine="m"}',
            ["line:linepulse_oee_ratio:shift: no label machine"],
        ),
    ],
)
def test_the_check_finds_unknown_names(exposition: Exposition, expr: str, wrong: list[str]) -> None:
    assert problems(expr, exposition, recorded()) == wrong


def test_exposition_has_the_documented_families(exposition: Exposition) -> None:
    # Counters gain _total, histograms _bucket/_sum/_count: the check uses sample names.
    assert {"linepulse_dlq_total", "linepulse_batch_seconds_bucket", "linepulse_alerts"} <= set(
        exposition
    )
    assert exposition["linepulse_parts"] == {"site", "line", "machine", "window", "kind"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_name_real_metrics(path: Path, exposition: Exposition) -> None:
    board = json.loads(path.read_text())
    records = recorded()
    wrong = {e: p for e in dashboard_queries(board) if (p := problems(e, exposition, records))}
    assert wrong == {}


def test_rules_name_real_metrics(exposition: Exposition) -> None:
    records = recorded()
    wrong = {r["expr"]: p for r in _rules() if (p := problems(r["expr"], exposition, records))}
    assert wrong == {}
    assert records, "no recording rules found"


def test_the_five_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "plant-overview",
        "line-detail",
        "machine-detail",
        "downtime-pareto",
        "alerts",
    }


def _datasources() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    sources = _datasources()
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            source = target.get("datasource", panel["datasource"])
            assert sources[source["uid"]]["type"] == source["type"], panel["title"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[:2] == ["site", "line"], names
    if path.stem == "machine-detail":
        assert "machine" in names
    occupied = {(x, y) for p in panels for x, y in _cells(p["gridPos"])}
    assert len(occupied) == sum(p["gridPos"]["w"] * p["gridPos"]["h"] for p in panels), (
        "panels overlap"
    )


def _cells(grid: dict[str, int]) -> Iterator[tuple[int, int]]:
    for x in range(grid["x"], grid["x"] + grid["w"]):
        for y in range(grid["y"], grid["y"] + grid["h"]):
            yield x, y


@pytest.fixture(scope="module")
def openapi(
    plant: PlantConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    """OpenAPI paths of the KPI and alerts apps, built as their services build them."""
    folder = tmp_path_factory.mktemp("apps")
    alert_store = AlertStore(folder / "alerts.sqlite3")
    try:
        with KpiStore(folder / "kpi.duckdb", plant) as store:
            yield {
                "kpi": kpi_app(plant, store, CollectorRegistry()).openapi()["paths"],
                "alerts": alerts_app(
                    AlertEngine(plant, alert_store), CollectorRegistry(), None
                ).openapi()["paths"],
            }
    finally:
        alert_store.close()


def test_infinity_panels_call_real_endpoints(openapi: dict[str, dict[str, Any]]) -> None:
    sources = _datasources()
    called = 0
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                source = sources[target.get("datasource", panel["datasource"])["uid"]]
                if source["type"] != "yesoreyeram-infinity-datasource":
                    continue
                host = urlsplit(source["url"]).hostname
                assert host in APP_OF_HOST, source["url"]
                url = urlsplit(target["url"])
                operation = openapi[APP_OF_HOST[host]].get(url.path, {}).get("get")
                assert operation is not None, f"{path.name}: {panel['title']}: GET {url.path}"
                params = {p["name"] for p in operation.get("parameters", [])}
                given = set(parse_qs(url.query, keep_blank_values=True))
                assert given <= params, f"{panel['title']}: {given - params} not in {params}"
                called += 1
    assert called >= 4


@pytest.mark.parametrize("stem", ["plant-overview", "line-detail", "machine-detail"])
def test_coverage_stands_beside_oee(stem: str) -> None:
    """What the OEE rests on is read in the same glance: a coverage stat in the OEE's row,
    of the same scope (line figures beside line OEE, the machine's beside the machine's)."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / f"{stem}.json").read_text())
    panels = list(_panels(board["panels"]))

    def expr(panel: dict[str, Any]) -> str:
        return " ".join(t.get("expr", "") for t in panel.get("targets", []))

    [oee] = [p for p in panels if p["title"] == "OEE this shift"]
    [coverage] = [p for p in panels if "coverage_ratio" in expr(p)]
    assert coverage["type"] == "stat"
    assert coverage["gridPos"]["y"] == oee["gridPos"]["y"]
    assert expr(oee).replace("oee_ratio", "coverage_ratio") == expr(coverage)
    assert coverage["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_the_oee_rule_is_guarded_by_coverage() -> None:
    [rule] = [r for r in _rules() if r.get("alert") == "LinePulseLineOeeLow"]
    assert "line:linepulse_coverage_ratio:shift >= 0.8" in rule["expr"]
    assert "line:linepulse_coverage_ratio:shift" in recorded()
