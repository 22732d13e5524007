"""The job store on SQLite and PostgreSQL: migrations, counters under concurrency, listing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import inspect, text

from store import jobs, status
from store.db import engine_for, get_engine, migrate
from store.models import ChunkStatus, JobStatus

pytestmark = pytest.mark.usefixtures("database_url")


def test_migrations_build_the_schema_and_are_idempotent(database_url):
    engine = get_engine()
    tables = set(inspect(engine).get_table_names())
    assert {"transcription_job", "bot_request", "usage_counter", "alembic_version"} <= tables
    job = jobs.create_job("/x/a.wav", "a.wav")
    migrate(engine_for(database_url))  # a second upgrade changes nothing and loses nothing
    with engine.connect() as connection:
        assert (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
        )
    assert jobs.get_job(job.id).source_name == "a.wav"


def test_migrations_match_the_models():
    """A model change without its migration would leave upgraded stores behind."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with get_engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_concurrent_chunk_updates_lose_nothing():
    job = jobs.create_job("/x/long.wav", "long.wav")
    jobs.add_chunks(job.id, [(i, i * 10.0, (i + 1) * 10.0) for i in range(40)])

    def finish(index: int) -> None:
        if index % 10 == 3:
            jobs.finish_chunk(job.id, index, error=f"chunk {index} broke")
        else:
            jobs.finish_chunk(job.id, index, asr_seconds=0.5, worker_pid=1, segments=2)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(finish, range(40)))
    stored = jobs.get_job(job.id)
    assert (stored.chunks_total, stored.chunks_done, stored.chunks_failed) == (40, 36, 4)
    assert stored.audio_seconds_done == 360.0
    chunks = jobs.get_chunks(job.id)
    assert [c.index for c in chunks] == list(range(40))
    assert sum(c.status == ChunkStatus.FAILED for c in chunks) == 4
    assert all(c.error for c in chunks if c.status == ChunkStatus.FAILED)


def test_a_cancelled_job_is_not_completed_later():
    job = jobs.create_job("/x/b.wav", "b.wav")
    assert jobs.cancel_job(job.id)
    assert not jobs.cancel_job(job.id)  # already final
    jobs.complete_job(job.id, "en", "tiny.en")
    assert jobs.get_job(job.id).status == JobStatus.CANCELLED


def test_listing_walks_every_job_once_newest_first():
    made = {jobs.create_job(f"/x/{i}.wav", f"{i}.wav").id for i in range(7)}
    seen, cursor = [], None
    while True:
        page, cursor = status.list_jobs(None, 3, cursor)
        seen.extend(page)
        if cursor is None:
            break
    ids = [job.id for job in seen]
    assert len(ids) == len(set(ids)) and made <= set(ids)
    created = [job.created_at for job in seen]
    assert created == sorted(created, reverse=True)
    failed, _ = status.list_jobs(JobStatus.CANCELLED, 50, None)
    assert failed and all(job.status == JobStatus.CANCELLED for job in failed)


def test_throughput_is_measured_from_completed_jobs():
    from datetime import timedelta

    from store.db import session_scope
    from store.models import TranscriptionJob, utcnow

    default = status.throughput()
    with session_scope() as session:
        now = utcnow()
        for _ in range(3):
            session.add(
                TranscriptionJob(
                    source_path="/x",
                    source_name="x",
                    status=JobStatus.COMPLETED,
                    duration_seconds=600.0,
                    created_at=now - timedelta(seconds=25),
                    started_at=now - timedelta(seconds=20),
                    finished_at=now,
                )
            )
    measured = status.throughput()
    assert measured.measured_jobs >= 3
    assert measured.realtime_factor != default.realtime_factor
    assert 20 <= measured.realtime_factor <= 31  # 600 s of audio in 20 s of work


def test_queue_counts_per_pool():
    jobs.create_job("/x/q.wav", "q.wav", work_pool="asr-gpu")
    running = jobs.create_job("/x/r.wav", "r.wav", work_pool="asr-gpu")
    jobs.start_job(running.id, None, 10.0, "/tmp/out")
    counts = status.queue_counts()
    assert counts["asr-gpu"] == {"queued": 1, "running": 1}
