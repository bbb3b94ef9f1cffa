"""A source's state file (services/ingest/source_state.py): written whole or not at all,
and a file that cannot be used is logged and ignored, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.ingest.source_state import SourceStateFile


def test_a_saved_document_loads_back_and_replaces_the_previous_one(tmp_path: Path) -> None:
    state = SourceStateFile(tmp_path / "state", "line-3", "sparkplug")
    assert state.load() is None  # nothing saved yet (and the folder need not exist)
    state.save({"version": 1, "nodes": {"edge-1": {"seq": 7}}})
    state.save({"version": 1, "nodes": {"edge-1": {"seq": 9}}})
    assert state.load() == {"version": 1, "nodes": {"edge-1": {"seq": 9}}}
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["sparkplug-line-3.json"]


@pytest.mark.parametrize(
    ("content", "said"), [(b"{torn", "not JSON"), (b"[1]", "not a JSON object")]
)
def test_an_unusable_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, said: str
) -> None:
    state = SourceStateFile(tmp_path, "s", "sparkplug")
    state.path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert state.load() is None
    assert said in caplog.text
    assert "starting without it" in caplog.text


def test_a_save_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    state = SourceStateFile(blocker / "state", "s", "sparkplug")
    with caplog.at_level(logging.ERROR):
        state.save({"version": 1})
    assert "cannot save the source's state" in caplog.text
