"""Tiny real videos for the batch tests and benchmark: a colour frame plus espeak-ng speech."""

from __future__ import annotations

import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.audio import FFMPEG, speak

_SENTENCE = (
    "the river runs past the old mill where children play in summer and the farmers "
    "bring their grain to market every morning while the baker sells warm bread to "
    "travellers who stop at the station before the long journey north across hills "
    "covered in snow under a pale winter sky"
)
WORDS = _SENTENCE.split()
COLOURS = ("blue", "green", "red", "orange", "purple", "gray", "teal", "navy")
WORDS_PER_SECOND = 2.6  # espeak-ng at 160 words per minute, pauses included


@dataclass(frozen=True)
class MadeVideo:
    """A generated video and what it should produce."""

    path: Path
    text: str  # spoken words ('' for corrupt ones)
    corrupt: str | None = None  # why it must fail, for corrupt ones


def make_video(path: Path, seconds: float, rng: random.Random, *extra: str) -> MadeVideo:
    """An mp4 of about ``seconds`` with a still colour frame and spoken words."""
    count = max(3, round(seconds * WORDS_PER_SECOND))
    start = rng.randrange(len(WORDS))
    text = " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))
    wav = speak(text, path.with_suffix(".wav"))
    colour = rng.choice(COLOURS)
    subprocess.run(
        [
            FFMPEG, "-y", "-v", "error",
            "-f", "lavfi", "-i", f"color=c={colour}:s=64x64:r=2",
            "-i", str(wav), "-shortest",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "32k",
            *extra, str(path),
        ],
        check=True,
    )  # fmt: skip
    wav.unlink()
    return MadeVideo(path, text)


def make_corrupt(path: Path, kind: str, rng: random.Random) -> MadeVideo:
    """A video that can never be processed: truncated, not media, or without sound."""
    if kind == "truncated":
        # The index up front (faststart), so the cut file still opens and declares 6 s.
        whole = make_video(path, 6.0, rng, "-movflags", "+faststart")
        data = whole.path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        reason = "truncated"
    elif kind == "garbage":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
        reason = "not a readable"
    else:
        subprocess.run(
            [
                FFMPEG, "-y", "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:r=2",
                "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", str(path),
            ],
            check=True,
        )  # fmt: skip
        reason = "no audio stream"
    return MadeVideo(path, "", reason)


def make_catalogue(
    folder: Path,
    count: int,
    corrupt: int = 0,
    seconds: tuple[float, float] = (2.0, 10.0),
    seed: int = 7,
    long_ones: int = 0,
    long_seconds: float = 60.0,
) -> list[MadeVideo]:
    """``count`` videos under ``folder`` (2-10 s of speech each), ``corrupt`` of them broken
    in turn (truncated, not media, no audio), ``long_ones`` of them ``long_seconds`` long."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("truncated", "garbage", "no_audio")
    step = max(1, count // corrupt) if corrupt else 0
    broken = {1 + n * step: kinds[n % 3] for n in range(corrupt)} if corrupt else {}
    plans = []
    for index in range(count):
        rng = random.Random(seed * 100_003 + index)
        length = long_seconds if index < long_ones else rng.uniform(*seconds)
        plans.append((folder / f"video-{index:04d}.mp4", broken.get(index), rng, length))

    def build(plan) -> MadeVideo:
        path, kind, rng, length = plan
        return make_corrupt(path, kind, rng) if kind else make_video(path, length, rng)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(build, plans))
