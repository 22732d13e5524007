"""Reading user media: probe it (PyAV) and decode its audio to 16 kHz mono (ffmpeg)."""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

SAMPLE_RATE = 16_000
# A decode shorter than this share of the declared duration means the file is cut short.
MIN_DECODED_SHARE = 0.9
# Containers whose headers state the audio's length (sample counts, an index, the last page's
# granule). Raw streams (ADTS AAC, AC-3, AMR, MP3 without a Xing, Info or VBRI frame) state
# none: ffmpeg estimates it from the first frames' bitrate, which can be off by far either way.
_STATED_LENGTH_FORMATS = frozenset(
    {"wav", "w64", "flac", "ogg", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "asf", "aiff"}
)


class MediaProblem(StrEnum):
    """What is wrong with an input, for programs (the API maps each to an HTTP status)."""

    MISSING = "missing"
    EMPTY = "empty"
    NOT_MEDIA = "not_media"
    NO_AUDIO = "no_audio"
    UNKNOWN_DURATION = "unknown_duration"
    TOO_LONG = "too_long"
    TRUNCATED = "truncated"
    UNDECODABLE = "undecodable"


class MediaError(ValueError):
    """The input cannot be transcribed; the message names the problem for a person, ``code``
    (a MediaProblem) for programs."""

    def __init__(self, message: str, code: MediaProblem = MediaProblem.NOT_MEDIA) -> None:
        super().__init__(message)
        self.code = code


class AudioTooLongError(MediaError):
    """The audio is longer than Relay accepts."""

    def __init__(self, name: str, duration: float, limit: float, *, at_least: bool = False) -> None:
        """``at_least``: ``duration`` is where decoding stopped, past the limit, not the end."""
        self.duration = duration
        self.limit = limit
        length = f"at least {clock(duration)}" if at_least else clock(duration)
        super().__init__(
            f"{name}: audio is {length} long ({duration:.1f} s), "
            f"over the limit of {clock(limit)} ({limit:.0f} s)",
            code=MediaProblem.TOO_LONG,
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
    # True when the file states the audio's own length; else it is the container's (an upper
    # bound: a video track may run longer than the sound) or ffmpeg's estimate from the bitrate.
    exact_duration: bool = True


def clock(seconds: float) -> str:
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
        raise MediaError(f"{path}: no such file", MediaProblem.MISSING)
    if not file.is_file():
        raise MediaError(f"{path}: not a regular file", MediaProblem.MISSING)
    if file.stat().st_size == 0:
        raise MediaError(f"{name}: file is empty (0 bytes)", MediaProblem.EMPTY)
    try:
        container = av.open(str(file))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise MediaError(
            f"{name}: not a readable audio or video file ({error_reason(err)})"
        ) from err
    with container:
        audio = container.streams.audio
        if not audio:
            raise MediaError(f"{name}: the file has no audio stream", MediaProblem.NO_AUDIO)
        stream = audio[0]
        duration, exact = _duration(container, stream)
        if duration is None or duration <= 0:
            raise MediaError(
                f"{name}: the audio duration cannot be determined", MediaProblem.UNKNOWN_DURATION
            )
        if container.format.name == "mp3":
            exact = exact and _mp3_states_length(file)
        elif container.format.name not in _STATED_LENGTH_FORMATS:
            exact = False
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
    if container.duration is not None:  # with no video track, the sound is all it measures
        return container.duration / av.time_base, not container.streams.video
    return None, False


def _mp3_states_length(file: Path) -> bool:
    """Whether ffmpeg takes an MP3's length from its first frame, a Xing, Info or VBRI frame
    that counts the frames. Like ffmpeg, trust no count when the file is over a sixteenth
    larger than the bytes that frame states: something was joined on after it."""
    with file.open("rb") as handle:
        head = handle.read(10)
        if head[:3] == b"ID3" and len(head) == 10:  # skip the tag; its size is syncsafe
            size = head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]
            handle.seek(10 + size + (10 if head[5] & 0x10 else 0))
        else:
            handle.seek(0)
        start = handle.read(4096)
    sync = next(
        (i for i in range(len(start) - 1) if start[i] == 0xFF and start[i + 1] & 0xE0 == 0xE0),
        None,
    )
    if sync is None:
        return False
    frame = start[sync : sync + 200]
    if (at := frame.find(b"VBRI")) >= 0:
        frames, stated = _u32(frame, at + 14), _u32(frame, at + 10)
    elif (at := max(frame.find(b"Xing"), frame.find(b"Info"))) >= 0:
        flags = _u32(frame, at + 4)
        frames = _u32(frame, at + 8) if flags & 1 else 0
        stated = _u32(frame, at + 8 + 4 * (flags & 1)) if flags & 2 else 0
    else:
        return False
    size = file.stat().st_size
    return frames > 0 and not (stated and size - stated > stated >> 4)


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def error_reason(err: BaseException) -> str:
    """ffmpeg's reason for an error, without the call or file name PyAV puts before it."""
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
            f"{name}: audio could not be decoded ({_first_line(errors)})", MediaProblem.UNDECODABLE
        )
    seconds = decoded / SAMPLE_RATE
    if seconds == 0:
        raise MediaError(
            f"{name}: the audio track holds no decodable sound", MediaProblem.UNDECODABLE
        )
    if info.exact_duration and seconds < info.duration * MIN_DECODED_SHARE:
        detail = f"; ffmpeg: {_first_line(errors)}" if errors else ""
        raise MediaError(
            f"{name}: file is truncated or corrupt: decoded {seconds:.1f} s of the "
            f"{info.duration:.1f} s it declares{detail}",
            MediaProblem.TRUNCATED,
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
