"""Splitting audio on silence: find cut points near each target boundary, write the chunks,
while the file is still being decoded."""

from __future__ import annotations

import io
import itertools
import math
import wave
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np

from tasks.media import SAMPLE_RATE, MediaInfo, decode_blocks

FRAME_SECONDS = 0.02
# Below this level (dBFS) a frame is silent whatever the speech level is.
SILENCE_FLOOR_DB = -50.0
# Frames this far below the file's loud level count as silence too.
SILENCE_BELOW_SPEECH_DB = 30.0
# A pause this long is a safe place to cut (longer than the gap between two words).
MIN_PAUSE_SECONDS = 0.25
# A chunk needs this much non-silent audio to be worth sending to the model.
MIN_SPEECH_SECONDS = 0.2


@dataclass(frozen=True)
class Chunk:
    """One piece of a job's audio: where it sits in the file and where it is stored."""

    index: int
    start: float
    end: float
    path: str
    has_speech: bool = True

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SplitOptions:
    """How to split: the aimed-for chunk length, how far to search for a pause, a shorter
    first chunk (its text comes back first: a user sees progress early), and the workers the
    chunks are spread over (the last chunks are sized so that they all finish together)."""

    target_seconds: float = 120.0
    search_seconds: float = 20.0
    first_seconds: float | None = None
    workers: int = 1
    # A shorter chunk would cost a whole 30 s model window anyway.
    shortest_seconds: float = 30.0

    def target_of(self, index: int) -> float:
        """The aimed-for length of chunk ``index`` before the tail is balanced."""
        if index == 0 and self.first_seconds:
            return min(self.first_seconds, self.target_seconds)
        return self.target_seconds


def next_length(left: float, busy_until: list[float], index: int, options: SplitOptions) -> float:
    """How long to make chunk ``index`` when ``left`` seconds remain; ``left`` itself when the
    rest is the last chunk.

    ``busy_until`` says when each worker finishes what it already has (in seconds of audio:
    decode time is about proportional to it). Workers take the next chunk as they free up, so
    once the rest fits in about one more chunk per worker it is shared out for all of them to
    finish together, in pieces of at most half ``target_seconds`` (Dask hands each to the
    first worker free, which evens out what the audio-seconds plan cannot foresee); before
    that, chunks are ``target_of(index)`` long.
    """
    target = options.target_of(index)
    if index == 0 or len(busy_until) == 1:
        return target if left > target * 1.25 else left
    order = sorted(busy_until)
    for count in range(len(order), 0, -1):  # as many workers as get a useful piece
        finish = (sum(order[:count]) + left) / count
        if finish - order[count - 1] >= min(options.shortest_seconds, left):
            break
    piece = finish - order[0]
    if piece <= target * 1.25:
        # Each worker's last share in equal pieces of at most half a chunk: decode speed
        # varies by a fifth from chunk to chunk, and a worker that runs ahead takes the
        # next piece.
        pieces = math.ceil(piece / (options.target_seconds / 2))
        piece /= max(1, min(pieces, math.floor(piece / options.shortest_seconds)))
        return piece if left - piece >= options.shortest_seconds else left
    return target


def frame_levels(samples: np.ndarray) -> np.ndarray:
    """Level of each 20 ms frame in dBFS."""
    size = int(SAMPLE_RATE * FRAME_SECONDS)
    count = len(samples) // size
    if count == 0:
        return np.full(1, -120.0)
    frames = samples[: count * size].astype(np.float32).reshape(count, size) / 32768.0
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    levels: np.ndarray = 20.0 * np.log10(np.maximum(rms, 1e-6))
    return levels


def silence_threshold(levels: np.ndarray) -> float:
    """The level (dBFS) below which a frame is quiet enough to cut in, judged against the
    speech heard so far."""
    loud = float(np.percentile(levels, 95))
    return max(SILENCE_FLOOR_DB, loud - SILENCE_BELOW_SPEECH_DB)


