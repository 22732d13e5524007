"""The transcription flow end to end on a real Prefect server, real Dask, real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from flows.chunks import ChunkMap, transcribe_chunks
from flows.runtime import chunk_task_runner
from flows.transcribe import TranscriptionOutcome, transcribe
from store import job_chunks, jobs
from store.models import ChunkStatus, JobStatus
from tasks.asr import AsrOptions, recognise
from tasks.split import SplitOptions, cut_points, write_chunks
from tasks.wer import word_error_rate, words
from tests.audio import LONG_TEXT, ROOT, encode, save, silence, speech_samples
from tests.prefect_runs import wait_chunk_runs

pytestmark = pytest.mark.usefixtures("prefect_server")
SAMPLE = ROOT / "samples" / "meeting.ogg"


def run(source: Path | str, **params):
    state = transcribe(str(source), return_state=True, **params)
    return state, state.result(raise_on_failure=False) if state.is_completed() else None


def test_sample_end_to_end():
    state, outcome = run(SAMPLE)
    assert state.is_completed(), state.message
    assert isinstance(outcome, TranscriptionOutcome)
    reference = (ROOT / "samples" / "meeting.txt").read_text()
    assert word_error_rate(reference, outcome.text) <= 0.15

    job = jobs.get_job(outcome.job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.flow_run_id == str(state.state_details.flow_run_id)
    assert job.chunks_done == job.chunks_total >= 1 and job.chunks_failed == 0
    assert job.language == "en" and job.duration_seconds == pytest.approx(24.5, abs=0.5)
    assert all(c.status == ChunkStatus.DONE for c in job_chunks.get_chunks(job.id))

    files = {fmt: Path(path) for fmt, path in outcome.files.items()}
    assert set(files) == {"txt", "srt", "vtt", "json"}
    assert files["vtt"].read_text().startswith("WEBVTT")
    data = json.loads(files["json"].read_text())
    assert data["language"] == "en" and data["model"] == "tiny.en"
    ends = [t for s in data["segments"] for t in (s["start"], s["end"])]
    assert ends == sorted(ends) and ends[-1] <= data["duration"]
    assert not (files["txt"].parent / "chunks").exists()  # chunk audio removed after success

    with get_client(sync_client=True) as client:
        summary = client.read_artifacts()
        assert any(a.key == f"transcript-{job.id}" for a in summary)
    # The chunk tasks ran in Dask worker processes and reported to this same server, as task
    # runs of the flow run itself (no subflow).
    assert len(wait_chunk_runs(state.state_details.flow_run_id, job.chunks_total)) >= 1
    assert any(a.type == "progress" for a in summary)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> tuple[Path, str]:
    """About a hundred seconds of speech with natural sentence pauses."""
    folder = tmp_path_factory.mktemp("long")
    text = LONG_TEXT + LONG_TEXT.replace("Good morning", "Good afternoon")
    return save(speech_samples(text, folder), folder / "review.flac"), text


def test_chunked_transcript_matches_the_whole_file(long_speech, relay_env, tmp_path):
    path, reference = long_speech
    relay_env(CHUNK_TARGET_SECONDS=40, CHUNK_SEARCH_SECONDS=10)
    state, outcome = run(path)
    assert state.is_completed(), state.message
    assert jobs.get_job(outcome.job_id).chunks_total >= 3

    whole = recognise(write_chunks(_decode(path), [], str(tmp_path))[0], AsrOptions())
    whole_text = " ".join(s.text for s in whole.segments)
    assert word_error_rate(whole_text, outcome.text) <= 0.05
    assert word_error_rate(reference, outcome.text) <= 0.15


def test_no_word_lost_or_doubled_at_a_cut(relay_env, tmp_path):
    first = "The orange balloon floated slowly above the quiet river."
    second = "Seven purple umbrellas were waiting beside the railway station."
    third = "Nobody expected the museum to open before breakfast."
    pieces = [speech_samples(sentence, tmp_path) for sentence in (first, second, third)]
    pause = silence(0.7)
    audio = np.concatenate([pieces[0], pause, pieces[1], pause, pieces[2]])
    # Aim inside sentence two, late enough that one cut leaves no second chunk to split.
    target = (len(pieces[0]) + len(pause) + len(pieces[1]) * 3 // 4) / 16000
    relay_env(CHUNK_TARGET_SECONDS=target, CHUNK_SEARCH_SECONDS=target / 2)
    cuts = cut_points(audio, SplitOptions(target, target / 2))
    assert len(cuts) == 1
    speech_two = (len(pieces[0]) + len(pause)) / 16000
    assert not (speech_two + 0.1 < cuts[0] < speech_two + len(pieces[1]) / 16000 - 0.1)

    state, outcome = run(save(audio, tmp_path / "boundary.wav"))
    assert state.is_completed(), state.message
    assert jobs.get_job(outcome.job_id).chunks_total == 2
    said = words(outcome.text)
    for word in ("balloon", "river", "seven", "umbrellas", "station", "nobody", "breakfast"):
        assert said.count(word) == 1, (word, outcome.text)


def test_model_loads_once_per_worker_across_many_chunks(long_speech, tmp_path):
    path, _ = long_speech
    samples = _decode(path)
    chunks = write_chunks(samples, cut_points(samples, SplitOptions(10, 3)), str(tmp_path))
    assert len(chunks) >= 8
    job = jobs.create_job(str(path), path.name)
    job_chunks.add_chunks(job.id, [(c.index, c.start, c.end) for c in chunks])

    @flow(persist_result=False)
    def chunk_map() -> ChunkMap:  # in a flow run, as the transcribe flow runs it
        with chunk_task_runner(len(chunks)) as runner:
            return transcribe_chunks(runner, job.id, chunks, AsrOptions())

    mapped = chunk_map()
    results, failures = mapped.results, mapped.failures
    assert failures == [] and mapped.chunks == chunks
    assert len(results) == len(chunks)
    pids = {r.worker_pid for r in results}
    assert 1 <= len(pids) <= 2
    assert all(r.model_loads_in_process == 1 for r in results)  # never reloaded per task
    assert jobs.get_job(job.id).chunks_done == len(chunks)


def test_pure_silence_gives_an_empty_transcript(tmp_path):
    state, outcome = run(save(silence(120), tmp_path / "quiet.wav"))
    assert state.is_completed(), state.message
    assert outcome.text == ""
    assert Path(outcome.files["txt"]).read_text() == ""
    assert jobs.get_job(outcome.job_id).status == JobStatus.COMPLETED


def test_video_file_uses_its_audio_track(tmp_path):
    from tests.audio import with_video

    clip = with_video(SAMPLE, tmp_path / "meeting.mp4", "libx264", "aac")
    state, outcome = run(clip)
    assert state.is_completed(), state.message
    reference = (ROOT / "samples" / "meeting.txt").read_text()
    assert word_error_rate(reference, outcome.text) <= 0.15


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / {"empty": "empty.wav", "text": "notes.wav", "missing": "gone.mp3"}[kind]
    if kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("not audio at all\n" * 40)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "file is empty"),
        ("text", "not a readable audio or video file"),
        ("missing", "no such file"),
    ],
)
def test_bad_input_fails_the_job_with_its_reason(tmp_path, state_dir, kind, message):
    jobs_folder = state_dir / "data" / "jobs"
    before = set(jobs_folder.iterdir()) if jobs_folder.exists() else set()
    state, _ = run(_bad(tmp_path, kind), job_id=f"bad{kind}")
    assert state.is_failed()
    assert message in state.message
    job = jobs.get_job(f"bad{kind}")
    assert job.status == JobStatus.FAILED and message in job.error
    after = set(jobs_folder.iterdir()) if jobs_folder.exists() else set()
    assert after == before  # no partial output left behind


def test_truncated_file_fails_after_probe_and_leaves_nothing(tmp_path, state_dir):
    whole = (ROOT / "tests" / "data" / "weather.mp3").read_bytes()
    path = tmp_path / "half.mp3"
    path.write_bytes(whole[: len(whole) // 2])
    state, _ = run(path, job_id="truncated")
    assert state.is_failed() and "truncated or corrupt" in state.message
    assert jobs.get_job("truncated").error == state.message
    assert not (state_dir / "data" / "jobs" / "truncated").exists()


def test_truncated_file_leaves_every_chunk_it_cut_failed_with_the_reason(relay_env, tmp_path):
    # About 150 s declared, 100 s there: chunks are cut and sent before the end of the stream
    # proves the file short.
    speech = save(speech_samples(" ".join([LONG_TEXT] * 3), tmp_path), tmp_path / "long.wav")
    whole = encode(speech, tmp_path / "long.mp3", "-c:a", "libmp3lame").read_bytes()
    path = tmp_path / "short.mp3"
    path.write_bytes(whole[: len(whole) * 2 // 3])  # its header still declares it all
    relay_env(CHUNK_TARGET_SECONDS=40, CHUNK_SEARCH_SECONDS=10)
    state, _ = run(path, job_id="cutshort")
    job = jobs.get_job("cutshort")
    assert state.is_failed() and job.status == JobStatus.FAILED
    assert "truncated or corrupt" in job.error, job.error
    chunks = job_chunks.get_chunks(job.id)
    assert chunks and all(c.status == ChunkStatus.FAILED for c in chunks)
    assert all(c.error == job.error for c in chunks)


def test_a_split_that_cannot_write_its_chunks_fails_the_job_with_why(relay_env, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the data folder should be")
    relay_env(DATA_DIR=str(blocked))
    state, _ = run(SAMPLE, job_id="unwritable")
    assert state.is_failed() and "splitting failed" in state.message, state.message
    job = jobs.get_job("unwritable")
    assert job.status == JobStatus.FAILED and job.error == state.message


def test_over_long_audio_is_refused_with_duration_and_limit(relay_env):
    relay_env(MAX_AUDIO_SECONDS=10)
    state, _ = run(SAMPLE, job_id="toolong")
    assert state.is_failed()
    assert "over the limit of 0:10 (10 s)" in state.message and "24.5 s" in state.message
    assert jobs.get_job("toolong").status == JobStatus.FAILED


def _decode(path: Path) -> np.ndarray:
    from tasks.media import decode, probe

    return decode(probe(path))
