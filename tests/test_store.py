"""The job store on SQLite and PostgreSQL: migrations, counters under concurrency, listing."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from store import job_chunks, jobs, status
from store.db import alembic_config, engine_for, get_engine, migrate
from store.models import ChunkStatus, JobStatus

pytestmark = pytest.mark.usefixtures("database_url")


def test_migrations_build_the_schema_and_are_idempotent(database_url):
    engine = get_engine()
    tables = set(inspect(engine).get_table_names())
    assert {"transcription_job", "bot_request", "usage_counter", "alembic_version"} <= tables
    job = jobs.create_job("/x/a.wav", "a.wav")
    migrate(engine_for(database_url))  # a second upgrade changes nothing and loses nothing
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and int(head) >= 6
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    assert jobs.get_job(job.id).source_name == "a.wav"


def _migrate_together(url: str, barrier) -> None:
    from store.db import engine_for, migrate

    barrier.wait()  # every process imported and connected: now, all at once
    migrate(engine_for(url))


@pytest.mark.parametrize("processes", [4])
def test_processes_starting_together_on_a_new_sqlite_store_all_migrate_it(tmp_path, processes):
    """API replicas (RELAY_API_WORKERS) and workers start at once on a new store: one
    migrates, the others find the schema current; none fails ("table already exists")."""
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(processes)
    started = [
        spawn.Process(target=_migrate_together, args=(url, barrier)) for _ in range(processes)
    ]
    for process in started:
        process.start()
    for process in started:
        process.join(timeout=120)
    assert [process.exitcode for process in started] == [0] * processes
    with engine_for(url).connect() as connection:
        assert inspect(connection).has_table("transcription_job")


def test_migrations_match_the_models():
    """A model change without its migration would leave upgraded stores behind."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with get_engine().connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_a_new_bot_request_may_be_given_every_column_but_its_id():
    # RequestFields types store.bot.create_request's keywords: it must follow the model.
    from store.bot import RequestFields
    from store.models import BotRequest

    typed = RequestFields.__required_keys__ | RequestFields.__optional_keys__
    assert typed == set(BotRequest.model_fields) - {"id"}


def test_concurrent_chunk_updates_lose_nothing():
    job = jobs.create_job("/x/long.wav", "long.wav")
    job_chunks.add_chunks(job.id, [(i, i * 10.0, (i + 1) * 10.0) for i in range(40)])

    def finish(index: int) -> None:
        if index % 10 == 3:
            job_chunks.finish_chunk(job.id, index, error=f"chunk {index} broke")
        else:
            job_chunks.finish_chunk(job.id, index, asr_seconds=0.5, worker_pid=1, segments=2)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(finish, range(40)))
    stored = jobs.get_job(job.id)
    assert (stored.chunks_total, stored.chunks_done, stored.chunks_failed) == (40, 36, 4)
    assert stored.audio_seconds_done == 360.0
    chunks = job_chunks.get_chunks(job.id)
    assert [c.index for c in chunks] == list(range(40))
    assert sum(c.status == ChunkStatus.FAILED for c in chunks) == 4
    assert all(c.error for c in chunks if c.status == ChunkStatus.FAILED)


def test_chunk_progress_moves_the_job_forward_once_and_never_back():
    job = jobs.create_job("/x/p.wav", "p.wav")
    job_chunks.add_chunks(job.id, [(0, 0.0, 60.0), (1, 60.0, 120.0)])
    assert job_chunks.record_chunk_progress(job.id, 0, 25.0)
    assert job_chunks.record_chunk_progress(job.id, 1, 10.0)
    assert not job_chunks.record_chunk_progress(job.id, 0, 12.0)  # a retry starting again from 0
    assert job_chunks.record_chunk_progress(job.id, 0, 90.0)  # capped at the chunk's 60 s
    assert jobs.get_job(job.id).audio_seconds_done == 70.0
    job_chunks.finish_chunk(job.id, 1, asr_seconds=1.0, worker_pid=1, segments=3)  # adds the rest
    assert not job_chunks.record_chunk_progress(job.id, 1, 59.0)  # a finished chunk stays put
    job_chunks.finish_chunk(job.id, 0, asr_seconds=1.0, worker_pid=1, segments=3)
    assert jobs.get_job(job.id).audio_seconds_done == 120.0  # exactly the audio, never more
    assert not job_chunks.record_chunk_progress(job.id, 7, 5.0)  # no such chunk


