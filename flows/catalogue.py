"""What ``python -m cli batch import`` reads: a folder scan, or a CSV / JSON list."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tasks.media import MediaError, probe

MEDIA_SUFFIXES = {
    ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ts", ".flv",
    ".wav", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".flac",
}  # fmt: skip


class CatalogueError(ValueError):
    """A list that cannot be read, named with the problem."""


def read_sources(target: str | Path) -> list[str]:
    """Sources named by a folder (media files under it), a CSV or a JSON list."""
    path = Path(target).expanduser()
    if path.is_dir():
        return sorted(
            str(f.resolve())
            for f in path.rglob("*")
            if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES
        )
    if not path.is_file():
        raise CatalogueError(f"{target}: no such folder or list file")
    if path.suffix.lower() == ".csv":
        return _resolved(_from_csv(path), path.parent)
    if path.suffix.lower() == ".json":
        return _resolved(_from_json(path), path.parent)
    raise CatalogueError(f"{path.name}: expected a folder, a .csv or a .json list")


def _from_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    for column in ("source", "path", "url"):
        if column in header:
            index = header.index(column)
            return [row[index].strip() for row in rows[1:] if len(row) > index]
    return [row[0].strip() for row in rows]


def _from_json(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CatalogueError(f"{path.name}: not valid JSON ({err})") from err
    if isinstance(data, dict):
        data = data.get("videos", data.get("sources"))
    if not isinstance(data, list):
        raise CatalogueError(f"{path.name}: expected a list of paths or of {{'source': ...}}")
    sources = []
    for item in data:
        value = item.get("source") or item.get("path") if isinstance(item, dict) else item
        if not isinstance(value, str) or not value.strip():
            raise CatalogueError(f"{path.name}: entry {item!r} names no source")
        sources.append(value.strip())
    return sources


def _resolved(sources: list[str], base: Path) -> list[str]:
    """Relative paths in a list are relative to the list; URLs stay as they are."""
    return [s if "://" in s else str((base / s).expanduser().resolve()) for s in sources]


def describe(source: str) -> tuple[str, str, float | None]:
    """``(source, name, duration)`` for the catalogue; an unreadable file gets no duration
    (its worker fails it later with the reason, so the import itself never stops)."""
    name = Path(source.split("?", 1)[0]).name or source
    if "://" in source:
        return source, name, None
    try:
        return source, name, round(probe(source).duration, 3)
    except MediaError:
        return source, name, None
