"""Every container a user has goes in; every bad input gets one message naming the problem."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tasks.media import AudioTooLongError, MediaError, decode, decode_blocks, probe
from tests.audio import (
    DATA,
    FFMPEG,
    encode,
    save,
    silence,
    speech_samples,
    video_without_sound,
    with_video,
)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    samples = speech_samples("Testing every container format that people upload.", folder)
    return save(samples, folder / "speech.wav"), len(samples) / 16000


AUDIO_FORMATS = {
    "wav": (),
    "mp3": ("-c:a", "libmp3lame"),
    "m4a": ("-c:a", "aac"),
    "aac": ("-c:a", "aac"),
    "ogg": ("-c:a", "libvorbis"),
    "opus": ("-c:a", "libopus"),
    "flac": ("-c:a", "flac"),
}


@pytest.mark.parametrize("suffix", AUDIO_FORMATS)
def test_audio_formats_probe_and_decode(speech_wav, tmp_path, suffix):
    source, seconds = speech_wav
    path = encode(source, tmp_path / f"speech.{suffix}", *AUDIO_FORMATS[suffix])
    info = probe(path)
    assert info.duration == pytest.approx(seconds, abs=0.15)
    samples = decode(info)
    assert len(samples) / 16000 == pytest.approx(seconds, abs=0.15)
    assert np.abs(samples).max() > 1000  # real sound came through


@pytest.mark.parametrize(
    ("suffix", "video", "audio"),
    [("mp4", "libx264", "aac"), ("mkv", "libx264", "libopus"), ("webm", "libvpx", "libopus")],
)
def test_video_containers_use_their_audio_track(speech_wav, tmp_path, suffix, video, audio):
    source, seconds = speech_wav
    info = probe(with_video(source, tmp_path / f"clip.{suffix}", video, audio))
    assert info.has_video
    assert len(decode(info)) / 16000 == pytest.approx(seconds, abs=0.3)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "nope.wav")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").touch()
    with pytest.raises(MediaError, match=r"empty.wav: file is empty \(0 bytes\)"):
        probe(tmp_path / "empty.wav")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not audio\n" * 50)
    with pytest.raises(MediaError, match=r"notes\.wav: not a readable audio or video file"):
        probe(path)


def test_video_without_audio(tmp_path):
    path = video_without_sound(tmp_path / "silent-film.mp4", seconds=2)
    with pytest.raises(MediaError, match=r"silent-film\.mp4: the file has no audio stream"):
        probe(path)


def test_truncated_mp3(tmp_path):
    whole = (DATA / "weather.mp3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError, match=r"cut\.mp3: file is truncated or corrupt"):
        decode(probe(path))


def test_corrupt_mp3(tmp_path):
    data = bytearray((DATA / "weather.mp3").read_bytes())
    for position in range(4000, len(data) - 500, 41):
        data[position] = 0x55
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"damaged\.mp3: .*(truncated or corrupt|decoded)"):
        decode(probe(path))


def test_over_long_audio_is_refused_before_any_work(tmp_path):
    path = tmp_path / "long.opus"
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=16000:cl=mono",
            "-t",
            "1860",
            "-c:a",
            "libopus",
            "-b:a",
            "6k",
            str(path),
        ],
        check=True,
    )
    with pytest.raises(AudioTooLongError) as caught:
        probe(path, max_seconds=1800)
    assert caught.value.duration == pytest.approx(1860, abs=1)
    assert caught.value.limit == 1800
    assert "31:00" in str(caught.value) and "30:00" in str(caught.value)


def test_a_file_just_over_the_limit_says_by_how_much():
    error = AudioTooLongError("talk.mp3", 1800.6, 1800)
    assert str(error) == (
        "talk.mp3: audio is 30:00.6 long (1800.6 s), over the limit of 30:00 (1800 s)"
    )
    assert "30:00.1 long" in str(AudioTooLongError("talk.mp3", 1800.04, 1800))
    assert "1:30:00 long" in str(AudioTooLongError("talk.mp3", 5400.0, 1800))


def test_decoding_in_blocks_gives_the_same_audio_and_the_same_refusals(tmp_path):
    info = probe(DATA / "weather.mp3")
    blocks = list(decode_blocks(info, block_seconds=1.0))
    assert len(blocks) > 2 and all(len(b) == 16000 for b in blocks[:-1])
    assert np.array_equal(np.concatenate(blocks), decode(info))
    whole = (DATA / "weather.mp3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(whole[: len(whole) // 2])
    stream = decode_blocks(probe(path), block_seconds=1.0)
    first = next(stream)  # the start of a truncated file decodes; its end proves it truncated
    assert len(first) == 16000
    with pytest.raises(MediaError, match=r"cut\.mp3: file is truncated or corrupt"):
        list(stream)


def test_estimated_lengths_are_not_held_against_a_file(tmp_path):
    """Raw ADTS AAC and an MP3 without a Xing frame state no length: ffmpeg guesses it from
    the first frames' bitrate, here silence, far over the real one. The flow's decode may
    not call such a file truncated."""
    speech = speech_samples("The budget was approved on Monday.", tmp_path)
    quiet_start = np.concatenate([silence(20), speech])
    wav = save(quiet_start, tmp_path / "quiet-start.wav")
    for name, options in [
        ("raw.aac", ("-c:a", "aac")),
        ("vbr.mp3", ("-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0")),
    ]:
        path = encode(wav, tmp_path / name, *options)
        info = probe(path)
        assert not info.exact_duration
        assert info.duration > 1.3 * len(quiet_start) / 16000, "the estimate is far off"
        assert len(decode(info)) / 16000 == pytest.approx(len(quiet_start) / 16000, abs=0.2)
