"""Stack benchmark: submission latency, and three users at once, on the warm local stack.

Uses the running ``make stack`` (it reads RELAY_API_TOKEN / RELAY_API_PORT like the stack's
API), or starts one for the run and stops it afterwards.
Prints one JSON line per figure. Run: ``make bench-stack`` or ``.venv/bin/python -m bench.stack``.

- ``submission_to_first_chunk``: from ``POST /api/transcriptions`` to the first chunk task
  starting (its Prefect task run's start time), on the warm stack; the embedded mode's
  figure comes from ``--embedded`` (a fresh ``python -m cli api``, as on a laptop).
- ``three_users``: 10, 5 and 15 min files submitted at once in that order, against the same
  files one after another with whole-file faster-whisper on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.speech import clip
from deployments.stack import wait_http

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "meeting.ogg"


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


class Stack:
    """The stack's API and Prefect server, as a client sees them."""

    def __init__(self, api: str, token: str, prefect: str | None) -> None:
        self.api = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        # None: the embedded server's, read from a job's flow run link once there is one.
        self.prefect = prefect.rstrip("/") if prefect else None

    def submit(self, path: Path) -> tuple[str, str | None, float]:
        """Job id, flow run id (none yet for a task-worker submission), time accepted."""
        with path.open("rb") as handle:
            response = self.api.post("/api/transcriptions", files={"file": handle})
        accepted = time.time()
        response.raise_for_status()
        body = response.json()
        return body["job_id"], body["flow_run_id"], accepted

    def status(self, job_id: str) -> dict[str, Any]:
        return self.api.get(f"/api/transcriptions/{job_id}").json()

    def first_chunk_started(self, flow_run_id: str | None) -> float | None:
        """Start time of the earliest chunk task run of the flow run: when its chunk was
        handed to Dask (on an idle cluster, the worker starts it within milliseconds)."""
        if not flow_run_id or not self.prefect:
            return None
        runs = httpx.post(
            f"{self.prefect}/task_runs/filter",
            json={
                "task_runs": {
                    "name": {"like_": "chunk-"},
                    "flow_run_id": {"any_": [flow_run_id]},
                },
                "sort": "EXPECTED_START_TIME_ASC",
            },
            timeout=30,
        ).json()
        starts = [r["start_time"] for r in runs if r.get("start_time")]
        if not starts:
            return None
        return min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts)


def submission_latency(stack: Stack, runs: int, label: str) -> None:
    delays = []
    for _ in range(runs):
        job_id, run_id, accepted = stack.submit(SAMPLE)
        deadline = time.time() + 180
        while (started := stack.first_chunk_started(run_id)) is None:
            if time.time() > deadline:
                raise RuntimeError(f"no chunk of {job_id} started")
            time.sleep(0.2)
            # A task-worker submission has no flow run until the worker starts the job.
            body = stack.status(job_id)
            run_id = run_id or body.get("flow_run_id")
            if stack.prefect is None and body.get("flow_run_url"):
                stack.prefect = body["flow_run_url"].split("/runs/")[0] + "/api"
        delays.append(started - accepted)
        while stack.status(job_id)["status"] in ("queued", "running"):
            time.sleep(0.5)
    emit(
        figure="submission_to_first_chunk",
        mode=label,
        runs=runs,
        seconds=[round(d, 2) for d in delays],
        mean_seconds=round(statistics.mean(delays), 2),
        median_seconds=round(statistics.median(delays), 2),
        max_seconds=round(max(delays), 2),
        target_warm_seconds=3.0,
    )


def run_together(stack: Stack, files: list[Path]) -> dict[str, dict]:
    """Submit every file at once, in order; per file: completion and first-progress times."""
    started = time.time()
    jobs: dict[str, dict[str, Any]] = {}
    for path in files:
        job_id, _, _ = stack.submit(path)
        jobs[job_id] = {"file": path.name, "submitted": time.time() - started}
    pending = set(jobs)
    while pending:
        for job_id in list(pending):
            body = stack.status(job_id)
            info = jobs[job_id]
            waited = round(time.time() - started - info["submitted"], 1)
            if body["progress_percent"] > 0 and "progress_after" not in info:
                info["progress_after"] = waited  # decoded and split: its chunks are known
            if body["audio_seconds_done"] > 0 and "text_after" not in info:
                info["text_after"] = waited  # a worker has decoded some of its audio
            if body["status"] not in ("queued", "running"):
                info["status"] = body["status"]
                info["finished"] = round(time.time() - started, 1)
                pending.discard(job_id)
        time.sleep(0.5)
    return {info["file"]: info for info in jobs.values()}


