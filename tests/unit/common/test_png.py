"""Cutting a PNG's bottom rows off without an imaging library (linepulse/png.py): the
image Pillow reads back is the original's top, pixel for pixel."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from linepulse.png import PngError, top_rows


def striped(width: int, height: int, mode: str) -> bytes:
    """An image whose every row differs from the one above (so each PNG filter is used)."""
    image = Image.new(mode, (width, height))
    for y in range(height):
        for x in range(width):
            value = (x * 7 + y * 13) % 256
            image.putpixel((x, y), (value, 255 - value, y % 256, 200)[: len(mode)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_the_top_rows_are_the_originals_pixels(mode: str) -> None:
    png = striped(37, 50, mode)
    cut = top_rows(png, 20)
    with Image.open(io.BytesIO(png)) as whole, Image.open(io.BytesIO(cut)) as top:
        assert top.size == (37, 20)
        assert top.mode == mode
        assert top.tobytes() == whole.crop((0, 0, 37, 20)).tobytes()


def test_asking_for_as_many_rows_or_more_gives_the_image_back() -> None:
    png = striped(5, 4, "RGB")
    assert top_rows(png, 4) == png
    assert top_rows(png, 40) == png


def test_what_is_not_a_png_is_refused() -> None:
    with pytest.raises(PngError, match="not a PNG image"):
        top_rows(b"GIF89a", 1)


def test_an_interlaced_png_is_refused() -> None:
    png = striped(8, 8, "RGB")
    # The same header saying Adam7 (Pillow writes no interlaced PNG): its last byte.
    header = png[16:29][:-1] + b"\x01"
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    interlaced = png[:16] + header + crc + png[33:]
    with pytest.raises(PngError, match="non-interlaced"):
        top_rows(interlaced, 4)
