"""`python -m bench.steps` runs end to end on a small plant and prints its table and the
core's stages (it asserts no timing: only that each figure is there)."""

from __future__ import annotations

import re

import pytest

from bench.steps import PHASES, main


def test_the_step_benchmark_prints_a_row_per_size_and_the_stages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    small = ["--machines", "20", "--partitions", "2", "--warmup", "3000"]
    main([*small, "--sizes", "100,400", "--polls", "2", "--phases", "--threads", "--costs"])
    printed = capsys.readouterr().out
    rows = re.findall(r"^\s+([\d,]+)\s+\d+\s+\d+\s+[\d.]+\s+[\d,]+$", printed, re.MULTILINE)
    assert rows == ["100", "400"], printed
    assert "losses priced, warmed" in printed
    assert "side by side in threads" in printed
    staged = re.findall(r"^  (\w+)\s+[\d.]+$", printed, re.MULTILINE)
    assert set(staged) == set(PHASES), printed