def sequential_whole_file(files: list[Path]) -> list[float]:
    """Completion times running whole-file faster-whisper on each file, one after another."""
    from faster_whisper import WhisperModel

    from relay_settings import get_settings
    from tasks.asr import resolve_model
    from tasks.media import decode, probe

    settings = get_settings()
    model = WhisperModel(
        resolve_model(settings.asr.model),
        device="cpu",
        compute_type=settings.asr.compute_type,
        cpu_threads=os.cpu_count() or 1,
    )
    started, finished = time.time(), []
    for path in files:
        audio = decode(probe(path)).astype("float32") / 32768.0
        segments, _ = model.transcribe(audio, beam_size=settings.asr.beam_size)
        _ = [s.text for s in segments]
        finished.append(round(time.time() - started, 1))
    return finished


def three_users(stack: Stack) -> None:
    files = [clip(10)[0], clip(5)[0], clip(15)[0]]
    alone = run_together(stack, [files[1]])[files[1].name]["finished"]
    together = run_together(stack, files)
    sequential = sequential_whole_file(files)
    relay_done = [together[f.name]["finished"] for f in files]
    emit(
        figure="three_users",
        files_minutes=[10, 5, 15],
        relay_finished_seconds=relay_done,
        relay_mean=round(statistics.mean(relay_done), 1),
        relay_max=max(relay_done),
        sequential_whole_file_finished_seconds=sequential,
        sequential_mean=round(statistics.mean(sequential), 1),
        sequential_max=max(sequential),
        five_min_alone_seconds=alone,
        five_min_slowdown=round(together[files[1].name]["finished"] / alone, 2),
        last_vs_sequential_makespan=round(max(relay_done) / max(sequential), 3),
        first_progress_after_seconds=[together[f.name].get("progress_after") for f in files],
        first_text_after_seconds=[together[f.name].get("text_after") for f in files],
        targets="5-min ≤1.5x alone; last ≤1.05x sequential makespan; progress within 10 s",
    )


@contextmanager
def embedded_api(port: int, token: str) -> Iterator[str]:
    """A fresh ``python -m cli api`` without PREFECT_API_URL: the laptop's embedded mode (its own
    temporary Prefect server, a serve process, a LocalCluster per flow run)."""
    folder = Path(tempfile.mkdtemp(prefix="relay-bench-embedded-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RELAY_"))}
    env.update(
        RELAY_API_PORT=str(port),
        RELAY_DATA_DIR=str(folder / "data"),
        RELAY_DATABASE_URL=f"sqlite:///{folder / 'relay.db'}",
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RELAY_API_TOKEN=token,
    )
    log = (folder / "api.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "api"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", "the embedded API", 300)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--api", default=f"http://127.0.0.1:{os.environ.get('RELAY_API_PORT', '8000')}"
    )
    parser.add_argument(
        "--prefect", default=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    )
    parser.add_argument("--token", default=os.environ.get("RELAY_API_TOKEN", ""))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-users", action="store_true")
    parser.add_argument(
        "--embedded", action="store_true", help="also measure a fresh embedded `python -m cli api`"
    )
    args = parser.parse_args()
    from deployments import stack as local_stack

    started_here = not local_stack.running()
    if started_here:  # `make stack` was not running: start it, and stop it at the end
        subprocess.run([sys.executable, "-m", "cli", "stack", "up"], cwd=ROOT, check=True)
    try:
        run(args)
    finally:
        if started_here:
            subprocess.run([sys.executable, "-m", "cli", "stack", "down"], cwd=ROOT)


def run(args: argparse.Namespace) -> None:
    """The figures asked for, against the running stack."""
    stack = Stack(args.api, args.token or uuid.uuid4().hex, args.prefect)
    submission_latency(stack, args.runs, "warm local stack")
    if args.embedded:
        token = uuid.uuid4().hex
        with embedded_api(8010, token) as url:
            submission_latency(Stack(url, token, None), args.runs, "embedded (python -m cli api)")
    if not args.skip_users:
        three_users(stack)


if __name__ == "__main__":
    main()
