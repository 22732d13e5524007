"""Cut points land in pauses near their target; chunks cover the audio exactly."""

from __future__ import annotations

import itertools
import wave
from dataclasses import replace

import numpy as np
import pytest

from tasks.media import SAMPLE_RATE
from tasks.split import (
    SplitOptions,
    cut_points,
    has_speech,
    next_length,
    planned_count,
    stream_chunks,
    write_chunks,
)

RNG = np.random.default_rng(7)


def noise(seconds: float, level: float = 8000.0) -> np.ndarray:
    """A loud, speech-like stretch with no pause in it."""
    return (RNG.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.int16)


def quiet(seconds: float) -> np.ndarray:
    return (RNG.standard_normal(int(seconds * SAMPLE_RATE)) * 5).astype(np.int16)


def test_cut_lands_inside_the_pause_nearest_the_target():
    audio = np.concatenate([noise(27.0), quiet(1.0), noise(30.0)])
    (cut,) = cut_points(audio, SplitOptions(target_seconds=30, search_seconds=5))
    assert 27.0 < cut < 28.0


def test_longest_pause_in_the_window_wins_over_a_word_gap():
    audio = np.concatenate([noise(29.0), quiet(0.3), noise(3.0), quiet(1.5), noise(30.0)])
    (cut,) = cut_points(audio, SplitOptions(target_seconds=30, search_seconds=6))
    assert 32.3 < cut < 33.8  # the 1.5 s pause, not the 0.3 s one nearer the target


def test_never_cuts_in_speech_when_a_pause_is_within_the_window():
    audio = np.concatenate([noise(45.0), quiet(0.6), noise(30.0)])
    (cut,) = cut_points(audio, SplitOptions(target_seconds=40, search_seconds=8))
    assert 45.0 < cut < 45.6


def test_without_any_pause_cuts_at_the_quietest_moment():
    audio = noise(70.0)
    dip = slice(int(33 * SAMPLE_RATE), int(33.4 * SAMPLE_RATE))
    audio[dip] = (audio[dip] * 0.05).astype(np.int16)
    (cut,) = cut_points(audio, SplitOptions(target_seconds=30, search_seconds=5))
    assert 32.9 < cut < 33.5


def test_short_audio_is_one_chunk_and_long_audio_has_no_tiny_tail():
    assert cut_points(noise(35.0), SplitOptions(target_seconds=30)) == []
    cuts = cut_points(noise(100.0), SplitOptions(target_seconds=30, search_seconds=5))
    bounds = [0.0, *cuts, 100.0]
    lengths = np.diff(bounds)
    assert all(lengths >= 7.5), lengths  # no piece shorter than a quarter target


def test_the_first_chunk_is_short_and_the_rest_are_full_length():
    pieces = []
    for _ in range(7):  # a pause every 15 s
        pieces += [noise(14.0), quiet(1.0)]
    audio = np.concatenate(pieces)
    options = SplitOptions(target_seconds=45, search_seconds=8, first_seconds=15)
    cuts = cut_points(audio, options)
    assert 14.0 < cuts[0] < 15.0  # first text back after 15 s of audio, not 45
    assert all(44.0 < b - a < 46.0 for a, b in itertools.pairwise(cuts)), cuts
    assert cut_points(audio, SplitOptions(target_seconds=45, search_seconds=8))[0] > 40.0


def test_chunks_cover_the_audio_exactly_as_16k_mono_files(tmp_path):
    audio = np.concatenate([noise(20.0), quiet(1.0), noise(20.0), quiet(10.0)])
    cuts = cut_points(audio, SplitOptions(target_seconds=20, search_seconds=4))
    chunks = write_chunks(audio, cuts, str(tmp_path / "chunks"))
    assert [c.index for c in chunks] == list(range(len(cuts) + 1))
    assert chunks[0].start == 0.0
    assert chunks[-1].end == len(audio) / SAMPLE_RATE
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    total = 0
    for chunk in chunks:
        with wave.open(chunk.path) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
            total += wav.getnframes()
    assert abs(total - len(audio)) <= len(chunks)


def test_silence_has_no_speech():
    assert not has_speech(np.zeros(SAMPLE_RATE * 5, dtype=np.int16))
    assert not has_speech(quiet(5.0))
    assert has_speech(np.concatenate([quiet(4.0), noise(0.5)]))


