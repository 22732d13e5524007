"""Shaping text and files to Discord's message limits: pure functions, no HTTP."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from typing import TypeVar

# Discord's documented limits.
CONTENT_LIMIT = 2000  # characters of a message's text
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 256
USERNAME_LIMIT = 80
ATTACHMENT_LIMIT = 10 * 1024 * 1024  # bytes per message: Discord's default upload limit
FILES_PER_MESSAGE = 10

MIN_SPLIT_LIMIT = 16  # room for a reopened fence, its closing line and some text

_FENCE = "```"
_CLOSE = "\n```"
_FENCE_TAG = re.compile(r"([A-Za-z0-9_+#.-]*)[ \t]*\r?\n")  # "```py\n": the language tag

Item = TypeVar("Item")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_file_name(text: str) -> str:
    """A file name Discord shows as given: letters, digits, ``._-``; others become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "file"


def split_message(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters for Discord.

    Cuts on a paragraph, else a line, else a word boundary (a hard cut as the last resort),
    dropping only the whitespace at each cut. A ``` code block cut in two is closed at the end
    of the part and reopened, with its language tag, at the start of the next.
    """
    if limit < MIN_SPLIT_LIMIT:
        raise ValueError(f"limit must be at least {MIN_SPLIT_LIMIT} characters, not {limit}")
    fences = _Fences(text)
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        lang = fences.open_at(pos)
        reopen = "" if lang is None else _reopen(lang, limit)
        rest = text[pos:]
        if len(reopen) + len(rest) <= limit:
            if rest.strip():
                parts.append(reopen + rest)
            break
        cut, drop = _cut(rest, limit - len(reopen))
        if fences.open_at(fences.outside(pos + cut)) is not None:  # leave room to close it
            cut, drop = _cut(rest, limit - len(reopen) - len(_CLOSE))
        cut = fences.outside(pos + cut) - pos
        chunk = rest[:cut].rstrip()
        pos += cut
        while pos < len(text) and text[pos] in drop:
            pos += 1
        close = "" if fences.open_at(pos) is None else _CLOSE
        if close and text.startswith(_FENCE, pos):  # the block's own closing fence fits here
            pos += len(_FENCE)
        if chunk.strip():
            parts.append(reopen + chunk + close)
    return parts


def close_open_fence(text: str) -> str:
    """``text`` with a code block it leaves open (an answer cut short) closed."""
    return text + _CLOSE if text.count(_FENCE) % 2 else text


def group_attachments(
    files: Sequence[tuple[Item, int]], byte_limit: int = ATTACHMENT_LIMIT
) -> list[tuple[Item, ...]]:
    """Files (each with its size in bytes) grouped in order into messages Discord accepts:
    at most ``FILES_PER_MESSAGE`` each, and ``byte_limit`` bytes unless one file alone."""
    groups: list[list[Item]] = []
    room = 0
    for file, size in files:
        if not groups or len(groups[-1]) >= FILES_PER_MESSAGE or size > room:
            groups.append([])
            room = byte_limit
        groups[-1].append(file)
        room -= size
    return [tuple(group) for group in groups]


class _Fences:
    """The ``` fences of a text, and which code block (its language) is open where."""

    def __init__(self, text: str) -> None:
        self.ends: list[int] = []
        self.langs: list[str | None] = []  # after each fence: the open block's tag, None: closed
        lang: str | None = None
        for fence in re.finditer(_FENCE, text):
            if lang is None:
                tag = _FENCE_TAG.match(text, fence.end())
                lang = tag.group(1) if tag else ""
            else:
                lang = None
            self.ends.append(fence.end())
            self.langs.append(lang)

    def open_at(self, position: int) -> str | None:
        index = bisect_right(self.ends, position)
        return self.langs[index - 1] if index else None

    def outside(self, position: int) -> int:
        """``position``, moved back to the start of a fence it would cut through."""
        index = bisect_right(self.ends, position)
        if index < len(self.ends) and self.ends[index] - len(_FENCE) < position:
            return self.ends[index] - len(_FENCE)
        return position


def _reopen(lang: str, limit: int) -> str:
    reopen = f"{_FENCE}{lang}\n"
    return reopen if len(reopen) + len(_CLOSE) + 8 <= limit else f"{_FENCE}\n"


def _cut(rest: str, window: int) -> tuple[int, str]:
    """Where a part of at most ``window`` characters ends, and the whitespace dropped there."""
    for minimum in (window // 2, 1):  # a late boundary of any kind beats an early paragraph
        for separator, drop in (("\n\n", "\r\n"), ("\n", "\r\n"), (" ", " \t")):
            index = rest.rfind(separator, 0, window + len(separator))
            if index >= minimum:
                return index, drop
    return window, ""
