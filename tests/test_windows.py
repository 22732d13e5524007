"""Pause-cut decoding windows (tasks/windows.py) on real espeak-ng speech and the real model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.asr import AsrOptions, recognise
from tasks.split import frame_levels, write_chunks
from tasks.wer import word_error_rate
from tasks.windows import pause_windows, sentence_cues
from tests.audio import LONG_TEXT, meeting_twice

RATE = 16000


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> np.ndarray:
    """About 100 s of the meeting text spoken twice (int16 samples)."""
    return meeting_twice(tmp_path_factory.mktemp("speech"))


def test_windows_cover_the_chunk_end_to_end_in_pauses_under_30_s(long_speech):
    clips = pause_windows(long_speech.astype(np.float32) / 32768.0)
    starts, ends = clips[0::2], clips[1::2]
    assert starts[0] == 0.0 and ends[-1] == round(len(long_speech) / RATE, 3)
    assert starts[1:] == ends[:-1]  # contiguous: nothing skipped, nothing decoded twice
    assert all(0 < end - start <= 27.5 for start, end in zip(starts, ends, strict=True))
    levels = frame_levels(long_speech)
    loud = float(np.percentile(levels, 95))
    for cut in ends[:-1]:  # each seam in a quiet frame, well below the speech
        assert levels[int(cut / 0.02)] < loud - 20, cut


def test_a_chunk_within_whispers_30_s_is_one_window():
    assert pause_windows(np.zeros(RATE * 25, dtype=np.float32)) == [0.0, 25.0]


def test_a_windows_sentences_share_its_speech_by_characters():
    text = "Short one. A sentence three times as long!  Third?"
    speech = np.arange(12.0, 18.0, 0.02)  # speech from 12 to 18 s of a 10-to-20-s window
    cues = sentence_cues(10.0, 20.0, text, loud=speech)
    assert [cue[2] for cue in cues] == ["Short one.", "A sentence three times as long!", "Third?"]
    assert cues[0][0] == 12.0 and cues[-1][1] == pytest.approx(18.0)  # on speech, not silence
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(cues))
    assert cues[1][1] - cues[1][0] > 2.5 * (cues[0][1] - cues[0][0])
    unmeasured = sentence_cues(10.0, 20.0, text)  # no loud frames given: the whole window
    assert unmeasured[0][0] == 10.0 and unmeasured[-1][1] == pytest.approx(20.0)


def test_sentences_end_at_cjk_marks_too_and_text_without_marks_is_one_cue():
    # Three sentences ending in the CJK full stop, exclamation and question marks.
    marks = ["\u4f60\u597d\u3002", "\u6211\u5f88\u597d\uff01", "\u662f\u5417\uff1f"]
    assert [c[2] for c in sentence_cues(0.0, 3.0, "".join(marks))] == marks
    assert sentence_cues(0.0, 3.0, "no mark at all") == [(0.0, 3.0, "no mark at all")]


def test_a_long_chunk_decodes_in_windows_into_timed_sentences(long_speech, tmp_path):
    (chunk,) = write_chunks(long_speech, [], str(tmp_path))
    options = AsrOptions()
    floats = long_speech.astype(np.float32) / 32768.0
    assert options.windowed and len(pause_windows(floats)) >= 8
    result = recognise(chunk, options)
    text = " ".join(segment.text for segment in result.segments)
    assert word_error_rate(LONG_TEXT + " " + LONG_TEXT, text) <= 0.15, text
    assert len(result.segments) >= 12  # sentences, not one piece per window
    times = [(s.start, s.end) for s in result.segments]
    assert times == sorted(times) and all(0 <= a < b <= chunk.duration for a, b in times)


def test_vad_or_word_timestamps_decode_as_whisper_windows_them():
    for options in (AsrOptions(vad_filter=True), AsrOptions(word_timestamps=True)):
        assert not options.windowed
    assert not AsrOptions(pause_windows=False).windowed
