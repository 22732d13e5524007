"""Long English speech clips for benchmarks: varied sentences spoken by espeak-ng, cached."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

from bench.corpus import sentences, varied_script
from relay_settings import DEFAULT_STATE_DIR

CACHE = DEFAULT_STATE_DIR / "bench"

SUBJECTS = [
    "The project team",
    "Our support desk",
    "The new manager",
    "Every customer",
    "The sales group",
    "The design studio",
    "A small business",
    "The city council",
    "The night shift",
    "The research lab",
    "Our largest client",
    "The finance office",
    "The training course",
]
VERBS = [
    "finished the report",
    "asked for a simpler plan",
    "reviewed the budget",
    "moved the meeting to Monday",
    "tested the mobile application",
    "improved the search page",
    "wrote to the board",
    "found a problem with the invoices",
    "opened a new office",
    "changed the delivery schedule",
    "answered every question",
    "shared the weekly numbers",
]
ENDINGS = [
    "before the end of the month",
    "after a long discussion",
    "with help from the engineers",
    "because the customers asked for it",
    "during the spring",
    "without any delay",
    "as soon as the data arrived",
    "for the second time this year",
    "in the morning",
    "while the office was closed",
    "on behalf of the whole company",
    "to save some money",
]


def script(minutes: float, seed: int = 11) -> str:
    """About ``minutes`` of speech (espeak-ng says about 172 words a minute), varied sentences."""
    return sentences(minutes, seed, SUBJECTS, VERBS, ENDINGS)


# This module's script (its clips keep their first names), and bench.corpus's, from more phrases.
SCRIPTS = {"phrases": script, "varied": varied_script}
CORPORA = tuple(SCRIPTS)


def clip(minutes: int, corpus: str = "phrases") -> tuple[Path, str]:
    """A cached mp3 of ``minutes`` of speech and its reference text, from ``corpus``."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: one of {', '.join(CORPORA)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"speech-{minutes}min" if corpus == "phrases" else f"speech-{corpus}-{minutes}min"
    audio, reference = CACHE / f"{stem}.mp3", CACHE / f"{stem}.txt"
    if not audio.exists():
        text = SCRIPTS[corpus](minutes)
        wav = CACHE / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), text], check=True)
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-y",
                "-v",
                "error",
                "-i",
                str(wav),
                "-ac",
                "1",
                "-ar",
                "16000",
                "-b:a",
                "48k",
                str(audio),
            ],
            check=True,
        )
        wav.unlink()
        reference.write_text(text)
    return audio, reference.read_text()
