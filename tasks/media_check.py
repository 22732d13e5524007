"""The intake check: decode a file's whole audio track before Relay accepts it.

Probing reads a container's header only: a file can declare five minutes and hold forty
seconds of sound, then garbage. ``check`` decodes every packet of the first audio track and
refuses, with a MediaError naming the problem, what a job would only find out later: audio
cut short (``truncated``), damaged or unreadable (``undecodable``), or longer than the limit
once decoded (``too_long``); ``probe`` has already refused ``empty``, ``not_media`` and
``no_audio`` files.

It decodes with PyAV in this process, not with the ffmpeg command line: the same decoders, a
quarter to a third of the CPU (ffmpeg's threads hand every frame on from demuxer to decoder
to filter to encoder to muxer, and that handing costs more than an MP3 decode; ``make
bench-intake``), and PyAV lets go of the GIL while it reads and decodes, so a server's other
threads run meanwhile.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import av

from tasks.media import (
    AudioTooLongError,
    MediaError,
    MediaInfo,
    MediaProblem,
    clock,
    error_reason,
    probe,
)

# Audio may decode this much shorter (or, against the limit, longer) than the file states:
# encoders' priming and padding, and fragmented MP4s, differ from the stated length by a
# fraction of a second; a lost stretch of sound is longer.
SHORTFALL_SECONDS = 1.0
SHORTFALL_SHARE = 0.01
# Packets that may fail to decode in a file still accepted: a glitch or two in a long
# recording costs a few hundredths of a second; damaged data fails packet after packet.
MAX_DAMAGED_PACKETS = 10

# The first bytes of containers that ffmpeg opens when they are whole: a file that starts like
# one of these but does not open is damaged media (an MP4 cut before its index), not "not media".
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "an MP4/MOV file"),
    (4, b"moov", "an MP4/MOV file"),
    (4, b"mdat", "an MP4/MOV file"),
    (8, b"WAVE", "a WAV file"),
    (8, b"AVI ", "an AVI file"),
    (0, b"OggS", "an Ogg file"),
    (0, b"fLaC", "a FLAC file"),
    (0, b"ID3", "an MP3 file"),
    (0, b"\x1a\x45\xdf\xa3", "a Matroska/WebM file"),
    (8, b"AIFF", "an AIFF file"),
    (8, b"AIFC", "an AIFF file"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "a WMA/WMV file"),
)


@dataclass(frozen=True)
class DecodedAudio:
    """What decoding a file's first audio track found."""

    seconds: float  # sound decoded
    complete: bool  # read to the end of the file (False: stopped once past the limit)
    damaged_packets: int = 0
    first_damage: float | None = None  # where (seconds of sound decoded) a packet first failed
    after_damage: float = 0.0  # seconds of sound decoded after that
    damage: str = ""  # the decoder's reason, for the first failed packet
    read_error: str = ""  # why reading stopped before the end of the file, if it did


def check(path: str | Path, max_seconds: float | None = None) -> MediaInfo:
    """Probe ``path``, then decode its whole audio track; refuse what cannot be transcribed.

    Returns the probe's MediaInfo with the decoded length as ``duration``. Raises MediaError
    (AudioTooLongError for ``too_long``) with a message for a person.
    """
    file = Path(path)
    try:
        info = probe(file, max_seconds)
    except MediaError as err:
        kind = container_signature(file) if err.code is MediaProblem.NOT_MEDIA else None
        if kind is None:
            raise
        why = error_reason(err.__cause__ or err)
        raise MediaError(
            f"{file.name}: starts as {kind} but cannot be opened ({why}) "
            "— the file is truncated or corrupt",
            MediaProblem.UNDECODABLE,
        ) from err
    limit = None if max_seconds is None else max_seconds + SHORTFALL_SECONDS
    audio = decode_track(file, stop_after=limit)
    judge(info, audio, max_seconds)
    return dataclasses.replace(info, duration=audio.seconds)


