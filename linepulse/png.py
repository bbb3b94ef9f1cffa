"""The top rows of a PNG image, without an imaging library.

Chromium's headless screenshots of a small window come out blank or cut (its viewport is
shorter than the window it is given), so a chart is photographed in a taller window and
the white below it cut off here. Cutting rows off the bottom needs no decoding of pixels:
each scanline is its filter byte and its bytes, and a filter only refers to rows above,
so the first rows of the decompressed data are a valid image of their own.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of each PNG colour type (grey, RGB, palette, grey+alpha, RGBA).
_SAMPLES: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PngError(ValueError):
    """Not a PNG this module can cut (or not a PNG at all)."""


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    if not png.startswith(SIGNATURE):
        raise PngError("not a PNG image")
    chunks, at = [], len(SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        chunks.append((kind, png[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def top_rows(png: bytes, height: int) -> bytes:
    """The image's first `height` rows (all of it if it has no more)."""
    chunks = _chunks(png)
    kind, header = chunks[0]
    width, rows, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if kind != b"IHDR" or colour not in _SAMPLES or interlace != 0:
        raise PngError("only a non-interlaced PNG's rows can be cut")
    if height >= rows:
        return png
    stride = 1 + (width * _SAMPLES[colour] * depth + 7) // 8  # filter byte, then the row
    pixels = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    kept = zlib.compress(pixels[: stride * height], 9)
    head = struct.pack(">II", width, height) + header[8:]
    before = [_chunk(k, d) for k, d in chunks[1:] if k not in (b"IDAT", b"IEND")]
    return b"".join(
        [SIGNATURE, _chunk(b"IHDR", head), *before, _chunk(b"IDAT", kept), _chunk(b"IEND", b"")]
    )
