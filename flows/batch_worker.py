"""A batch worker: claims videos under a lease, processes them one by one, until none are left.

Any number of these run at once, as flow runs of the ``reprocess-worker`` deployment on the
``batch-video`` pool (on any host of it) or as ``python -m cli batch work``. They share
nothing but the job store: adding or removing one mid-batch needs no re-sharding, and the
videos of one that dies are taken over by the others once its leases run out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from prefect import flow, get_run_logger

from relay_pools import Workload, pools_serving
from relay_settings import get_settings
from store import batches, videos
from store.leases import Lease, LeaseOutcome, renewal_interval
from store.models import VideoStatus
from store.workers import WorkerKind, heartbeating
from tasks.asr import AsrOptions
from tasks.media import MediaError
from tasks.split import SplitOptions
from tasks.video import transcribe_video

log = logging.getLogger("relay.batch")
IDLE_POLL_SECONDS = 2.0


def worker_name(label: str | None = None) -> str:
    """Who holds a lease: host, process id and a short random tag (unique per worker)."""
    tag = label or uuid.uuid4().hex[:6]
    return f"{socket.gethostname()}:{os.getpid()}:{tag}"[:255]


class LeaseKeeper:
    """Renews the leases of the videos a worker holds, from a background thread.

    A lease the renewal finds gone (the worker stalled past it and another took the video)
    is dropped from ``held``, and the worker does not record a result for that video.
    """

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._held: dict[int, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            left, self._held = dict(self._held), {}
        if left:  # interrupted: hand back what was not finished, without spending an attempt
            videos.release(left)

    def hold(self, claimed: Iterable[videos.ClaimedVideo]) -> None:
        with self._lock:
            self._held.update((video.id, video.lease) for video in claimed)

    def drop(self, video_id: int) -> None:
        with self._lock:
            self._held.pop(video_id, None)

    def holds(self, video_id: int) -> bool:
        with self._lock:
            return video_id in self._held

    def count(self) -> int:
        """Videos held now: the worker's work in flight."""
        with self._lock:
            return len(self._held)

    def _run(self) -> None:
        while not self._stop.wait(renewal_interval(self.lease_seconds)):
            with self._lock:
                held = dict(self._held)
            try:
                kept = videos.renew(held, self.lease_seconds)
            except Exception as err:  # the next round tries again; the lease has slack
                log.warning("lease renewal failed: %s", err)
                continue
            with self._lock:
                for lost in held.keys() - kept:
                    self._held.pop(lost, None)
            for lost in held.keys() - kept:
                log.warning("lost the lease of video %s to another worker", lost)


@dataclass(frozen=True)
class WorkerSummary:
    """What one worker did in a batch."""

    worker: str
    done: int
    failed: int
    retried: int
    lost: int


def process_video(video: videos.ClaimedVideo, max_attempts: int) -> str:
    """Process one claimed video and record the outcome under the worker's lease.

    A plain function, not a task run per video: thousands of task runs would cost the
    Prefect server more than the videos (the batch's artifacts and logs carry progress).
    """
    settings = get_settings()
    folder = f"{settings.data_dir.rstrip('/')}/videos/{video.id}"
    started = time.perf_counter()
    try:
        result = transcribe_video(
            video.source,
            folder,
            AsrOptions.from_settings(settings),
            SplitOptions(settings.chunk.target_seconds, settings.chunk.search_seconds),
            settings.max_audio_seconds,
            settings.chunk.timeout_seconds,
        )
    except MediaError as err:  # the input itself is bad: no attempt can succeed
        status = videos.fail(
            video.id, video.lease, str(err), True, max_attempts, time.perf_counter() - started
        )
        return status or LeaseOutcome.LOST
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        status = videos.fail(
            video.id, video.lease, reason, False, max_attempts, time.perf_counter() - started
        )
        return status or LeaseOutcome.LOST
    recorded = videos.complete(
        video.id,
        video.lease,
        result.files["json"],
        result.language,
        result.duration,
        result.seconds,
    )
    if not recorded:
        get_run_logger().warning(
            "video %s: another worker took it over (lease lost); result not recorded", video.id
        )
    return VideoStatus.DONE if recorded else LeaseOutcome.LOST


@flow(name="reprocess-worker", log_prints=True, persist_result=False)
def reprocess_worker(
    batch_id: str,
    claim_size: int | None = None,
    lease_seconds: float | None = None,
    max_attempts: int | None = None,
    label: str | None = None,
) -> WorkerSummary:
    """Drain the batch with the others: claim, process, repeat; stop when nothing is left."""
    settings = get_settings()
    claim_size = claim_size or settings.batch.claim_size
    lease_seconds = lease_seconds or settings.batch.lease_seconds
    max_attempts = max_attempts or settings.batch.max_attempts
    worker = worker_name(label)
    logger = get_run_logger()
    logger.info("worker %s joins batch %s", worker, batch_id)
    outcomes: dict[str, int] = {}
    pool = settings.work_pool or pools_serving(Workload.BATCH)[0]
    with (
        LeaseKeeper(lease_seconds) as keeper,
        heartbeating(WorkerKind.BATCH_WORKER, pool, keeper.count),
    ):
        while True:
            if not batches.batch_is_running(batch_id):
                logger.info("batch %s is no longer running; stopping", batch_id)
                break
            claimed = videos.claim(batch_id, worker, claim_size, lease_seconds, max_attempts)
            if not claimed:
                if not _wait_for_more(batch_id):
                    break
                continue
            keeper.hold(claimed)
            for video in claimed:
                if keeper.holds(video.id):
                    outcome = process_video(video, max_attempts)
                    logger.info("video %s (%s): %s", video.id, video.name, outcome)
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                keeper.drop(video.id)
    summary = WorkerSummary(
        worker,
        outcomes.get(VideoStatus.DONE, 0),
        outcomes.get(VideoStatus.FAILED, 0),
        outcomes.get(VideoStatus.PENDING, 0),
        outcomes.get(LeaseOutcome.LOST, 0),
    )
    logger.info(
        "worker %s leaves batch %s: %d done, %d failed, %d to retry, %d lost to others",
        *(worker, batch_id, summary.done, summary.failed, summary.retried, summary.lost),
    )
    return summary


def _wait_for_more(batch_id: str) -> bool:
    """Nothing to claim now: wait while other workers still hold videos (their leases may
    run out), and say whether anything of the batch is left at all."""
    if batches.remaining(batch_id) == 0 or not batches.batch_is_running(batch_id):
        return False
    time.sleep(IDLE_POLL_SECONDS)
    return True