def decode_track(path: str | Path, stop_after: float | None = None) -> DecodedAudio:
    """Decode the first audio track to its end (or until past ``stop_after`` seconds),
    counting the sound and the packets that fail, and noting where reading broke off."""
    seconds = after = 0.0
    damaged = 0
    first: float | None = None
    damage = read_error = ""
    with av.open(str(path)) as container:
        packets = container.demux(container.streams.audio[0])
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as err:  # the container breaks off: nothing after it
                read_error = error_reason(err)
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as err:  # one damaged packet; decoding goes on after it
                damaged += 1
                if first is None:
                    first, damage = seconds, error_reason(err)
                continue
            for frame in frames:
                length = frame.samples / frame.sample_rate
                seconds += length
                if first is not None:
                    after += length
            if stop_after is not None and seconds > stop_after:
                return DecodedAudio(seconds, False, damaged, first, after, damage)
    return DecodedAudio(seconds, True, damaged, first, after, damage, read_error)


def judge(info: MediaInfo, audio: DecodedAudio, max_seconds: float | None = None) -> None:
    """Raise MediaError when ``audio``, decoded from the file ``info`` describes, falls short."""
    name = Path(info.path).name
    # The stated length met the limit (probe checked it); the decode may run a little over it.
    if max_seconds is not None and audio.seconds > max_seconds + SHORTFALL_SECONDS:
        raise AudioTooLongError(name, audio.seconds, max_seconds, at_least=not audio.complete)
    if audio.seconds == 0:
        why = audio.damage or audio.read_error or "the track holds no sound"
        raise MediaError(
            f"{name}: no sound in its audio track can be decoded ({why}) "
            "— the file is corrupt or not what its name says",
            MediaProblem.UNDECODABLE,
        )
    # Only a length the file states measures what is missing; ffmpeg's estimate does not.
    exact = info.exact_duration
    short = exact and info.duration - audio.seconds > max(
        SHORTFALL_SECONDS, SHORTFALL_SHARE * info.duration
    )
    stopped = audio.first_damage is not None and audio.after_damage == 0.0
    declared = f" of a declared {_at(info.duration)}" if exact else ""
    if short and (stopped or audio.damaged_packets == 0):
        raise MediaError(
            f"{name}: the audio stops decoding at {_at(audio.seconds)}{declared}"
            f"{_detail(audio)} — the file is truncated or corrupt",
            MediaProblem.TRUNCATED,
        )
    # Damage after all the sound the file states (junk at its end) loses nothing.
    if short or (audio.damaged_packets > MAX_DAMAGED_PACKETS and not (exact and stopped)):
        if stopped:  # the damage runs to the end of the file
            problem, where, verdict = MediaProblem.TRUNCATED, "after it", "truncated or corrupt"
        else:
            problem, where, verdict = (
                MediaProblem.UNDECODABLE,
                f"from {_at(audio.first_damage or 0.0)} on",
                "corrupt",
            )
        raise MediaError(
            f"{name}: the audio decodes to {_at(audio.seconds)}{declared}; "
            f"{audio.damaged_packets} packets {where} are damaged ({audio.damage}) "
            f"— the file is {verdict}",
            problem,
        )
    if audio.read_error and not exact:  # a stated length, all decoded, vouches for the file
        raise MediaError(
            f"{name}: the file cannot be read past {_at(audio.seconds)} of audio "
            f"({audio.read_error}) — it is truncated or corrupt",
            MediaProblem.TRUNCATED,
        )


def container_signature(path: Path) -> str | None:
    """The kind of media file ``path`` starts as, from its first bytes, if it looks like one."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    return next((kind for at, magic, kind in _SIGNATURES if head[at:].startswith(magic)), None)


def _at(seconds: float) -> str:
    """A position or length in whole seconds, as ``m:ss``: 42.8 s of sound is "0:42"."""
    return clock(math.floor(seconds))


def _detail(audio: DecodedAudio) -> str:
    reason = audio.damage or audio.read_error
    return f" ({reason})" if reason else ""
