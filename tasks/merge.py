"""Merging chunk results into one transcript with file-relative, monotonic timestamps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.asr import ChunkResult, Segment, Word
from tasks.split import Chunk


@dataclass(frozen=True)
class Transcript:
    """A whole file's transcript."""

    segments: tuple[Segment, ...]
    language: str | None
    duration: float
    model: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.segments)


def merge(
    chunks: Iterable[Chunk], results: Iterable[ChunkResult], duration: float, model: str
) -> Transcript:
    """Offset each chunk's segments by its start, in order, kept inside chunk and file."""
    by_index = {result.index: result for result in results}
    merged: list[Segment] = []
    previous_end = 0.0
    for chunk in sorted(chunks, key=lambda c: c.index):
        result = by_index[chunk.index]
        upper = min(chunk.end, duration)
        for segment in result.segments:
            moved = segment.shifted(chunk.start)
            start = min(max(moved.start, chunk.start, previous_end), upper)
            end = min(max(moved.end, start), upper)
            words = tuple(_clamp_word(w, start, end) for w in moved.words)
            merged.append(Segment(round(start, 3), round(end, 3), moved.text, words))
            previous_end = end
    return Transcript(tuple(merged), _language(by_index.values()), round(duration, 3), model)


def _clamp_word(word: Word, low: float, high: float) -> Word:
    start = min(max(word.start, low), high)
    return Word(
        round(start, 3),
        round(min(max(word.end, start), high), 3),
        word.word,
        round(word.probability, 4),
    )


def _language(results: Iterable[ChunkResult]) -> str | None:
    """The language most of the speech was detected in, weighted by audio length."""
    weight: dict[str, float] = {}
    for result in results:
        if result.language and result.segments:
            weight[result.language] = weight.get(result.language, 0.0) + result.audio_seconds
    return max(weight, key=weight.__getitem__) if weight else None
