"""A note for the next shift written on the live board (issue 20), in headless Chromium:
the card's `note` button opens a form; the note goes to the alerts API (`POST
/v1/notes`) with the alerts token, asked once per tab; it lands with the shift running,
where the mailed report takes it from."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.alerts.engine import AlertEngine
from services.kpi.store import KpiStore
from tests.integration.test_board_browser import (
    INSTALL_HINT,
    TOKEN,
    Served,
    alerts_api,
    board_page,
)
from tests.integration.test_board_layout_browser import serve_board
from tests.integration.test_board_spc_browser import plant

pytestmark = pytest.mark.integration

WAIT_MS = 15_000


@pytest.fixture
def alerts(tmp_path: Path) -> Iterator[Served]:
    def nothing(engine: AlertEngine, now: int) -> None:
        return None

    with alerts_api(plant(), tmp_path / "alerts", nothing) as served:
        yield served


def test_a_lead_writes_a_note_on_the_board(tmp_path: Path, alerts: Served) -> None:
    try:
        from playwright.sync_api import expect
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    today = datetime.now(UTC).date().isoformat()
    with KpiStore(tmp_path / "kpi.duckdb", plant()) as store:
        kpi = serve_board(plant(), store, alerts.url)
        try:
            with board_page(kpi.url) as (page, errors):
                page.locator('[data-note="fill"]').click(timeout=WAIT_MS)
                dialog = page.locator("#note")
                expect(dialog).to_be_visible()
                expect(page.locator("#note-line")).to_have_text("fill")
                page.fill("#note-who", "ann")
                page.fill("#note-text", "nozzle 3 drips; spare ordered")
                page.fill("#note-token", "wrong")
                page.click("#note-save")
                # A wrong token: asked again, with why.
                expect(page.locator("#note-error")).to_contain_text("refused the token")
                page.fill("#note-token", TOKEN)
                page.click("#note-save")
                expect(dialog).to_be_hidden()
                # The second note: the token is not asked again in this tab.
                page.locator('[data-note="fill"]').click()
                expect(page.locator("#note-token-label")).to_be_hidden()
                expect(page.locator("#note-who")).to_have_value("ann")
                page.fill("#note-text", "line cleared at handover")
                page.click("#note-save")
                expect(dialog).to_be_hidden()
                assert errors == []
        finally:
            assert kpi.stop()
    query = {"line": "fill", "date": today, "shift": "all-day"}
    notes = httpx.get(alerts.url + "/v1/notes", params=query).json()
    assert [(n["by"], n["text"]) for n in notes] == [
        ("ann", "nozzle 3 drips; spare ordered"),
        ("ann", "line cleared at handover"),
    ]
