"""HTML pages printed to PDF by a headless Chromium: the shift report as a file to attach,
and its charts photographed as PNG images for the mail (`Printer.png`).

The report is one self-contained page (tables and inline styles, nothing fetched), so the
browser's own print engine is the truest PDF of it: what the mail client shows is what
the PDF shows. Chromium is run as a command (`--headless --print-to-pdf`), one process a
page with a profile folder of its own, so nothing is shared between pages or with a
browser a person runs; no Python browser driver is needed at run time.

Which browser: the `LINEPULSE_CHROMIUM` variable (a path or a command name) if set, else
the first of `chromium`, `chromium-browser`, `google-chrome`, `google-chrome-stable` on
the PATH (Debian's `chromium` package gives the first). None found, or a variable that
names nothing runnable: the services say so once and go on without PDFs (the API answers
`format=pdf` with 501, the mail goes without an attachment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Final

from linepulse.errors import LinePulseError
from linepulse.png import PngError, top_rows

log = logging.getLogger(__name__)

BROWSER_ENV: Final = "LINEPULSE_CHROMIUM"
BROWSER_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PRINT_TIMEOUT_S: Final = 60.0


class PdfError(LinePulseError):
    """A page could not be printed: no browser, or the browser failed (with its words)."""

    status_code: ClassVar[int] = 501


class NoBrowser(PdfError):
    """No Chromium to print with."""


def find_browser(environ: Mapping[str, str] | None = None) -> Path | None:
    """The Chromium to print with, or None. A `LINEPULSE_CHROMIUM` that names nothing
    runnable is an error (a typo must not silently mean "no PDFs")."""
    env = os.environ if environ is None else environ
    named = env.get(BROWSER_ENV, "").strip()
    if named:
        found = shutil.which(named, path=env.get("PATH"))
        if found is None:
            raise NoBrowser(f"{BROWSER_ENV}={named!r} is not an executable browser")
        return Path(found)
    for name in BROWSER_NAMES:
        found = shutil.which(name, path=env.get("PATH"))
        if found is not None:
            return Path(found)
    return None


def no_browser_detail() -> str:
    return (
        f"PDF needs a headless Chromium and none was found: install Debian's chromium, "
        f"or set {BROWSER_ENV} to the browser's path"
    )


class Printer:
    """Prints pages with one browser, one page at a time (a Chromium start takes most of
    a core for about a second; a burst of requests queues rather than starting many)."""

    def __init__(self, browser: Path | None, *, timeout_s: float = PRINT_TIMEOUT_S) -> None:
        self.browser = browser
        self.timeout_s = timeout_s
        self._one_at_a_time = asyncio.Lock()

    @classmethod
    def found(cls, environ: Mapping[str, str] | None = None) -> Printer:
        """A printer with the browser `find_browser` finds (maybe none). A
        `LINEPULSE_CHROMIUM` naming nothing runnable is logged as the error it is, and
        the service goes on without PDFs rather than not start over a report format."""
        try:
            return cls(find_browser(environ))
        except NoBrowser as error:
            log.error("no PDFs: %s", error.detail)
            return cls(None)

    async def pdf(self, page: str) -> bytes:
        """`page` printed to A4 PDF without the browser's header and footer.

        Raises `NoBrowser` without a browser, `PdfError` with the browser's last words
        when it fails or takes longer than `timeout_s` (then it is killed)."""
        return await self._run(page, "page.pdf", ["--no-pdf-header-footer"], PDF_MAGIC)

    async def png(self, page: str, width: int, height: int) -> bytes:
        """The top `width` x `height` pixels of `page` as a PNG image (a report's chart);
        raises as `pdf` does. Photographed in a window `SHOT_MARGIN_PX` taller, the rest
        cut off: a small headless window's viewport is shorter than the window (a chart
        94 px high came out blank in a window of its height)."""
        size = [f"--window-size={width},{height + SHOT_MARGIN_PX}", "--hide-scrollbars"]
        shot = await self._run(page, "page.png", size, PNG_MAGIC)
        try:
            return top_rows(shot, height)
        except PngError as error:
            raise PdfError(f"{self.browser} made a PNG that cannot be cut: {error}") from None

    async def _run(self, page: str, name: str, options: list[str], magic: bytes) -> bytes:
        if self.browser is None:
            raise NoBrowser(no_browser_detail())
        async with self._one_at_a_time:
            return await _render(page, self.browser, self.timeout_s, name, options, magic)


PDF_MAGIC: Final = b"%PDF"
SHOT_MARGIN_PX: Final = 120
PNG_MAGIC: Final = b"\x89PNG"


async def _render(
    page: str, browser: Path, timeout_s: float, name: str, options: list[str], magic: bytes
) -> bytes:
    """`page` rendered by the browser into the file `name` (`--print-to-pdf` for a .pdf,
    `--screenshot` for a .png), whose bytes must start with `magic`."""
    output = "--print-to-pdf" if name.endswith(".pdf") else "--screenshot"
    with tempfile.TemporaryDirectory(prefix="linepulse-pdf-") as folder:
        where = Path(folder)
        source, target = where / "page.html", where / name
        source.write_text(page, "utf-8")
        process = await asyncio.create_subprocess_exec(
            str(browser),
            "--headless",
            # The page is our own and fetches nothing; the sandbox needs user namespaces
            # a container or root rarely has.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-extensions",
            "--no-first-run",
            *options,
            f"--user-data-dir={where / 'profile'}",
            f"{output}={target}",
            source.as_uri(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout_s):
                _, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise PdfError(f"{browser} took over {timeout_s:.0f} s to render a page") from None
        made = target.read_bytes() if target.is_file() else b""
        if process.returncode != 0 or not made.startswith(magic):
            said = _last_words(err.decode("utf-8", "replace"))
            raise PdfError(
                f"{browser} did not render the page as {name} (exit {process.returncode}): {said}"
            )
        return made


def _last_words(stderr: str) -> str:
    """The browser's error lines without the D-Bus complaints every headless start makes."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and "dbus" not in line.lower() and "DBus" not in line
    ]
    return " / ".join(lines[-3:]) or "no error output"
