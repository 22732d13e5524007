"""The transcription job's life in the store: queued -> running -> completed | failed."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import bindparam, update
from sqlmodel import col, select

from store import callbacks, leases
from store.db import get_engine, reader, rows_matched, session_scope
from store.leases import Lease, LeasedRows
from store.models import (
    CallbackKind,
    CallbackSubject,
    JobStatus,
    TranscriptionChunk,
    TranscriptionJob,
    table_of,
    utcnow,
)

FINAL_STATES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
_JOB = table_of(TranscriptionJob)
# A job's lease: its token goes with each dispatch to a task worker (only that task run may
# run it); the run that starts it holds it, renewed while it coordinates the job.
JOB_LEASES = LeasedRows.on(_JOB, _JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
SUBJECT = CallbackSubject.TRANSCRIPTION


def create_job(
    source_path: str,
    source_name: str,
    job_id: str | None = None,
    work_pool: str | None = None,
    duration: float | None = None,
    options: str | None = None,
    dispatch_token: str | None = None,
    callback_url: str | None = None,
    callback_kind: CallbackKind = CallbackKind.WEBHOOK,
) -> TranscriptionJob:
    """A new queued job (or the existing one with this id, e.g. created by the API);
    ``options`` (JSON) are kept for a job that may have to be run again, and only the task
    run given ``dispatch_token`` may run it. With ``callback_url``, its callback is recorded
    with it (waiting for the job's end): a signed POST, or with ``callback_kind`` DISCORD
    the follow-up of the interaction the job came from."""
    with session_scope() as session:
        if job_id and (existing := session.get(TranscriptionJob, job_id)):
            return existing
        job = TranscriptionJob(
            source_path=source_path,
            source_name=source_name,
            work_pool=work_pool,
            duration_seconds=duration,
            options=options,
            # No expiry until a run starts it: a job waiting in a busy pool's queue is not lost.
            lease_token=dispatch_token,
        )
        if job_id:
            job.id = job_id
        session.add(job)
        if callback_url:
            session.flush()  # the job's row first: the callback names it
            callbacks.insert(
                session.connection(), SUBJECT, job.id, callback_url, kind=callback_kind
            )
        return job


_JOB_BY_ID = _JOB.select().where(_JOB.c.id == bindparam("job_id"))


def get_job(job_id: str) -> TranscriptionJob | None:
    """The job, or None. One autocommit round trip: status reads are the API's hot path."""
    with reader().connect() as connection:
        row = connection.execute(_JOB_BY_ID, {"job_id": job_id}).mappings().first()
    return TranscriptionJob(**row) if row else None


def start_job(
    job_id: str,
    flow_run_id: str | None,
    duration: float,
    output_dir: str,
    token: str | None = None,
) -> bool:
    """The job is running: its duration is known and its flow run is recorded. Fenced by
    ``token`` like ``complete_job``; False when nothing was written."""
    return _update(
        job_id,
        {
            "status": JobStatus.RUNNING,
            "started_at": utcnow(),
            "flow_run_id": flow_run_id,
            "duration_seconds": duration,
            "output_dir": output_dir,
        },
        token=token,
    )


def holds_lease(job_id: str, token: str | None) -> bool:
    """Whether a run given ``token`` still holds the job (no token: a run without a lease,
    which nothing can take over)."""
    if token is None:
        return True
    held = select(_JOB.c.id).where(JOB_LEASES.held({job_id: Lease(None, None, token)}))
    with reader().connect() as connection:
        return connection.execute(held).first() is not None


def finish_split(job_id: str, chunks: int, duration: float) -> None:
    """The split is done: ``chunks`` chunks cover the ``duration`` seconds decoded."""
    _update(job_id, {"chunks_total": chunks, "duration_seconds": duration})


def start_run(job_id: str, token: str | None, owner: str, seconds: float) -> Lease | None:
    """The task run dispatched with ``token`` coordinates the job from now on: it holds the
    job's lease for ``seconds``. None when the job was dispatched again since (another
    token), or is finished."""
    with get_engine().begin() as connection:
        if token is None:  # dispatched without a token (older API): whoever starts it first
            where = (JOB_LEASES.key == job_id) & JOB_LEASES.token.is_(None)
            taken = leases.claim(connection, JOB_LEASES, where, owner, seconds)
            return taken.lease if taken.rows else None
        dispatched = {job_id: Lease(None, None, token)}
        held = leases.renew(connection, JOB_LEASES, dispatched, seconds, owner=owner)
        return held.get(job_id)


def take_for_run(job_id: str, owner: str, seconds: float) -> Lease | None:
    """A run that was not handed the job's lease (a deployment run, a flow called from the
    command line) holds the job while it runs: it takes the lease unless a live one holds
    it. None then, or when the job is finished."""
    with get_engine().begin() as connection:
        taken = leases.claim(connection, JOB_LEASES, JOB_LEASES.key == job_id, owner, seconds)
        return taken.lease if taken.rows else None


def renew(job_id: str, lease: Lease, seconds: float) -> bool:
    """The coordinator lives on: extend its lease; False once it is no longer the job's."""
    with get_engine().begin() as connection:
        return job_id in leases.renew(connection, JOB_LEASES, {job_id: lease}, seconds)


def expired(pool: str) -> list[str]:
    """Unfinished jobs of ``pool`` whose coordinator's lease ran out: its task worker died.
    Jobs no run has started yet (still queued) hold no expiring lease and are not here."""
    with get_engine().connect() as connection:
        order = (_JOB.c.created_at,)
        return leases.expired(connection, JOB_LEASES, _JOB.c.work_pool == pool, order_by=order)


def take_over(job_id: str, owner: str, seconds: float) -> Lease | None:
    """Take a job whose lease ran out, to dispatch it again with the new lease's token
    (earlier dispatches may no longer run it); of several callers, one gets it."""
    with get_engine().begin() as connection:
        return leases.take_over(connection, JOB_LEASES, job_id, owner, seconds)


def complete_job(job_id: str, language: str | None, model: str, token: str | None = None) -> bool:
    """The transcript is stored: the job is completed. With the ``token`` of the run's lease
    only while that lease holds it (fenced): False when another run has taken it over."""
    return _update(
        job_id,
        {
            "status": JobStatus.COMPLETED,
            "language": language,
            "model": model,
            "finished_at": utcnow(),
            "error": None,
            **JOB_LEASES.values(None),
        },
        token=token,
        ended=JobStatus.COMPLETED,
    )


def fail_job(job_id: str, reason: str, token: str | None = None) -> bool:
    """The job failed; the reason is what a person will read. Fenced by ``token`` like
    ``complete_job``; False when nothing was written."""
    return _update(
        job_id,
        {
            "status": JobStatus.FAILED,
            "error": reason,
            "finished_at": utcnow(),
            **JOB_LEASES.values(None),
        },
        token=token,
        ended=JobStatus.FAILED,
    )


def set_flow_run(job_id: str, flow_run_id: str) -> None:
    """Remember which Prefect flow run carries the job (set by the API on submission)."""
    _update(job_id, {"flow_run_id": flow_run_id})


def record_notification_error(job_id: str, reason: str) -> None:
    """A notification could not be delivered; the job itself is unaffected."""
    _update(job_id, {"notification_error": reason[:2000]}, allow_final=True)


def cancel_job(job_id: str) -> bool:
    """Cancel a queued or running job; False when it had already finished."""
    with session_scope() as session:
        result = session.execute(
            update(TranscriptionJob)
            .where(
                col(TranscriptionJob.id) == job_id,
                col(TranscriptionJob.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            )
            .values(
                status=JobStatus.CANCELLED,
                finished_at=utcnow(),
                error="cancelled by a user",
                **JOB_LEASES.values(None),
            )
        )
        if rows_matched(result) != 1:
            return False
        session.execute(callbacks.ended(SUBJECT, job_id, JobStatus.CANCELLED))
        return True


def is_cancelled(job_id: str) -> bool:
    """Whether a user cancelled the job (a running flow checks this and stops)."""
    job = get_job(job_id)
    return job is not None and job.status == JobStatus.CANCELLED


def delete_job(job_id: str) -> bool:
    """Remove a job and its chunks from the store; False when there was none."""
    with session_scope() as session:
        job = session.get(TranscriptionJob, job_id)
        if job is None:
            return False
        for chunk in session.exec(
            select(TranscriptionChunk).where(col(TranscriptionChunk.job_id) == job_id)
        ):
            session.delete(chunk)
        session.delete(job)
        session.execute(callbacks.removed(SUBJECT, job_id))
        return True


def _update(
    job_id: str,
    values: Mapping[str, object],
    *,
    allow_final: bool = False,
    token: str | None = None,
    ended: JobStatus | None = None,
) -> bool:
    """Update a job; a cancelled job keeps its state unless ``allow_final``; with ``token``,
    only while the job's lease has that token. True when the row was written; then, with
    ``ended`` (the job's final status), its callback is due, in the same transaction."""
    query = update(TranscriptionJob).where(col(TranscriptionJob.id) == job_id)
    if not allow_final:
        query = query.where(col(TranscriptionJob.status) != JobStatus.CANCELLED)
    if token is not None:
        query = query.where(JOB_LEASES.held({job_id: Lease(None, None, token)}))
    with session_scope() as session:
        result = session.execute(query.values(**values))
        written = rows_matched(result)
        if written == 0 and session.get(TranscriptionJob, job_id) is None:
            raise LookupError(f"no transcription job {job_id}")
        if written and ended is not None:
            session.execute(callbacks.ended(SUBJECT, job_id, ended))
        return written > 0
