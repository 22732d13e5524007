"""Merged timestamps are file-relative, ordered and bounded; the four formats are right."""

from __future__ import annotations

import json

from tasks.asr import ChunkResult, Segment, Word
from tasks.formats import FORMATS, render, write_outputs
from tasks.merge import Transcript, merge
from tasks.split import Chunk


def result(index: int, *segments: Segment, language: str = "en") -> ChunkResult:
    return ChunkResult(index, segments, language, 0.9, 60.0, 1.0)


def test_segments_are_offset_by_their_chunk_start_in_order():
    chunks = [Chunk(1, 60.0, 120.0, "b"), Chunk(0, 0.0, 60.0, "a")]
    results = [
        result(1, Segment(0.5, 4.0, "second")),
        result(0, Segment(1.0, 3.0, "first"), Segment(58.0, 59.5, "end of one")),
    ]
    transcript = merge(chunks, results, 120.0, "tiny.en")
    assert [(s.start, s.end, s.text) for s in transcript.segments] == [
        (1.0, 3.0, "first"),
        (58.0, 59.5, "end of one"),
        (60.5, 64.0, "second"),
    ]
    assert transcript.text == "first end of one second"


def test_timestamps_stay_monotonic_and_inside_chunk_and_file():
    chunks = [Chunk(0, 0.0, 30.0, "a"), Chunk(1, 30.0, 50.0, "b")]
    results = [
        result(0, Segment(25.0, 31.5, "overruns its chunk")),
        result(1, Segment(-0.5, 2.0, "starts early"), Segment(19.0, 25.0, "past the end")),
    ]
    transcript = merge(chunks, results, 49.0, "m")
    starts_ends = [(s.start, s.end) for s in transcript.segments]
    assert starts_ends == [(25.0, 30.0), (30.0, 32.0), (49.0, 49.0)]
    flat = [t for pair in starts_ends for t in pair]
    assert flat == sorted(flat)


def test_words_move_with_their_segment():
    word = Word(0.2, 0.6, " hello", 0.98)
    transcript = merge(
        [Chunk(0, 10.0, 20.0, "a")], [result(0, Segment(0.0, 1.0, "hello", (word,)))], 20.0, "m"
    )
    assert transcript.segments[0].words[0].start == 10.2
    assert transcript.segments[0].words[0].end == 10.6


def test_language_is_the_one_of_most_speech():
    chunks = [Chunk(0, 0, 60, "a"), Chunk(1, 60, 120, "b"), Chunk(2, 120, 180, "c")]
    results = [
        result(0, Segment(0, 1, "x"), language="de"),
        result(1, Segment(0, 1, "y"), language="en"),
        result(2, Segment(0, 1, "z"), language="en"),
    ]
    assert merge(chunks, results, 180.0, "m").language == "en"


SAMPLE = Transcript(
    (Segment(0.0, 2.5, "Hello there."), Segment(3661.25, 3662.0, "An hour later.")),
    "en",
    3700.0,
    "tiny.en",
)


def test_srt():
    assert render(SAMPLE, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n01:01:01,250 --> 01:01:02,000\nAn hour later.\n"
    )


def test_vtt():
    assert render(SAMPLE, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "01:01:01.250 --> 01:01:02.000\nAn hour later.\n"
    )


def test_txt_and_json(tmp_path):
    assert render(SAMPLE, "txt") == "Hello there.\nAn hour later.\n"
    files = write_outputs(SAMPLE, str(tmp_path))
    assert set(files) == set(FORMATS)
    data = json.loads((tmp_path / "transcript.json").read_text())
    assert data["language"] == "en" and data["duration"] == 3700.0 and data["model"] == "tiny.en"
    assert data["segments"][1] == {"start": 3661.25, "end": 3662.0, "text": "An hour later."}


def test_unknown_format_is_refused_by_name():
    try:
        render(SAMPLE, "docx")
    except ValueError as err:
        assert "docx" in str(err) and "srt" in str(err)
    else:
        raise AssertionError("docx should be refused")