def simulate(lengths: list[float], workers: int) -> list[float]:
    """When each worker finishes if each takes the next chunk as it frees up (as Dask hands
    out queued chunks), decode time proportional to audio."""
    busy = [0.0] * workers
    for length in lengths:
        busy[busy.index(min(busy))] += length
    return busy


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("minutes", [5, 10, 17, 30])
def test_the_last_chunks_are_sized_for_the_workers_to_finish_together(minutes, workers):
    pieces: list[np.ndarray] = []
    while sum(len(p) for p in pieces) < minutes * 60 * SAMPLE_RATE:  # a pause every 6 s
        pieces += [noise(5.5), quiet(0.5)]
    audio = np.concatenate(pieces)
    duration = len(audio) / SAMPLE_RATE
    options = SplitOptions(target_seconds=120, search_seconds=20, first_seconds=30)
    cuts = cut_points(audio, replace(options, workers=workers))
    lengths = list(np.diff([0.0, *cuts, duration]))
    finish = simulate(lengths, workers)
    # Planned from the worker count: the workers finish within a few seconds of audio of
    # each other (cuts still land in pauses, every 6 s here).
    assert max(finish) - min(finish) <= 8.0, (lengths, finish)
    assert 27.0 < lengths[0] < 34.0  # the first chunk stays short: first text early
    assert all(20.0 - 6.0 <= length <= 150.0 + 6.0 for length in lengths), lengths
    # The last round comes in pieces of at most half a chunk: a worker whose audio decodes
    # faster than planned takes one more, so real decode speeds even out too.
    assert max(lengths[-workers:]) <= 60.0 + 6.0, lengths
    # Planned as if for one worker, the same file leaves a worker idle for most of a chunk.
    naive = simulate(list(np.diff([0.0, *cut_points(audio, options), duration])), workers)
    assert max(naive) - min(naive) >= max(finish) - min(finish)


def test_balanced_cuts_still_land_only_in_pauses():
    pieces = []
    for _ in range(60):  # speech with a 0.4 s pause every 10 s
        pieces += [noise(9.6), quiet(0.4)]
    audio = np.concatenate(pieces)
    cuts = cut_points(audio, SplitOptions(120, 20, 30, workers=2))
    assert len(cuts) >= 5
    for cut in cuts:
        assert 9.6 <= cut % 10.0 <= 10.0, cut  # inside a pause, never in the noise


def test_one_worker_keeps_full_length_chunks():
    audio = noise(600.0)
    cuts = cut_points(audio, SplitOptions(120, 20, 30, workers=1))
    lengths = np.diff([0.0, *cuts, 600.0])
    assert 22.5 <= lengths[0] <= 37.5  # no pause: the quietest moment within a quarter
    assert all(100.0 <= length <= 150.0 for length in lengths[1:-1]), lengths
    assert lengths[-1] <= 150.0  # the rest, as it comes: no balancing for one worker


def test_chunks_stream_out_while_the_audio_still_arrives(tmp_path):
    pieces = []
    for _ in range(60):  # ten minutes, a pause every 10 s
        pieces += [noise(9.5), quiet(0.5)]
    audio = np.concatenate(pieces)
    duration = len(audio) / SAMPLE_RATE
    pulled: list[int] = []

    def blocks():  # 10 s at a time, as decode_blocks gives them
        for start in range(0, len(audio), 10 * SAMPLE_RATE):
            pulled.append(start)
            yield audio[start : start + 10 * SAMPLE_RATE]

    options = SplitOptions(120, 20, 30, workers=2)
    arrived = []
    chunks = []
    for chunk in stream_chunks(blocks(), duration, str(tmp_path), options):
        arrived.append(len(pulled) * 10.0)
        chunks.append(chunk)
    assert arrived[0] <= 60.0  # the first chunk was ready after 60 s of 600 were decoded
    assert all(a < duration for a in arrived[:-2])  # and so were all but the last ones
    # The same cuts as splitting the whole file at once, and the files hold the audio.
    assert [c.end for c in chunks[:-1]] == cut_points(audio, options)
    assert chunks[-1].end == duration and [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        with wave.open(chunk.path) as wav:
            assert wav.getnframes() == round(chunk.end * SAMPLE_RATE) - round(
                chunk.start * SAMPLE_RATE
            )


def test_a_stream_longer_or_shorter_than_declared_ends_where_the_audio_ends(tmp_path):
    audio = np.concatenate([noise(50.0), quiet(1.0), noise(50.0)])
    for declared in (60.0, 101.0, 200.0):
        chunks = list(stream_chunks([audio], declared, str(tmp_path), SplitOptions(60, 10)))
        assert chunks[-1].end == 101.0, declared
        assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]


def test_planned_count_matches_the_plan():
    options = SplitOptions(120, 20, 30, workers=2)
    assert planned_count(600, options) == 8  # 30, 120, 120, 120, then 50, 50, 60, 50
    assert planned_count(20, options) == 1
    assert planned_count(600, replace(options, workers=1)) == 6


def test_a_file_ending_before_its_declared_length_leaves_no_sliver(tmp_path):
    # 290.2 s of speech with a long pause just before the end; the probe declared 320 s.
    pieces = []
    for _ in range(28):
        pieces += [noise(9.5), quiet(0.5)]
    audio = np.concatenate([*pieces, noise(8.0), quiet(2.0), noise(0.2)])
    chunks = list(stream_chunks([audio], 320.0, str(tmp_path), SplitOptions(120, 20, 30)))
    assert chunks[-1].end == pytest.approx(290.2)
    assert chunks[-1].duration >= 30.0, [(c.start, c.end) for c in chunks]


def test_a_short_target_still_gives_no_chunk_under_the_shortest():
    options = SplitOptions(target_seconds=60, search_seconds=10, workers=2)
    # 45 s left for one worker: two pieces of 22.5 s would be under the 30-s floor.
    assert next_length(45.0, [100.0, 100.0], 5, options) == 45.0
