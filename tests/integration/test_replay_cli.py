"""`linepulse replay` as users run it: a real subprocess, real files, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.cli_command import LINEPULSE

ROOT = Path(__file__).parents[2]
CLASSIC = ROOT / "examples" / "classic-oee"


def linepulse(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI with test arguments
        [*LINEPULSE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_classic_example_replays_to_the_expected_record() -> None:
    done = linepulse(
        "replay", "--config", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl", "--window", "shift"
    )
    assert done.returncode == 0, done.stderr
    expected = json.loads((CLASSIC / "expected.json").read_text())
    (machine,) = [r for r in records(done.stdout) if r["machine"] == "filler-1"]
    for key, value in expected.items():
        assert machine[key] == (
            pytest.approx(value, abs=1e-6) if isinstance(value, float) else value
        )
    assert round(machine["oee"], 6) == 0.747937
    assert machine["final"] is True
    assert "4492 events read, 4492 used" in done.stderr


def test_every_window_kind_and_a_line_record_come_out(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    done = linepulse(
        "replay", "-c", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl", "--output", out
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    got = records(out.read_text())
    kinds = {r["window"] for r in got}
    assert kinds == {"1m", "15m", "1h", "shift", "day"}
    # 06:00 to 14:00 is 480 one-minute windows, plus 05:59 (the baseline) and 14:00.
    assert sum(1 for r in got if r["window"] == "1m" and r["machine"]) == 482
    lines = [r for r in got if r["machine"] is None and r["window"] == "day"]
    assert len(lines) == 1
    assert lines[0]["oee"] == pytest.approx(0.7479365079365079)
    assert all(r["window_start"].endswith("Z") and r["window_end"].endswith("Z") for r in got)


def test_parquet_input_gives_the_same_records_as_json_lines(tmp_path: Path) -> None:
    events = pl.read_ndjson(
        CLASSIC / "events.jsonl", schema_overrides={"value": pl.String}, infer_schema_length=None
    )
    parquet = tmp_path / "events.parquet"
    events.write_parquet(parquet)
    from_json = linepulse("replay", "-c", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl")
    from_parquet = linepulse("replay", "-c", CLASSIC / "plant.yaml", parquet)
    assert from_parquet.returncode == 0, from_parquet.stderr
    key = lambda r: (r["window_start"], r["window"], r["machine"] or "")  # noqa: E731
    assert sorted(records(from_parquet.stdout), key=key) == sorted(
        records(from_json.stdout), key=key
    )


def test_malformed_lines_are_reported_by_number_and_never_stop_the_run(tmp_path: Path) -> None:
    lines = (CLASSIC / "events.jsonl").read_text().splitlines()
    lines.insert(10, "{not json")
    lines.insert(20, '{"ts": "yesterday", "machine": "filler-1", "signal": "state", "value": 1}')
    lines.insert(
        30, '{"ts": 1793599200000, "machine": "nobody", "signal": "state", "value": "down"}'
    )
    lines.insert(
        40, '{"ts": 1793599200000, "machine": "filler-1", "signal": "state", "value": "on", "x": 1}'
    )
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = linepulse("replay", "-c", CLASSIC / "plant.yaml", path, "-w", "shift")
    assert done.returncode == 0, done.stderr
    assert f"{path}: line 11: malformed JSON" in done.stderr
    assert f"{path}: line 21: ts is not an RFC 3339 timestamp: 'yesterday'" in done.stderr
    assert "unknown machine 'nobody'" in done.stderr
    assert f"{path}: line 41: unknown field(s): x" in done.stderr
    assert "3 malformed, 1 rejected" in done.stderr
    (machine,) = [r for r in records(done.stdout) if r["machine"] == "filler-1"]
    assert round(machine["oee"], 6) == 0.747937  # the good events around them all count


def test_events_from_a_reset_clock_or_a_sentinel_date_are_refused_not_walked(
    tmp_path: Path,
) -> None:
    """One event at the epoch or at 9999-12-31 beside the shift's would have the core
    produce every window in between (it ran out of memory); both are refused with why."""
    lines = (CLASSIC / "events.jsonl").read_text().splitlines()
    lines.insert(5, '{"ts": 0, "machine": "filler-1", "signal": "state", "value": "down"}')
    lines.append(
        '{"ts": "9999-12-31T23:59:00Z", "machine": "filler-1", "signal": "total_count", '
        '"value": 99999999}'
    )
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = linepulse("replay", "-c", CLASSIC / "plant.yaml", path, "-w", "shift")
    assert done.returncode == 0, done.stderr
    assert "ts outside the accepted range: 1970-01-01T00:00:00Z is not within" in done.stderr
    assert "ts outside the accepted range: 9999-12-31T23:59:00Z is not within" in done.stderr
    (machine,) = [r for r in records(done.stdout) if r["machine"] == "filler-1"]
    assert round(machine["oee"], 6) == 0.747937


def test_a_bad_config_names_the_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(
        (CLASSIC / "plant.yaml")
        .read_text()
        .replace("ideal_cycle_time_s: 1.0", "ideal_cycle_time_s: -1")
    )
    done = linepulse("replay", "-c", config, CLASSIC / "events.jsonl")
    assert done.returncode == 2
    assert "lines[0].machines[0].ideal_cycle_time_s: Input should be greater than 0" in done.stderr
    assert done.stdout == ""


def test_missing_events_file_and_unknown_window_are_clear_errors(tmp_path: Path) -> None:
    done = linepulse("replay", "-c", CLASSIC / "plant.yaml", tmp_path / "nope.jsonl")
    assert done.returncode == 1
    assert "cannot read events file" in done.stderr
    done = linepulse("replay", "-c", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl", "-w", "2h")
    assert done.returncode == 2
    assert "--window must be one of 1m, 15m, 1h, shift, day; got 2h" in done.stderr


def test_progress_bar_on_request_and_none_by_default(tmp_path: Path) -> None:
    """The bar (tqdm, imported only when shown) goes to stderr with `--progress`; off a
    terminal it is off by default, and the records are the same either way."""
    shown = linepulse(
        "replay", "-c", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl", "--progress"
    )
    hidden = linepulse("replay", "-c", CLASSIC / "plant.yaml", CLASSIC / "events.jsonl")
    assert shown.returncode == 0, shown.stderr
    assert hidden.returncode == 0, hidden.stderr
    kilobytes = round((CLASSIC / "events.jsonl").stat().st_size / 1000)
    assert f"replay: 100%|██████████| {kilobytes}k/{kilobytes}k" in shown.stderr
    assert "100%" not in hidden.stderr
    assert shown.stdout == hidden.stdout
