"""What the fake providers answer with: readable text, valid PNG and MP4 bytes of a given
size, and OpenAI's duration format."""

from __future__ import annotations

import itertools
import re
import struct
import zlib

_SIZE_PROMPT = re.compile(r"^(long|large):(\d+)\b")
_SENTENCE = (
    "the quick relay carries each message across the wire while small workers hum along "
    "and every answer finds its way home before the kettle boils"
)
_WORDS = _SENTENCE.split()


def sized(prompt: str | None, kind: str) -> int | None:
    """N from a ``long:N`` / ``large:N`` prompt of that kind, else None."""
    match = _SIZE_PROMPT.match(prompt or "")
    return int(match.group(2)) if match and match.group(1) == kind else None


def readable_text(length: int) -> str:
    """Exactly `length` characters of words, with a newline every dozen words or so."""
    pieces: list[str] = []
    total = 0
    for index, word in enumerate(itertools.cycle(_WORDS)):
        if total >= length:
            break
        piece = word + ("\n" if index % 12 == 11 else " ")
        pieces.append(piece)
        total += len(piece)
    return "".join(pieces)[:length]


def png_bytes(size: int | None = None) -> bytes:
    """A valid 1x1 PNG, padded with a tEXt chunk to `size` bytes when that is bigger."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x20\x60\xa0"))
    end = chunk(b"IEND", b"")
    padding = (size or 0) - len(head) - len(pixels) - len(end) - 12 - len(b"Comment\x00")
    text = chunk(b"tEXt", b"Comment\x00" + b"x" * padding) if padding > 0 else b""
    return head + pixels + text + end


def mp4_bytes(size: int | None = None) -> bytes:
    """An ``ftyp`` box and a ``free`` box filling to `size` bytes (4 KB by default)."""
    ftyp = struct.pack(">I", 32) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2avc1mp41"
    free_size = max((size or 4096) - len(ftyp), 8)
    return ftyp + struct.pack(">I", free_size) + b"free" + b"\x00" * (free_size - 8)


def go_duration(seconds: float) -> str:
    """OpenAI's reset header format: ``"20ms"``, ``"1.2s"``, ``"6m0s"``."""
    if seconds < 0.9995:
        return f"{max(round(seconds * 1000), 1)}ms"
    minutes, rest = divmod(round(seconds, 1), 60)
    text = f"{rest:.1f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text
