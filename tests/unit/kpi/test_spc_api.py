"""The KPI API's control charts (`GET /v1/spc`) and the shift report's process control
section, from subgroups as the KPI worker puts them on the spc topic: summaries counted
per rule and capability from the subgroups of the range asked, by hand here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from linepulse.calendar import utc_text
from linepulse.config import PlantConfig
from linepulse.spc_stream import SpcStream, spc_record
from services.kpi.api import create_app
from tests.unit.kpi.served import store_over_core
from tests.unit.kpi.test_shift_report import classic, events, statuses

T0 = 1_793_613_600_000  # 2026-11-02T06:00:00Z, the early shift's start
CHART = "filler-1/fill_g"


def plant() -> PlantConfig:
    chart = {
        "machine": "filler-1",
        "signal": "fill_g",
        "subgroup_size": 2,
        "limits": {"center": 500.0, "sigma": 1.0},
        "spec": {"lsl": 494.0, "usl": 506.0},
        "rules": ["beyond_3sigma"],
    }
    return classic(spc=[chart])


def subgroups(config: PlantConfig) -> list[dict[str, Any]]:
    """Three subgroups of two in the shift (the second beyond the upper limit, 502.12),
    and one after it ends at 14:00."""
    stream = SpcStream(config.spc[0], 0)
    at = [T0 + 3_600_000, T0 + 7_200_000, T0 + 10_800_000, T0 + 8 * 3_600_000 + 60_000]
    weights = [(499.0, 501.0), (503.0, 504.0), (500.0, 500.0), (500.0, 502.0)]
    samples = [(t + k, w) for t, pair in zip(at, weights, strict=True) for k, w in enumerate(pair)]
    points = stream.add([*samples, (at[-1] + 60_000, 500.0)])
    return [spc_record(stream, point, "line-1") for point in points]


def test_the_charts_over_a_range_and_in_the_shift_report(tmp_path: Path) -> None:
    config = plant()
    with store_over_core(tmp_path, config, events(), statuses(events())) as store:
        store.spc.upsert(subgroups(config))
        store.spc.upsert(subgroups(config))  # published again after a restart: no double
        with TestClient(create_app(config, store, CollectorRegistry())) as client:
            shift = {"from": utc_text(T0), "to": utc_text(T0 + 8 * 3_600_000)}
            answer = client.get("/v1/spc", params=shift).json()
            (chart,) = answer["charts"]
            assert (chart["chart"], chart["line"], chart["kind"]) == (CHART, "line-1", "xbar_r")
            assert [p["x"] for p in chart["points"]] == [500.0, 503.5, 500.0]
            assert chart["subgroups"] == 3
            assert chart["broken"] == {"beyond_3sigma": 1}
            # Sigma within: R-bar / d2 = (2 + 1 + 0) / 3 / 1.128; the mean 501.1667.
            sigma = 1.0 / 1.128
            mean = (499 + 501 + 503 + 504 + 500 + 500) / 6
            cap = chart["capability"]
            assert round(cap["cp"], 6) == round(12 / (6 * sigma), 6)
            assert round(cap["cpk"], 6) == round((506 - mean) / (3 * sigma), 6)
            assert chart["limits"]["ucl"] == 500 + 3 / 2**0.5
            assert len(client.get("/v1/spc").json()["charts"][0]["points"]) >= 3
            # The board's: each chart's last subgroups, whatever the shift.
            (latest,) = client.get("/v1/spc", params={"last": 2}).json()["charts"]
            assert [p["x"] for p in latest["points"]] == [500.0, 501.0]
            assert latest["subgroups"] == 2
            assert client.get("/v1/spc", params={"last": 0}).status_code == 422
            missing = client.get("/v1/spc", params={"chart": "filler-1/torque"})
            assert missing.status_code == 404
            assert CHART in missing.json()["detail"]

            report = client.get(
                "/v1/reports/shift",
                params={"line": "line-1", "date": "2026-11-02", "shift": "early"},
            ).json()
            (control,) = report["process_control"]
            assert (control["chart"], control["subgroups"]) == (CHART, 3)
            assert control["capability"] == cap
            page = client.get(
                "/v1/reports/shift",
                params={"line": "line-1", "date": "2026-11-02", "shift": "early", "format": "html"},
            ).text
            assert "Process control" in page
            assert "beyond_3sigma ×1" in page
