"""The shift report of the classic example in headless Chromium (Debian's `chromium`,
driven by Playwright): the page as a mail client's browser engine shows it (the README's
screenshot, docs/shift-report.png), and printed to PDF, whose pages are turned into PNG
(pypdfium2) and checked: one A4 page, its text the report's, not blank."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from linepulse.pdf import BROWSER_ENV, find_browser
from tests.integration.test_board_browser import INSTALL_HINT, launch
from tests.unit.kpi.served import api_over_core
from tests.unit.kpi.test_shift_report import URL, classic, events, statuses

pytestmark = pytest.mark.integration

SCREENSHOT = Path(__file__).parents[2] / "docs" / "shift-report.png"
A4_PT = (595, 842)  # PDFium measures pages in points


def test_the_report_page_renders_and_prints(tmp_path: Path) -> None:
    try:
        import pypdfium2  # noqa: F401 - assert_report_pdf reads the PDF with it
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
    assert_report_pdf(pdf_file.read_bytes())


SHOWN: Final = ("line-1 · early shift · 2026-11-02", "18,848", "74.8 %", "jam")


def assert_report_pdf(data: bytes, shown: tuple[str, ...] = SHOWN) -> None:
    """An A4 report PDF whose pages show `shown`; its first page dark text on a light
    page, and the loss bars in their red (backgrounds printed)."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(data)
    try:
        assert len(pdf) >= 1
        first = pdf[0]
        width, height = first.get_size()
        assert width == pytest.approx(A4_PT[0], abs=2)
        assert height == pytest.approx(A4_PT[1], abs=2)
        text = "\n".join(page.get_textpage().get_text_range() for page in pdf)
        for words in shown:
            assert words in text, words
        image = first.render(scale=1).to_pil().convert("RGB")
        shades = image.convert("L").getextrema()
        assert shades[0] < 100 < shades[1]  # dark text on a light page, not blank
        rgb = image.tobytes()
        red = sum(
            1
            for i in range(0, len(rgb), 3)
            if rgb[i] > 200 and rgb[i + 1] < 100 and rgb[i + 2] < 100
        )
        assert red > 50, "no loss bar printed (backgrounds left out?)"
    finally:
        pdf.close()


def test_the_api_prints_the_report_to_pdf_with_chromium(tmp_path: Path) -> None:
    """`format=pdf`: the same page printed by the API's own Chromium (linepulse/pdf.py)."""
    if find_browser() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with api_over_core(tmp_path, classic(), events(), statuses(events())) as client:
        answer = client.get(URL + "&format=pdf")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    name = "shift-report_line-1_2026-11-02_early.pdf"
    assert answer.headers["content-disposition"] == f'inline; filename="{name}"'
    assert_report_pdf(answer.content)


def test_without_a_browser_a_pdf_is_refused_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(BROWSER_ENV, raising=False)
    with api_over_core(tmp_path, classic(), events(), statuses(events())) as client:
        answer = client.get(URL + "&format=pdf")
        assert client.get(URL + "&format=html").status_code == 200
    assert answer.status_code == 501
    assert "install Debian's chromium" in answer.json()["detail"]