def test_chunks_added_as_the_audio_is_split_replace_an_earlier_attempts():
    job = jobs.create_job("/x/s.wav", "s.wav")
    jobs.start_job(job.id, None, 300.0, "/tmp/s")
    job_chunks.add_chunks(job.id, [(0, 0.0, 100.0), (1, 100.0, 200.0), (2, 200.0, 300.0)])
    job_chunks.record_chunk_progress(job.id, 0, 40.0)  # an earlier attempt's work
    job_chunks.add_chunk(job.id, 0, 0.0, 30.0)
    assert job_chunks.record_chunk_progress(job.id, 0, 10.0)  # the new first chunk is live at once
    job_chunks.add_chunk(job.id, 1, 30.0, 150.0)
    stored = jobs.get_job(job.id)
    assert (stored.chunks_total, stored.audio_seconds_done) == (2, 10.0)
    assert stored.duration_seconds == 300.0  # the declared length until the split ends
    # What the job shows does not go back: the earlier attempt's 40 s until this one passes.
    assert stored.progress_floor_seconds == 40.0
    assert status.progress_percent(stored) == pytest.approx(3.0 + 97.0 * 40.0 / 300.0)
    job_chunks.record_chunk_progress(job.id, 1, 45.0)  # 10 + 45 s: past the earlier attempt
    assert status.progress_percent(jobs.get_job(job.id)) == pytest.approx(3.0 + 97.0 * 55.0 / 300.0)
    jobs.finish_split(job.id, 2, 298.5)
    stored = jobs.get_job(job.id)
    assert (stored.chunks_total, stored.duration_seconds) == (2, 298.5)
    assert [(c.index, c.start_seconds, c.end_seconds) for c in job_chunks.get_chunks(job.id)] == [
        (0, 0.0, 30.0),
        (1, 30.0, 150.0),
    ]
    job_chunks.add_chunks(job.id, [(0, 0.0, 300.0)])  # a third attempt keeps the highest floor
    assert jobs.get_job(job.id).progress_floor_seconds == 55.0


def test_concurrent_progress_reports_add_each_second_once():
    job = jobs.create_job("/x/q.wav", "q.wav")
    job_chunks.add_chunks(job.id, [(0, 0.0, 100.0)])
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(lambda s: job_chunks.record_chunk_progress(job.id, 0, float(s)), range(1, 81))
        )
    # whatever the interleaving, the job holds the chunk's furthest point: never a sum of both
    chunk = job_chunks.get_chunks(job.id)[0]
    assert jobs.get_job(job.id).audio_seconds_done == chunk.seconds_done <= 80.0
    job_chunks.finish_chunk(job.id, 0, asr_seconds=1.0, worker_pid=1, segments=1)
    assert jobs.get_job(job.id).audio_seconds_done == 100.0


def test_a_job_whose_coordinator_stopped_renewing_is_taken_once():
    from datetime import timedelta

    from sqlalchemy import update
    from sqlmodel import col

    from store.db import session_scope
    from store.models import TranscriptionJob, utcnow

    alive = jobs.create_job("/x/alive.wav", "alive.wav", None, "asr-cpu", None, "{}", "t-alive")
    dead = jobs.create_job("/x/dead.wav", "dead.wav", None, "asr-cpu", None, '{"a": 1}', "t-dead")
    queued = jobs.create_job("/x/queued.wav", "queued.wav", None, "asr-cpu", None, "{}", "t-q")
    jobs.start_job(dead.id, None, 10.0, "/x/out")
    assert jobs.start_run(alive.id, "t-alive", "host:1", 60) is not None
    lease = jobs.start_run(dead.id, "t-dead", "host:2", 60)
    assert lease is not None and jobs.start_run(dead.id, "older", "host:3", 60) is None
    with session_scope() as session:
        session.execute(
            update(TranscriptionJob)
            .where(col(TranscriptionJob.id) == dead.id)
            .values(lease_expires_at=utcnow() - timedelta(minutes=5))
        )
    found = jobs.expired("asr-cpu")
    assert dead.id in found and alive.id not in found and queued.id not in found
    assert dead.id not in jobs.expired("asr-gpu")  # another pool's
    with ThreadPoolExecutor(max_workers=8) as pool:
        taken = list(pool.map(lambda n: jobs.take_over(dead.id, f"host:{n}", 60), range(8)))
    (won,) = [t for t in taken if t]  # exactly one worker runs it again, with a new token
    assert jobs.get_job(dead.id).lease_token == won.token != lease.token
    assert dead.id not in jobs.expired("asr-cpu")
    assert not jobs.renew(dead.id, lease, 60)  # the old coordinator learns it lost the job
    assert jobs.start_run(dead.id, won.token, "host:9", 60) is not None  # the new dispatch runs
    # The old coordinator learns it lost the job before it writes anything else...
    assert not jobs.holds_lease(dead.id, lease.token) and jobs.holds_lease(dead.id, won.token)
    assert not jobs.start_job(dead.id, "stale-flow-run", 10.0, "/x/out", lease.token)
    assert jobs.get_job(dead.id).flow_run_id != "stale-flow-run"
    # ...and its final writes change nothing; the new one's do.
    assert not jobs.complete_job(dead.id, "en", "tiny.en", token=lease.token)
    assert not jobs.fail_job(dead.id, "late failure", token=lease.token)
    stale_view = jobs.get_job(dead.id)
    assert (stale_view.status, stale_view.error) == (JobStatus.RUNNING, None)
    assert jobs.complete_job(dead.id, "en", "tiny.en", token=won.token)
    assert jobs.get_job(dead.id).status == JobStatus.COMPLETED
    jobs.fail_job(alive.id, "done with it")
    assert not jobs.renew(alive.id, lease, 60)  # a finished job's lease no longer moves
    assert jobs.get_job(alive.id).status == JobStatus.FAILED


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


def test_a_postgresql_password_reaches_the_driver():
    """str() of an SQLAlchemy URL masks its password: an engine built from it sent "***"
    and every password login failed (found by the multi-host tests' database)."""
    url = "postgresql://relay:s3cret-pw@db.invalid:5432/relay"
    engine = engine_for(url)
    assert engine.url.password == "s3cret-pw" and engine.url.drivername == "postgresql+psycopg"
    engine.dispose()
