"""Embedded mode: serve the flows from one process so submissions run on one laptop.

``python -m cli serve`` registers the deployments under the same names the work
pools use (``transcribe/asr-cpu``, ``reprocess-worker/batch-video``, ...) and runs whatever
is submitted to them, each flow run in its own process. ``served_flows()`` starts it in the
background for ``python -m cli api`` and ``python -m cli batch run``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deployments.deadruns import HEARTBEAT_ENV, HEARTBEAT_SECONDS

log = logging.getLogger("relay.serve")


def serve_deployments() -> None:
    """Serve every Relay deployment until interrupted."""
    from prefect import serve

    from blocks.prefect_sync import settled
    from flows.batch_worker import reprocess_worker
    from flows.reprocess import reprocess_videos
    from flows.transcribe import transcribe

    serve(
        settled(transcribe.to_deployment(name="asr-cpu", description="Embedded transcription")),
        settled(reprocess_videos.to_deployment(name="batch-video", description="Embedded batch")),
        settled(reprocess_worker.to_deployment(name="batch-video", description="Embedded worker")),
    )


@contextmanager
def served_flows(wait_for: str, limit: float = 120.0) -> Iterator[subprocess.Popen]:
    """Run ``python -m cli serve`` against the current API while the block runs;
    returns once deployment ``wait_for`` exists (or the time limit passed)."""
    # Poll the local server every second: submissions start within ~1 s, not 10. Runs beat
    # as the pools' runs do: a batch's worker runs are tagged for the dead-run automation.
    env = {
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        **os.environ,
        HEARTBEAT_ENV: str(HEARTBEAT_SECONDS),
    }
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env)
    try:
        wait_for_deployment(wait_for, process, limit)
        yield process
    finally:
        stop(process)


@contextmanager
def served_task_workers(pools: tuple[str, ...]) -> Iterator[list[subprocess.Popen]]:
    """``python -m cli worker --pool POOL`` for each pool while the block runs."""
    workers = [
        subprocess.Popen([sys.executable, "-m", "cli", "worker", "--pool", pool]) for pool in pools
    ]
    try:
        yield workers
    finally:
        for worker in workers:
            stop(worker)


def wait_for_deployment(name: str, process: subprocess.Popen, limit: float = 120.0) -> bool:
    """Wait until the serve process has registered ``name``; False if it never did."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                client.read_deployment_by_name(name)
                return True
            except ObjectNotFound:
                time.sleep(0.5)
    log.warning("deployment %s is not served yet", name)
    return False


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL: Prefect 3.8's serve does not always exit on SIGTERM alone."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
