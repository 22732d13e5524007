"""Batch benchmark: videos per minute with 1 and 2 workers, skewed durations (claiming versus
static ``id % N`` shards), and a worker's resident memory over many videos.

Runs on a temporary PostgreSQL database and an embedded Prefect server; every worker is a
real ``python -m cli batch work`` process (a reprocess-worker flow run). Prints one
JSON line per figure. Run: ``make bench-batch`` or ``.venv/bin/python -m bench.batch``.

- ``throughput``: videos/min of the processing span (first claim to last finish) and of the
  wall time including the worker processes' start.
- ``skew``: a few long videos among many short ones, two workers. ``claiming_makespan`` is
  measured; ``static_shard_makespan`` is the busiest ``id % 2`` shard's sum of the same
  videos' measured processing seconds (what a fixed split would have had to do).
- ``memory``: one worker's RSS sampled every 0.5 s over the videos (target: flat, < 700 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def _fresh_catalogue(folder: Path) -> None:
    """Empty the catalogue and import ``folder``."""
    from sqlalchemy import delete

    from flows.catalogue import describe, read_sources
    from store import videos
    from store.db import get_engine
    from store.models import Video, VideoAttempt, VideoBatch

    with get_engine().begin() as connection:
        for table in (VideoAttempt, Video, VideoBatch):
            connection.execute(delete(table))
    videos.import_videos(describe(s) for s in read_sources(folder))


def _run_batch(workers: int, sample_memory: bool = False) -> dict:
    """Start a batch and ``workers`` worker processes; wait for them; return the figures."""
    from sqlmodel import select

    from store import batches
    from store.db import session_scope
    from store.models import VideoAttempt

    batch = batches.start_batch(workers)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "batch", "work", batch.id],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    samples: list[float] = []
    if sample_memory:
        threading.Thread(target=_sample_rss, args=(processes[0], samples), daemon=True).start()
    for process in processes:
        process.wait()
    wall = time.monotonic() - started
    with session_scope() as session:
        attempts = list(session.exec(select(VideoAttempt).where(VideoAttempt.batch_id == batch.id)))
    finished = [a for a in attempts if a.outcome in ("done", "failed")]
    ends = [a.finished_at for a in finished if a.finished_at]  # every finished one has its end
    span = (max(ends) - min(a.started_at for a in attempts)).total_seconds()
    return {
        "videos": len(finished),
        "wall_seconds": round(wall, 1),
        "span_seconds": round(span, 1),
        "per_video_seconds": {a.video_id: a.seconds or 0.0 for a in finished},
        "rss_mb": samples,
    }


def _sample_rss(process: subprocess.Popen, samples: list[float]) -> None:
    try:
        handle = psutil.Process(process.pid)
        while process.poll() is None:
            samples.append(handle.memory_info().rss / 2**20)
            time.sleep(0.5)
    except psutil.NoSuchProcess:
        return


def throughput(work: Path, count: int) -> None:
    from tests.videos import make_catalogue

    folder = work / "throughput"
    make_catalogue(folder, count, seconds=(3.0, 8.0), seed=3)
    rates = {}
    for workers in (1, 2):
        _fresh_catalogue(folder)
        result = _run_batch(workers)
        rates[workers] = result["videos"] / result["span_seconds"] * 60
        emit(
            figure="throughput",
            workers=workers,
            videos=result["videos"],
            span_seconds=result["span_seconds"],
            wall_seconds=result["wall_seconds"],
            videos_per_minute=round(rates[workers], 1),
            videos_per_minute_wall=round(result["videos"] / result["wall_seconds"] * 60, 1),
        )
    emit(figure="throughput_speedup", two_vs_one=round(rates[2] / rates[1], 2), target=1.7)


def skew(work: Path, short: int, long_ones: int, long_seconds: float) -> None:
    from tests.videos import make_catalogue

    folder = work / "skew"
    make_catalogue(
        folder, short + long_ones, seconds=(3.0, 6.0), long_ones=long_ones,
        long_seconds=long_seconds, seed=5,
    )  # fmt: skip
    _fresh_catalogue(folder)
    result = _run_batch(2)
    shards = [0.0, 0.0]
    for video_id, seconds in result["per_video_seconds"].items():
        shards[video_id % 2] += seconds
    static = max(shards)
    lanes = [0.0, 0.0]  # the same seconds, handed out longest first to whichever is free
    for seconds in sorted(result["per_video_seconds"].values(), reverse=True):
        lanes[lanes.index(min(lanes))] += seconds
    emit(
        figure="skew",
        videos=result["videos"],
        long_videos=long_ones,
        long_seconds=long_seconds,
        claiming_makespan=result["span_seconds"],
        static_shard_makespan=round(static, 1),
        claiming_shorter_by=round(1 - result["span_seconds"] / static, 3),
        processing_seconds_total=round(sum(result["per_video_seconds"].values()), 1),
        claiming_simulated_makespan=round(max(lanes), 1),
        claiming_simulated_shorter_by=round(1 - max(lanes) / static, 3),
        target=0.25,
    )


def memory(work: Path, count: int) -> None:
    from tests.videos import make_catalogue

    folder = work / "memory"
    make_catalogue(folder, count, seconds=(2.0, 6.0), seed=9)
    _fresh_catalogue(folder)
    result = _run_batch(1, sample_memory=True)
    rss = result["rss_mb"]
    tenth = max(1, len(rss) // 10)
    emit(
        figure="memory",
        videos=result["videos"],
        rss_first_tenth_mb=round(max(rss[:tenth]), 1) if rss else None,
        rss_last_tenth_mb=round(max(rss[-tenth:]), 1) if rss else None,
        rss_peak_mb=round(max(rss), 1) if rss else None,
        rss_by_tenth_mb=[round(max(rss[i * tenth : (i + 1) * tenth]), 1) for i in range(10)]
        if len(rss) >= 10
        else rss,
        target_mb=700,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=60, help="videos for the throughput run")
    parser.add_argument("--memory-videos", type=int, default=200)
    parser.add_argument("--only", choices=["throughput", "skew", "memory"])
    parser.add_argument("--short", type=int, default=40)
    parser.add_argument("--long", type=int, default=3)
    parser.add_argument("--long-seconds", type=float, default=90.0)
    args = parser.parse_args()

    from tests.pg import create_database, drop_database

    name, url = create_database("relay_bench")
    work = Path(tempfile.mkdtemp(prefix="relay-bench-batch-"))
    os.environ["RELAY_DATABASE_URL"] = url
    os.environ["RELAY_DATA_DIR"] = str(work / "data")
    from flows.runtime import prefect_api
    from relay_settings import reload_settings

    reload_settings()
    try:
        with prefect_api():
            if args.only in (None, "throughput"):
                throughput(work, args.videos)
            if args.only in (None, "skew"):
                skew(work, args.short, args.long, args.long_seconds)
            if args.only in (None, "memory"):
                memory(work, args.memory_videos)
    finally:
        from store.db import engine_for

        engine_for(url).dispose()
        drop_database(name)


if __name__ == "__main__":
    main()
