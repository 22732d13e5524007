"""Reading user media: probe it (PyAV) and decode its audio to 16 kHz mono (ffmpeg)."""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

SAMPLE_RATE = 16_000
# A decode shorter than this share of the declared duration means the file is cut short.
MIN_DECODED_SHARE = 0.9


class MediaError(ValueError):
    """The input cannot be transcribed; the message names the problem for a person.

    ``code`` says which problem for programs: missing, empty, not_media, no_audio,
    unknown_duration, too_long, undecodable or truncated.
    """

    def __init__(self, message: str, code: str = "not_media") -> None:
        super().__init__(message)
        self.code = code


class AudioTooLongError(MediaError):
    """The audio is longer than Relay accepts."""

    def __init__(self, name: str, duration: float, limit: float) -> None:
        self.duration = duration
        self.limit = limit
        super().__init__(
            f"{name}: audio is {_clock(duration)} long ({duration:.1f} s), "
            f"over the limit of {_clock(limit)} ({limit:.0f} s)",
            code="too_long",
        )


@dataclass(frozen=True)
class MediaInfo:
    """What probing a file told us."""

    path: str
    duration: float
    container: str
    audio_codec: str
    sample_rate: int
    channels: int
    has_video: bool
    # True when the audio stream states its own length; else it is the container's (an upper
    # bound: a video track may run longer than the sound).
    exact_duration: bool = True


def _clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``, with tenths when the length is not whole, rounded up: a file
    0.6 s over a 30:00 limit reads 30:00.6, never 30:01 or 30:00."""
    tenths = math.ceil(round(seconds * 10, 6))
    whole, tenth = divmod(tenths, 10)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{clock}.{tenth}" if tenth else clock


def probe(path: str | Path, max_seconds: float | None = None) -> MediaInfo:
    """Check that ``path`` is readable media with an audio stream of known, allowed length.

    Raises MediaError (or AudioTooLongError) with a message naming the problem.
    """
    file = Path(path)
    name = file.name
    if not file.exists():
        raise MediaError(f"{path}: no such file", "missing")
    if not file.is_file():
        raise MediaError(f"{path}: not a regular file", "missing")
    if file.stat().st_size == 0:
        raise MediaError(f"{name}: file is empty (0 bytes)", "empty")
    try:
        container = av.open(str(file))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise MediaError(f"{name}: not a readable audio or video file ({_reason(err)})") from err
    with container:
        audio = container.streams.audio
        if not audio:
            raise MediaError(f"{name}: the file has no audio stream", "no_audio")
        stream = audio[0]
        duration, exact = _duration(container, stream)
        if duration is None or duration <= 0:
            raise MediaError(f"{name}: the audio duration cannot be determined", "unknown_duration")
        info = MediaInfo(
            path=str(file),
            duration=duration,
            container=container.format.name,
            audio_codec=stream.codec_context.name,
            sample_rate=stream.codec_context.sample_rate or 0,
            channels=stream.codec_context.channels or 0,
            has_video=bool(container.streams.video),
            exact_duration=exact,
        )
    if max_seconds is not None and info.duration > max_seconds:
        raise AudioTooLongError(name, info.duration, max_seconds)
    return info


def _duration(
    container: av.container.InputContainer, stream: av.audio.AudioStream
) -> tuple[float | None, bool]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base), True
    if container.duration is not None:
        return container.duration / av.time_base, False
    return None, False


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.split(":")[-1].strip() or type(err).__name__


def decode(info: MediaInfo) -> np.ndarray:
    """Decode the first audio track to 16 kHz mono int16 with the bundled ffmpeg binary.

    Raises MediaError when ffmpeg fails, yields no audio, or yields clearly less audio than
    the audio stream declares (a truncated or corrupt file).
    """
    return np.concatenate(list(decode_blocks(info)))


def decode_blocks(info: MediaInfo, block_seconds: float = 10.0) -> Iterator[np.ndarray]:
    """``decode`` as ffmpeg goes: blocks of ``block_seconds`` of 16 kHz mono int16 (the last
    one shorter), so that work on the start of a file begins before its end is decoded.

    The checks of ``decode`` run when the stream ends: a truncated file raises MediaError
    after the blocks it did decode. Closing the generator early stops ffmpeg.
    """
    name = Path(info.path).name
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-hide_banner",
        "-v",
        "error",
        "-i",
        info.path,
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "s16le",
        "-",
    ]
    block_bytes = 2 * int(block_seconds * SAMPLE_RATE)
    decoded = 0
    # stderr to a file, not a pipe: a corrupt file can make ffmpeg write more errors than a
    # pipe holds while nobody reads them, and it would wait forever.
    with (
        tempfile.TemporaryFile() as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr) as process,
    ):
        try:
            assert process.stdout is not None
            while block := process.stdout.read(block_bytes):
                samples = np.frombuffer(block[: len(block) // 2 * 2], dtype=np.int16)
                decoded += len(samples)
                yield samples
            returncode = process.wait()
        finally:
            if process.poll() is None:  # the consumer stopped early
                process.kill()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip()
    if returncode != 0:
        raise MediaError(
            f"{name}: audio could not be decoded ({_first_line(errors)})", "undecodable"
        )
    seconds = decoded / SAMPLE_RATE
    if seconds == 0:
        raise MediaError(f"{name}: the audio track holds no decodable sound", "undecodable")
    if info.exact_duration and seconds < info.duration * MIN_DECODED_SHARE:
        detail = f"; ffmpeg: {_first_line(errors)}" if errors else ""
        raise MediaError(
            f"{name}: file is truncated or corrupt: decoded {seconds:.1f} s of the "
            f"{info.duration:.1f} s it declares{detail}",
            "truncated",
        )


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "no detail"


# Prefect task: a bad file ends as a Failed state with the reason, not a traceback.
from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402


@task(name="probe-media", cache_policy=NO_CACHE, persist_result=False)
def probe_media(source: str, max_seconds: float) -> MediaInfo | State:
    """Probe and validate the input before any work is done."""
    try:
        return probe(source, max_seconds)
    except MediaError as err:
        return Failed(message=str(err))