def _pauses(silent: np.ndarray) -> list[tuple[int, int]]:
    """Runs of silent frames as (first, end) frame indices."""
    padded = np.concatenate(([False], silent, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def cut_points(samples: np.ndarray, options: SplitOptions) -> list[float]:
    """Times (seconds) at which to cut, each in the best pause near its aimed-for boundary
    (see ``_plan``)."""
    bounds = _plan(iter([samples]), len(samples) / SAMPLE_RATE, options)
    return [end for _, end, _ in bounds][:-1]


def stream_chunks(
    blocks: Iterable[np.ndarray], declared: float, folder: str, options: SplitOptions
) -> Generator[Chunk, None, None]:
    """Split audio while it is still being decoded: each chunk is written under ``folder``
    and yielded as soon as the audio around its end has arrived, so that the first chunks
    are transcribed while the rest of the file is decoded.

    ``declared`` is the length the plan starts from (the probe's); the decoded audio decides
    where the last chunk ends. Errors of ``blocks`` (a truncated file) pass through.
    """
    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    for index, (start, end, audio) in enumerate(_plan(iter(blocks), declared, options)):
        yield _write_chunk(fs, root, index, start, end, audio.between(start, end))


def planned_count(duration: float, options: SplitOptions) -> int:
    """How many chunks ``duration`` seconds are likely to make (cuts move to pauses)."""
    busy, left, count = [0.0] * max(1, options.workers), duration, 0
    while (length := next_length(left, busy, count, options)) < left:
        busy[busy.index(min(busy))] += length
        left, count = left - length, count + 1
    return count + 1


class _Audio:
    """Decoded audio as it arrives, with the level of each complete 20 ms frame."""

    FRAME = int(SAMPLE_RATE * FRAME_SECONDS)

    def __init__(self, expected_seconds: float) -> None:
        self.samples = np.empty(int(expected_seconds * SAMPLE_RATE) + SAMPLE_RATE, np.int16)
        self.size = 0
        self.levels = np.empty(len(self.samples) // self.FRAME + 1)
        self.frames = 0

    @property
    def seconds(self) -> float:
        return self.size / SAMPLE_RATE

    def append(self, block: np.ndarray) -> None:
        if self.size + len(block) > len(self.samples):  # longer than declared: grow
            self.samples = np.resize(self.samples, 2 * (self.size + len(block)))
            self.levels = np.resize(self.levels, len(self.samples) // self.FRAME + 1)
        self.samples[self.size : self.size + len(block)] = block
        self.size += len(block)
        complete = self.size // self.FRAME
        if complete > self.frames:
            fresh = self.samples[self.frames * self.FRAME : complete * self.FRAME]
            self.levels[self.frames : complete] = frame_levels(fresh)
            self.frames = complete

    def between(self, start: float, end: float) -> np.ndarray:
        return self.samples[int(start * SAMPLE_RATE) : min(int(end * SAMPLE_RATE), self.size)]

    def cut(self, low: float, high: float, aim: float) -> float:
        """The best place to cut between ``low`` and ``high``, judged against the level of
        the speech decoded so far: the longest pause (nearest ``aim`` among similar ones),
        else the quietest 200 ms."""
        levels = self.levels[: self.frames] if self.frames else np.full(1, -120.0)
        first = int(low / FRAME_SECONDS)
        window = levels[first : int(high / FRAME_SECONDS) + 1] < silence_threshold(levels)
        pauses = [(a + first, b + first) for a, b in _pauses(window)]
        cut = _best_pause(pauses, low, high, aim, MIN_PAUSE_SECONDS / FRAME_SECONDS)
        return round(_quietest(levels, low, high) if cut is None else cut, 3)


def _plan(
    blocks: Iterator[np.ndarray], declared: float, options: SplitOptions
) -> Iterator[tuple[float, float, _Audio]]:
    """(start, end, audio) of each chunk, as soon as the audio decides it.

    Lengths come from ``next_length``, planned again from each actual cut. Within the search
    window of every boundary (``search_seconds``, at most a quarter of the chunk) the longest
    pause wins (a sentence break beats a word gap); with no pause there, the quietest 200 ms.
    """
    audio = _Audio(declared)
    ended = False
    busy_until = [0.0] * max(1, options.workers)
    last, index = 0.0, 0
    while True:
        total = audio.seconds if ended else declared
        if not ended and audio.seconds > declared + 1.0:  # longer than declared: open end
            total = audio.seconds + options.target_seconds * 1.25
        length = next_length(total - last, busy_until, index, options)
        final = length >= total - last
        aim = last + length
        search = min(options.search_seconds, length * 0.25)
        margin = min(options.shortest_seconds, length) * 0.5
        high = min(total - margin, aim + search)
        # A cut waits for audio a margin past its window: a file that ends (earlier than
        # declared) just after it is planned again from its real end, not left a sliver.
        if not ended and (final or audio.seconds < high + margin):
            block = next(blocks, None)
            if block is None:
                ended = True
            else:
                audio.append(block)
            continue
        if final:
            yield last, round(audio.seconds, 3), audio
            return
        cut = audio.cut(max(last + length * 0.5, aim - search), high, aim)
        yield last, cut, audio
        busy_until[busy_until.index(min(busy_until))] += cut - last
        last, index = cut, index + 1


def _best_pause(
    pauses: list[tuple[int, int]], low: float, high: float, aim: float, min_frames: float
) -> float | None:
    best: tuple[float, float] | None = None
    for first, end in pauses:
        start_s, end_s = first * FRAME_SECONDS, end * FRAME_SECONDS
        clipped_start, clipped_end = max(start_s, low), min(end_s, high)
        length = (clipped_end - clipped_start) / FRAME_SECONDS
        if length < min_frames:
            continue
        middle = (clipped_start + clipped_end) / 2
        # Prefer long pauses; among similar ones the one nearest the target.
        score = length * FRAME_SECONDS - 0.01 * abs(middle - aim)
        if best is None or score > best[0]:
            best = (score, middle)
    return None if best is None else best[1]


def _quietest(levels: np.ndarray, low: float, high: float) -> float:
    first, last = (
        int(low / FRAME_SECONDS),
        max(int(high / FRAME_SECONDS), int(low / FRAME_SECONDS) + 1),
    )
    window = levels[first:last]
    smoothed = np.convolve(window, np.ones(10) / 10, mode="same") if len(window) >= 10 else window
    return (first + int(np.argmin(smoothed))) * FRAME_SECONDS + FRAME_SECONDS / 2


def has_speech(samples: np.ndarray) -> bool:
    """Whether a stretch holds any sound above the silence floor worth transcribing."""
    levels = frame_levels(samples)
    return bool(np.sum(levels >= SILENCE_FLOOR_DB) * FRAME_SECONDS >= MIN_SPEECH_SECONDS)


def write_chunks(samples: np.ndarray, cuts: list[float], folder: str) -> list[Chunk]:
    """Write each stretch between cuts as a 16 kHz mono WAV under ``folder``."""
    duration = len(samples) / SAMPLE_RATE
    bounds = [0.0, *cuts, duration]
    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    return [
        _write_chunk(
            fs, root, index, start, end, samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        )
        for index, (start, end) in enumerate(itertools.pairwise(bounds))
    ]


def _write_chunk(
    fs: fsspec.AbstractFileSystem, root: str, index: int, start: float, end: float,
    piece: np.ndarray,
) -> Chunk:  # fmt: skip
    path = f"{root.rstrip('/')}/{index:04d}.wav"
    with fs.open(path, "wb") as handle:
        handle.write(wav_bytes(piece))
    return Chunk(index, round(start, 3), round(end, 3), _url(fs, path), has_speech(piece))


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A plain path for local files, a full URL for remote ones."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return path if "file" in protocols else fs.unstrip_protocol(path)


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit WAV file contents."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.astype(np.int16).tobytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class SplitPlan:
    """A probed file to split while its chunks are transcribed, and where the chunks go."""

    info: MediaInfo
    folder: str
    options: SplitOptions


def split_while_decoding(plan: SplitPlan) -> Generator[Chunk, None, None]:
    """Decode ``plan.info`` with ffmpeg and yield its chunks as they are cut; MediaError
    (truncated, corrupt, no sound) once the decoded stream proves it."""
    return stream_chunks(decode_blocks(plan.info), plan.info.duration, plan.folder, plan.options)
