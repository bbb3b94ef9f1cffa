"""Which browser prints PDFs (linepulse/pdf.py): the variable, the PATH, or none, and
a variable naming nothing runnable is an error, not a silent "no PDFs"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linepulse.pdf import BROWSER_ENV, NoBrowser, PdfError, Printer, find_browser


def executable(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 3\n")
    path.chmod(0o755)
    return path


def test_the_variable_wins_over_the_path(tmp_path: Path) -> None:
    on_path = executable(tmp_path, "chromium")
    own = executable(tmp_path, "my-chrome")
    env = {"PATH": str(tmp_path), BROWSER_ENV: str(own)}
    assert find_browser(env) == own
    assert find_browser({"PATH": str(tmp_path)}) == on_path


def test_none_found_is_none_and_a_wrong_variable_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_browser({}) is None
    with pytest.raises(NoBrowser, match=r"LINEPULSE_CHROMIUM='/no/such/chrome' is not"):
        find_browser({BROWSER_ENV: "/no/such/chrome"})


def test_a_printer_without_a_browser_says_how_to_get_one() -> None:
    with pytest.raises(NoBrowser, match="install Debian's chromium"):
        asyncio.run(Printer(None).pdf("<html></html>"))


def test_a_browser_that_fails_is_named_with_its_exit_code(tmp_path: Path) -> None:
    with pytest.raises(PdfError, match=r"did not render the page as page.pdf \(exit 3\)"):
        asyncio.run(Printer(executable(tmp_path, "broken")).pdf("<html></html>"))


def test_a_service_with_a_wrong_variable_logs_it_and_goes_on_without_pdfs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("ERROR", logger="linepulse.pdf"):
        printer = Printer.found({BROWSER_ENV: "/no/such/chrome", "PATH": ""})
    assert printer.browser is None
    assert "no PDFs: LINEPULSE_CHROMIUM='/no/such/chrome' is not an executable browser" in (
        caplog.text
    )
