"""The real tiny.en model on real espeak-ng speech: accuracy, silence, model reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import asr
from tasks.asr import AsrOptions, ChunkTimeoutError, recognise
from tasks.media import decode, probe
from tasks.split import Chunk, write_chunks
from tasks.wer import word_error_rate
from tests.audio import DATA, ROOT

SAMPLES = [ROOT / "samples" / "meeting.ogg", DATA / "weather.mp3", DATA / "library.m4a"]


def as_chunk(path: Path, folder: Path) -> Chunk:
    """The whole file as one 16 kHz chunk, as the flow would hand it to a worker."""
    samples = decode(probe(path))
    return write_chunks(samples, [], str(folder))[0]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_committed_samples_transcribe_within_15_percent_wer(sample, tmp_path):
    reference = sample.with_suffix(".txt").read_text()
    result = recognise(as_chunk(sample, tmp_path), AsrOptions())
    text = " ".join(segment.text for segment in result.segments)
    assert word_error_rate(reference, text) <= 0.15, text
    assert result.language == "en"
    assert all(0 <= s.start <= s.end <= result.audio_seconds + 0.5 for s in result.segments)


def test_silence_comes_out_empty_not_invented(tmp_path):
    samples = np.zeros(16000 * 120, dtype=np.int16)
    (chunk,) = write_chunks(samples, [], str(tmp_path))
    assert not chunk.has_speech
    loads_before = asr.model_loads()
    result = recognise(chunk, AsrOptions())
    assert result.segments == ()
    assert asr.model_loads() == loads_before  # the model was not even asked


def test_model_is_loaded_once_per_process(tmp_path):
    chunk = as_chunk(DATA / "library.m4a", tmp_path)
    options = AsrOptions()
    first = recognise(chunk, options)
    loads = asr.model_loads()
    for _ in range(3):
        recognise(chunk, options)
    assert asr.model_loads() == loads
    assert first.model_loads_in_process == loads


def test_word_timestamps_and_language_option(tmp_path):
    chunk = as_chunk(DATA / "weather.mp3", tmp_path)
    result = recognise(chunk, AsrOptions(word_timestamps=True, language="en", beam_size=1))
    words = [w for s in result.segments for w in s.words]
    assert len(words) >= 40
    assert all(
        s.start <= w.start <= w.end <= s.end + 0.01 for s in result.segments for w in s.words
    )


def test_a_chunk_over_its_time_limit_stops(tmp_path):
    chunk = as_chunk(ROOT / "samples" / "meeting.ogg", tmp_path)
    with pytest.raises(ChunkTimeoutError, match="time limit"):
        recognise(chunk, AsrOptions(), timeout=0.0)


def test_bundled_model_resolves_to_the_packaged_folder():
    folder = Path(asr.resolve_model("tiny.en"))
    assert (folder / "model.bin").exists()
    assert asr.resolve_model("/no/such/model") == "/no/such/model"


def test_windows_are_decoded_without_the_previous_text_unless_asked(relay_env, tmp_path):
    # Off by default: ~25 % faster at the same WER on silence-cut chunks (bench/asr.py).
    assert AsrOptions.from_settings(relay_env()).condition_on_previous_text is False
    asked = AsrOptions.from_settings(relay_env(ASR_CONDITION_ON_PREVIOUS_TEXT="true"))
    assert asked.decode_kwargs()["condition_on_previous_text"] is True
    sample = DATA / "weather.mp3"
    result = recognise(as_chunk(sample, tmp_path), asked)
    text = " ".join(segment.text for segment in result.segments)
    assert word_error_rate(sample.with_suffix(".txt").read_text(), text) <= 0.15, text


def test_a_jobs_options_fall_back_to_the_pools_then_to_the_settings(relay_env):
    from tasks.asr import JobOptions

    pool = JobOptions(device="cuda", compute_type="float16")
    job = JobOptions(language="en", beam_size=2)
    chosen = job.over(pool)
    assert chosen.given() == {
        "language": "en",
        "beam_size": 2,
        "device": "cuda",
        "compute_type": "float16",
    }
    options = AsrOptions.from_settings(relay_env(ASR_MODEL="base.en"), chosen)
    assert (options.model, options.device, options.beam_size, options.language) == (
        "base.en",
        "cuda",
        2,
        "en",
    )
    # A task run from a release before options were typed carries a dict: still accepted.
    assert JobOptions.model_validate({"language": "en"}) == JobOptions(language="en")
    with pytest.raises(ValueError, match="beam"):
        JobOptions.model_validate({"beams": 3})
