"""`linepulse spc` over a telemetry file (issue 21, first part): Montgomery's piston rings
sent as a machine's `bore_mm` among other telemetry, charted as the config's `spc:` says;
limits as the textbook prints them, the later samples beyond them at their plant times,
capability, and the refusals as exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from linepulse.calendar import utc_text
from tests.cli_command import LINEPULSE
from tests.unit.common.test_spc_chart import MINUTE, PHASE_ONE, PHASE_TWO, T0

pytestmark = pytest.mark.integration

PLANT: dict[str, Any] = {
    "site": "plant-a",
    "timezone": "Europe/Berlin",
    "shifts": [{"name": "early", "start": "06:00", "end": "14:00"}],
    "lines": [{"id": "line-1", "machines": [{"id": "press-1", "ideal_cycle_time_s": 1.0}]}],
    "spc": [
        {
            "machine": "press-1",
            "signal": "bore_mm",
            "chart": "xbar_r",
            "subgroup_size": 5,
            "spec": {"lsl": 73.95, "usl": 74.05, "target": 74.0},
            "baseline": {"from": utc_text(T0), "to": utc_text(T0 + 125 * MINUTE)},
        }
    ],
}


def spc(*args: str) -> subprocess.CompletedProcess[str]:
    command = [*LINEPULSE, "spc", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


def files(folder: Path, plant: dict[str, Any]) -> tuple[Path, Path]:
    """The plant, and its telemetry: the 40 samples' 200 diameters one a minute, a state
    and a temperature beside them, and one diameter of bad quality (not a sample)."""
    config = folder / "plant.yaml"
    config.write_text(yaml.safe_dump(plant))
    values = [v for row in [*PHASE_ONE, *PHASE_TWO] for v in row]
    events: list[dict[str, Any]] = [
        {"ts": utc_text(T0), "machine": "press-1", "signal": "state", "value": "running"}
    ]
    for i, value in enumerate(values):
        ts = utc_text(T0 + i * MINUTE)
        events.append({"ts": ts, "machine": "press-1", "signal": "bore_mm", "value": value})
        events.append({"ts": ts, "machine": "press-1", "signal": "temperature", "value": 60.5})
    bad = {"ts": utc_text(T0 + 30_000), "machine": "press-1", "signal": "bore_mm"}
    events.append({**bad, "value": 99.0, "quality": "bad"})
    telemetry = folder / "events.jsonl"
    telemetry.write_text("".join(json.dumps(e) + "\n" for e in events))
    return config, telemetry


def test_the_piston_rings_charted_from_a_telemetry_file(tmp_path: Path) -> None:
    config, telemetry = files(tmp_path, PLANT)
    done = spc(str(telemetry), "-c", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["subgroups"] == 40
    limits = result["limits"]
    assert limits["source"] == "baseline"
    assert limits["ucl"] == pytest.approx(74.014, abs=0.001)
    assert limits["lcl"] == pytest.approx(73.988, abs=0.001)
    assert round(limits["spread_ucl"], 3) == 0.049
    beyond = [v["end"] for v in result["violations"] if v["rule"] == "beyond_3sigma"]
    # Samples 37 to 39 end at minutes 184, 189 and 194.
    assert beyond == [utc_text(T0 + m * MINUTE) for m in (184, 189, 194)]
    assert result["capability"]["n"] == 200  # the bad-quality value is no sample
    text = spc(str(telemetry), "-c", str(config))
    assert text.returncode == 0, text.stderr
    assert "press-1/bore_mm: X-bar and R, subgroups of 5, 40 subgroups" in text.stdout
    # 09:04 UTC is 10:04 in Berlin (CET), the plant's time.
    assert "2026-11-02 10:04  beyond_3sigma" in text.stdout
    assert "capability: Cp " in text.stdout
    assert "2026-11-02 early: Cp" in text.stdout


def test_what_cannot_be_charted_is_refused_with_its_reason(tmp_path: Path) -> None:
    config, telemetry = files(tmp_path, PLANT)
    unknown = spc(str(telemetry), "-c", str(config), "--chart", "press-1/torque")
    assert unknown.returncode == 2
    assert "--chart press-1/torque: not in the config's spc: (press-1/bore_mm)" in unknown.stderr
    (tmp_path / "bare").mkdir()
    bare, _ = files(tmp_path / "bare", {**PLANT, "spc": []})
    none = spc(str(telemetry), "-c", str(bare))
    assert none.returncode == 2
    assert "no spc: charts" in none.stderr
    six_minutes = {"from": utc_text(T0), "to": utc_text(T0 + 6 * MINUTE)}
    early = {**PLANT["spc"][0], "baseline": six_minutes}
    (tmp_path / "short").mkdir()
    short, _ = files(tmp_path / "short", {**PLANT, "spc": [early]})
    few = spc(str(telemetry), "-c", str(short))
    assert few.returncode == 1
    assert "press-1/bore_mm: the baseline holds 1 subgroup(s)" in few.stderr
