"""Every container a user has goes in; every bad input gets one message naming the problem."""

from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest

from tasks.media import AudioTooLongError, MediaError, MediaProblem, decode, decode_blocks, probe
from tasks.media_check import check
from tests.audio import (
    DATA,
    FFMPEG,
    encode,
    save,
    silence,
    speech_mp3,
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


# The intake check (tasks/media_check.py): the whole audio track decoded before a job exists.


@pytest.fixture(scope="module")
def three_minutes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("intake")
    return speech_mp3(folder / "meeting.mp3", 180, folder)


def test_check_accepts_whole_media_with_its_decoded_length(three_minutes, speech_wav, tmp_path):
    assert check(three_minutes).duration == pytest.approx(180, abs=0.1)
    source, seconds = speech_wav
    clip = check(with_video(source, tmp_path / "clip.mp4", "libx264", "aac"))
    assert clip.has_video and clip.duration == pytest.approx(seconds, abs=0.3)


def test_check_finds_where_a_cut_mp3_stops(three_minutes, tmp_path):
    whole = three_minutes.read_bytes()
    path = tmp_path / "meeting.mp3"
    path.write_bytes(whole[: len(whole) // 4])  # its Xing frame still says 3:00
    assert probe(path).duration == pytest.approx(180, abs=0.1)  # the header alone looks fine
    with pytest.raises(MediaError) as caught:
        check(path)
    assert caught.value.code is MediaProblem.TRUNCATED
    assert str(caught.value) == (
        "meeting.mp3: the audio stops decoding at 0:44 of a declared 3:00 "
        "— the file is truncated or corrupt"
    )


def test_check_tells_damage_in_the_middle_from_a_cut(three_minutes, tmp_path):
    data = bytearray(three_minutes.read_bytes())
    start, end = len(data) // 3, len(data) // 2
    data[start:end] = random.Random(7).randbytes(end - start)
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError) as caught:
        check(path)
    assert caught.value.code is MediaProblem.UNDECODABLE
    assert str(caught.value).startswith("damaged.mp3: the audio decodes to 2:")
    assert "of a declared 3:00;" in str(caught.value)
    assert "packets from 0:59 on are damaged" in str(caught.value)
    assert str(caught.value).endswith("— the file is corrupt")


def test_check_calls_an_mp4_cut_before_its_index_damaged_not_foreign(speech_wav, tmp_path):
    source, _ = speech_wav
    whole = encode(source, tmp_path / "memo.m4a", "-c:a", "aac").read_bytes()  # index at the end
    path = tmp_path / "memo-cut.m4a"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MediaError) as caught:
        check(path)
    assert caught.value.code is MediaProblem.UNDECODABLE
    assert "memo-cut.m4a: starts as an MP4/MOV file but cannot be opened" in str(caught.value)
    text = tmp_path / "notes.mp3"
    text.write_text("meeting notes, not sound\n" * 40)
    with pytest.raises(MediaError) as caught:
        check(text)
    assert caught.value.code is MediaProblem.NOT_MEDIA


def test_check_accepts_junk_after_all_the_sound_a_file_states(three_minutes, tmp_path):
    path = tmp_path / "tail.mp3"  # under a sixteenth more: ffmpeg keeps the Xing frame's count
    path.write_bytes(three_minutes.read_bytes() + random.Random(3).randbytes(50_000))
    assert probe(path).exact_duration
    assert check(path).duration == pytest.approx(180, abs=0.1)


def test_estimated_lengths_are_not_held_against_a_file(tmp_path):
    """Raw ADTS AAC and an MP3 without a Xing frame state no length: ffmpeg guesses it from
    the first frames' bitrate, here silence, far over the real one. Neither intake nor the
    flow's decode may call such a file truncated."""
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
        assert check(path).duration == pytest.approx(len(quiet_start) / 16000, abs=0.2)
        assert len(decode(info)) / 16000 == pytest.approx(len(quiet_start) / 16000, abs=0.2)


def test_check_stops_decoding_past_the_limit(tmp_path):
    """A file may state less than it holds (here an MP3 whose Xing frame counts the first of
    two joined files): the limit applies to what decodes, and decoding stops once past it."""
    first = save(silence(60), tmp_path / "a.mp3", "-c:a", "libmp3lame")
    second = save(silence(3), tmp_path / "b.mp3", "-c:a", "libmp3lame")
    path = tmp_path / "joined.mp3"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    assert probe(path, max_seconds=61).duration == pytest.approx(60, abs=0.1)
    assert check(path).duration == pytest.approx(63, abs=0.2)
    assert check(path, max_seconds=62.5).duration == pytest.approx(63, abs=0.2)  # within 1 s
    with pytest.raises(AudioTooLongError) as caught:
        check(path, max_seconds=61)
    assert 62 < caught.value.duration < 62.5  # decoding stopped a second past the limit
    assert str(caught.value).startswith("joined.mp3: audio is at least 1:02")
