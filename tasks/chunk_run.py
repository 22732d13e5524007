"""A chunk's Prefect task run, in the flow process, while its decode runs on a Dask worker.

Prefect's bookkeeping of a task run costs 0.13 to 0.2 s of the process that runs it (its
settings rebuilt from the serialized context, new API clients, the state events:
docs/benchmarks.md). On a Dask worker that is time its model does not decode; in the flow
process it overlaps the decoding. So a Dask worker runs only ``tasks.asr.decode_chunk``,
which makes no Prefect call: the workers need no Prefect API.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from distributed import Client, Future, default_client
from distributed.client import FutureCancelledError
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from tasks.asr import AsrOptions, ChunkResult, decode_chunk
from tasks.split import Chunk

# Why Dask cancels a client's futures when it loses its scheduler (distributed.Client).
SCHEDULER_LOST = "scheduler-connection-lost"
# Why Relay cancels a job's decodes: the job was cancelled, or its split failed.
NOT_WANTED = "relay-job-needs-it-no-more"
RESUBMITS = 2  # times one chunk is submitted again after losing the scheduler
log = logging.getLogger("relay.asr")


def decode_key(job_id: str | None, index: int) -> str:
    """A unique Dask key for one decode of a job's chunk (``cancel_decodes`` finds them)."""
    return f"{_job_prefix(job_id)}{index}-{uuid.uuid4().hex[:8]}"


def _job_prefix(job_id: str | None) -> str:
    return f"decode-chunk-{job_id or 'nojob'}-"


def cancel_decodes(client: Client, job_id: str | None) -> None:
    """Cancel the job's decodes still on the cluster: a waiting one never runs; one already
    decoding runs to its end on its worker (Dask cannot stop it) and its result is dropped.
    Their task runs fail at once."""
    prefix = _job_prefix(job_id)
    keys = [key for key in list(client.futures) if str(key).startswith(prefix)]
    if keys:
        futures: list[Future[ChunkResult]] = [Future(key, client) for key in keys]
        client.cancel(futures, reason=NOT_WANTED)  # type: ignore[no-untyped-call]


def _retry_unless_cancelled(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed chunk, but not one whose decode was cancelled: by its job, which no
    longer needs it, or with a scheduler it was already submitted again after."""
    return not isinstance(state.result(raise_on_failure=False), FutureCancelledError)


@task(
    name="transcribe-chunk",
    task_run_name="chunk-{chunk.index}",
    cache_policy=NO_CACHE,  # inputs are paths whose contents change per job: never reuse
    persist_result=False,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_unless_cancelled,
)
def transcribe_chunk(
    chunk: Chunk,
    options: AsrOptions,
    timeout: float | None = None,
    job_id: str | None = None,
    priority: int = 0,
) -> ChunkResult:
    """Transcribe one chunk on the current Dask client's cluster (the flow's chunk runner),
    within ``timeout`` seconds, at Dask ``priority``, and wait for it here.

    A decode lost with the scheduler (it died, or the network did) is submitted again, up
    to RESUBMITS times: the client sends it once it has reconnected, and it runs there.
    """
    client: Client = default_client()  # type: ignore[no-untyped-call]
    attempt = 0
    while True:
        future = client.submit(
            decode_chunk,
            chunk,
            options,
            timeout,
            job_id,
            key=decode_key(job_id, chunk.index),
            priority=priority,
            pure=False,
        )
        try:
            return future.result()
        except FutureCancelledError as err:
            if err.reason != SCHEDULER_LOST or attempt == RESUBMITS:
                raise
        attempt += 1
        log.warning("job %s: chunk %d lost with the Dask scheduler; submitted again",
                    job_id, chunk.index)  # fmt: skip
