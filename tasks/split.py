"""Splitting audio on silence: find cut points near each target boundary, write the chunks."""

from __future__ import annotations

import io
import itertools
import wave
from dataclasses import dataclass

import fsspec
import numpy as np

from tasks.media import SAMPLE_RATE

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
    shortest_seconds: float = 20.0

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
    finish together; before that, chunks are ``target_of(index)`` long.
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
    return 20.0 * np.log10(np.maximum(rms, 1e-6))


def silence_mask(levels: np.ndarray) -> np.ndarray:
    """True for frames quiet enough to cut in, judged against the file's own speech level."""
    loud = float(np.percentile(levels, 95))
    threshold = max(SILENCE_FLOOR_DB, loud - SILENCE_BELOW_SPEECH_DB)
    return levels < threshold


def _pauses(silent: np.ndarray) -> list[tuple[int, int]]:
    """Runs of silent frames as (first, end) frame indices."""
    padded = np.concatenate(([False], silent, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def cut_points(samples: np.ndarray, options: SplitOptions) -> list[float]:
    """Times (seconds) at which to cut, each in the best pause near its aimed-for boundary.

    Lengths come from ``next_length``, planned again from each actual cut. Within the search
    window of every boundary (``search_seconds``, at most a quarter of the chunk) the longest
    pause wins (a sentence break beats a word gap); with no pause there, the quietest 200 ms.
    """
    levels = frame_levels(samples)
    duration = len(samples) / SAMPLE_RATE
    pauses = _pauses(silence_mask(levels))
    min_pause = MIN_PAUSE_SECONDS / FRAME_SECONDS
    busy_until = [0.0] * max(1, options.workers)
    cuts: list[float] = []
    last = 0.0
    while (length := next_length(duration - last, busy_until, len(cuts), options)) < (
        duration - last
    ):
        search = min(options.search_seconds, length * 0.25)
        aim = last + length
        low = max(last + length * 0.5, aim - search)
        high = min(duration - min(options.shortest_seconds, length) * 0.5, aim + search)
        cut = _best_pause(pauses, low, high, aim, min_pause)
        if cut is None:
            cut = _quietest(levels, low, high)
        cuts.append(round(cut, 3))
        busy_until[busy_until.index(min(busy_until))] += cut - last
        last = cut
    return cuts


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
    chunks = []
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        piece = samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        path = f"{root.rstrip('/')}/{index:04d}.wav"
        with fs.open(path, "wb") as handle:
            handle.write(wav_bytes(piece))
        chunks.append(
            Chunk(index, round(start, 3), round(end, 3), _url(fs, path), has_speech(piece))
        )
    return chunks


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


# Prefect task: decode, choose cut points, write chunk files; passes paths on, not audio.
from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from tasks.media import MediaError, MediaInfo, decode  # noqa: E402


@task(name="split-on-silence", cache_policy=NO_CACHE, persist_result=False)
def split_audio(info: MediaInfo, folder: str, options: SplitOptions) -> list[Chunk] | State:
    """Decode the file and write its chunks (16 kHz mono WAV) under ``folder``."""
    try:
        samples = decode(info)
    except MediaError as err:
        return Failed(message=str(err))
    return write_chunks(samples, cut_points(samples, options), folder)
