"""Batched window decoding (tasks/window_decode.py) against faster-whisper's own sequential
decoding of the same windows, on real espeak-ng speech and the real model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tasks.asr import AsrOptions, decode_speech, load_model
from tasks.window_decode import _encoded, _window_text, decode_windows
from tasks.windows import pause_windows
from tests.audio import meeting_twice

RATE = 16000
OPTIONS = AsrOptions()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """About 100 s of speech as float samples: several pause-cut windows."""
    return meeting_twice(tmp_path_factory.mktemp("speech")).astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def model():
    return load_model(OPTIONS)


def test_batched_windows_read_as_faster_whisper_reads_them_one_by_one(speech, model):
    clips = pause_windows(speech)
    arguments = OPTIONS.decode_kwargs()
    one_by_one, _ = model.transcribe(
        speech, **arguments, clip_timestamps=clips, without_timestamps=True
    )
    expected = [(s.start, s.text.strip()) for s in one_by_one]
    for batch in (8, 3):  # where the batches break changes nothing
        windows, info = decode_windows(model, speech, clips, arguments, batch=batch)
        found = [(w.start, w.text) for w in windows]
        assert [text for _, text in found] == [text for _, text in expected]
    assert info.language == "en" and len(expected) == len(clips) // 2 >= 4
    # Each window keeps its own times: they are the windows, in order.
    assert [start for start, _ in expected] == pytest.approx(clips[::2], abs=0.01)
    assert [start for start, _ in found] == pytest.approx([s for s, _ in expected], abs=1e-6)


def test_a_window_of_silence_reads_as_faster_whisper_reads_it(speech, model):
    audio = np.concatenate([speech[: 20 * RATE], np.zeros(25 * RATE, dtype=np.float32)])
    clips, arguments = [0.0, 20.0, 20.0, 45.0], OPTIONS.decode_kwargs()
    one_by_one, _ = model.transcribe(
        audio, **arguments, clip_timestamps=clips, without_timestamps=True
    )
    windows, _ = decode_windows(model, audio, clips, arguments)
    spoken, silent = list(windows)
    assert len(spoken.text.split()) >= 20 and len(silent.text.split()) <= 2
    assert [spoken.text, silent.text] == [s.text.strip() for s in one_by_one]
    assert (silent.start, silent.end) == (20.0, 45.0)


def test_a_search_that_repeats_itself_is_decoded_again_with_the_fallback(speech, model):
    """A beam search whose text is too repetitive (faster-whisper's compression-ratio test)
    is replaced by faster-whisper's temperature fallback on the same window."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    window = pad_or_trim(model.feature_extractor(speech[: 20 * RATE])[:, :2000])
    _, info = model.transcribe(speech[: 20 * RATE], **OPTIONS.decode_kwargs())
    tokenizer = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    looping = SimpleNamespace(
        sequences_ids=[tokenizer.encode(" the meeting" * 40)], scores=[-0.05], no_speech_prob=0.0
    )
    options = info.transcription_options
    text = _window_text(model, tokenizer, options, prompt, looping, window)
    assert "the meeting the meeting the meeting" not in text.lower()
    assert len(text.split()) >= 20
    silent = SimpleNamespace(sequences_ids=[tokenizer.encode(" Thank you.")], scores=[-2.0])
    silent.no_speech_prob = 0.9  # improbable and silent: no fallback, and no text
    assert _window_text(model, tokenizer, options, prompt, silent, window) == ""


def test_timed_words_decode_whisper_segments_not_windows(speech, model):
    pieces, _ = decode_speech(model, speech[: 15 * RATE], AsrOptions(word_timestamps=True))
    segments = list(pieces)
    assert segments and all(s.words for s in segments)
    assert all(s.start <= w.start < w.end <= s.end + 0.5 for s in segments for w in s.words)


def test_one_batched_encoder_pass_as_a_gpu_takes_it_gives_the_same_output(speech, model):
    """The GPU's path (one encoder pass for the batch) against the CPU's (one a window)."""
    from faster_whisper.audio import pad_or_trim

    features = model.feature_extractor(speech[: 60 * RATE])
    windows = [pad_or_trim(features[:, a : a + 2000]) for a in (0, 2000, 4000)]
    one_by_one = np.array(_encoded(model, windows, one_by_one=True))
    batched = np.array(_encoded(model, windows, one_by_one=False))
    assert one_by_one.shape == batched.shape == (3, 1500, 384)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-3)
    assert not np.allclose(one_by_one[0], one_by_one[1])  # three windows, not one thrice


@pytest.mark.parametrize(
    "options",
    [AsrOptions(initial_prompt="Quarterly review."), AsrOptions(condition_on_previous_text=True)],
)
def test_windows_prompted_by_earlier_text_decode_one_after_another(speech, model, options):
    """An initial prompt (faster-whisper gives it to the first spoken window) or the
    previous text makes each window's prompt depend on the one before: no batch then."""
    assert options.windowed and not options.batches_windows
    clips = pause_windows(speech)
    pieces, _ = decode_speech(model, speech, options)
    expected, _ = model.transcribe(
        speech, **options.decode_kwargs(), clip_timestamps=clips, without_timestamps=True
    )
    assert [p.text for p in pieces] == [s.text.strip() for s in expected]
    with pytest.raises(ValueError, match="cannot be decoded as one batch"):
        decode_windows(model, speech, clips, options.decode_kwargs())
    assert AsrOptions().batches_windows
