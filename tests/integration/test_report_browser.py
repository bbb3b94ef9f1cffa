"""The shift report of the classic example in headless Chromium (Debian's `chromium`,
driven by Playwright): the page as a mail client's browser engine shows it (the README's
screenshot, docs/shift-report.png), and printed to PDF, whose pages are turned into PNG
(pypdfium2) and checked: one A4 page, its text the report's, not blank."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_board_browser import INSTALL_HINT, launch
from tests.unit.kpi.served import api_over_core
from tests.unit.kpi.test_shift_report import URL, classic, events, statuses

pytestmark = pytest.mark.integration

SCREENSHOT = Path(__file__).parents[2] / "docs" / "shift-report.png"
A4_PT = (595, 842)  # PDFium measures pages in points


def test_the_report_page_renders_and_prints(tmp_path: Path) -> None:
    try:
        import pypdfium2
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT + "; and `pip install pypdfium2`", pytrace=False)
    with api_over_core(tmp_path, classic(), events(), statuses(events())) as client:
        html = client.get(URL + "&format=html").text
    page_file = tmp_path / "report.html"
    page_file.write_text(html, "utf-8")
    pdf_file = tmp_path / "report.pdf"
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 760, "height": 900})
            page.goto(page_file.as_uri())
            expect(page.locator("h1")).to_have_text("line-1 · early shift · 2026-11-02")
            expect(page.get_by_text("1,880 EUR")).to_be_visible()  # equipment failure
            widths = page.evaluate(
                "() => [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[1], widths  # nothing wider than the page
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.pdf(path=str(pdf_file), format="A4", print_background=True)
        finally:
            browser.close()
    pdf = pypdfium2.PdfDocument(str(pdf_file))
    try:
        assert len(pdf) >= 1
        first = pdf[0]
        width, height = first.get_size()
        assert width == pytest.approx(A4_PT[0], abs=2)
        assert height == pytest.approx(A4_PT[1], abs=2)
        text = first.get_textpage().get_text_range()
        for shown in ("line-1 · early shift · 2026-11-02", "18,848", "74.8 %", "jam"):
            assert shown in text, shown
        png = tmp_path / "page-1.png"
        first.render(scale=1).to_pil().save(png)
        shades = first.render(scale=1).to_pil().convert("L").getextrema()
        assert shades[0] < 100 < shades[1]  # dark text on a light page, not blank
        assert png.stat().st_size > 1000
    finally:
        pdf.close()
