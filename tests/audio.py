"""Real speech and media for tests: espeak-ng speaks, the bundled ffmpeg encodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from tasks.media import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def speak(text: str, path: Path, speed: int = 160) -> Path:
    """Speak ``text`` into a WAV file with espeak-ng."""
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True)
    return path


def speech_samples(text: str, workdir: Path, speed: int = 160) -> np.ndarray:
    """``text`` spoken as 16 kHz mono int16 samples."""
    wav = speak(text, workdir / "speech.wav", speed)
    raw = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(wav),
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "-f",
            "s16le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def save(samples: np.ndarray, path: Path, *extra: str) -> Path:
    """Encode 16 kHz mono samples to ``path`` (format from its suffix)."""
    subprocess.run(
        [
            FFMPEG,
            "-y",
            "-v",
            "error",
            "-f",
            "s16le",
            "-ar",
            str(SAMPLE_RATE),
            "-ac",
            "1",
            "-i",
            "-",
            *extra,
            str(path),
        ],
        input=samples.astype(np.int16).tobytes(),
        check=True,
    )
    return path


def encode(source: Path, path: Path, *extra: str) -> Path:
    """Re-encode ``source`` into ``path`` with ffmpeg options ``extra``."""
    subprocess.run([FFMPEG, "-y", "-v", "error", "-i", str(source), *extra, str(path)], check=True)
    return path


def with_video(audio: Path, path: Path, video_codec: str, audio_codec: str) -> Path:
    """A video file: a coloured frame plus ``audio`` as its soundtrack."""
    subprocess.run(
        [
            FFMPEG,
            "-y",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=navy:s=64x64:r=5",
            "-i",
            str(audio),
            "-shortest",
            "-c:v",
            video_codec,
            "-c:a",
            audio_codec,
            str(path),
        ],
        check=True,
    )
    return path


LONG_TEXT = (
    "Good morning everyone, and thank you for joining the quarterly review. "
    "We will start with the sales figures, then move on to the product plans for next year. "
    "Sales grew steadily in every region, and the strongest growth came from small businesses. "
    "The support team answered more questions than ever before, and customers were happier "
    "with the speed of the answers. "
    "Next year we want to build a simpler mobile application and improve the search results. "
    "We also plan to hire more engineers in the spring, so that the team can work on new "
    "features without delaying the fixes that customers ask for. "
    "Before we finish, please remember that the office will be closed during the holidays. "
    "If you have questions about the plans, write to your manager or ask during the open "
    "meeting on Thursday afternoon. "
)


def meeting_twice(workdir: Path) -> np.ndarray:
    """``LONG_TEXT`` spoken twice: about 100 s of int16 speech, several of Whisper's windows."""
    spoken = speech_samples(LONG_TEXT, workdir)
    return np.concatenate([spoken, spoken])


def video_without_sound(path: Path, seconds: float = 1.0) -> Path:
    """A short H.264 video with no audio stream at all."""
    colour = f"color=c=red:s=32x32:d={seconds:g}"
    command = [FFMPEG, "-v", "error", "-f", "lavfi", "-i", colour, "-c:v", "libx264", str(path)]
    subprocess.run(command, check=True)
    return path


def speech_mp3(path: Path, seconds: float, workdir: Path) -> Path:
    """A real MP3 (64 kbit/s, with the Xing frame that states its length) of ``seconds`` of
    espeak-ng speech, the meeting text over and over."""
    spoken = speech_samples(LONG_TEXT, workdir)
    repeats = int(np.ceil(seconds * SAMPLE_RATE / len(spoken)))
    samples = np.tile(spoken, repeats)[: int(seconds * SAMPLE_RATE)]
    return save(samples, path, "-c:a", "libmp3lame", "-b:a", "64k")
