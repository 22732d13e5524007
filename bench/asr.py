"""ASR benchmark: whole-file vs batched faster-whisper vs Relay's flow (warm and embedded).

Prints one JSON line per figure. Same model and settings for every contender.
Run: ``make bench`` or ``.venv/bin/python -m bench.asr [--minutes 10 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.speech import clip
from relay_settings import PROJECT_ROOT, RelaySettings, reload_settings
from tasks.asr import resolve_model
from tasks.media import decode, probe
from tasks.wer import word_error_rate


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def whole_file(path: Path, reference: str, settings: RelaySettings, batched: bool) -> None:
    """(a) WhisperModel.transcribe on the whole file, or (b) BatchedInferencePipeline."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    audio = decode(probe(path)).astype("float32") / 32768.0
    model = WhisperModel(
        resolve_model(settings.asr_model),
        device="cpu",
        compute_type=settings.asr_compute_type,
        cpu_threads=os.cpu_count(),
    )
    started = time.perf_counter()
    if batched:
        pipeline = BatchedInferencePipeline(model)
        segments, _ = pipeline.transcribe(audio, beam_size=settings.asr_beam_size, batch_size=8)
    else:
        segments, _ = model.transcribe(audio, beam_size=settings.asr_beam_size)
    text = " ".join(s.text.strip() for s in segments)
    wall = time.perf_counter() - started
    seconds = len(audio) / 16000
    emit(
        figure="batched_pipeline" if batched else "whole_file",
        clip_seconds=round(seconds),
        wall_seconds=round(wall, 2),
        realtime_factor=round(seconds / wall, 1),
        wer=round(word_error_rate(reference, text), 4),
    )


def warm_flow(clips: list[tuple[Path, str]]) -> None:
    """(c) The flow on an already running Prefect server and Dask cluster, as deployed."""
    from distributed import Client, LocalCluster

    from flows.runtime import prefect_api
    from flows.transcribe import transcribe
    from store import jobs

    workers = os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            dashboard_address=None,
            env={"DASK_LOGGING__DISTRIBUTED": "warning"},
        ) as cluster,
        Client(cluster) as client,
        prefect_api(),
    ):
        os.environ["RELAY_DASK_ADDRESS"] = cluster.scheduler_address
        reload_settings()
        warmup = PROJECT_ROOT / "samples" / "meeting.ogg"
        for _ in range(workers):  # every worker has its model loaded, as a warm stack does
            transcribe(str(warmup))
        for path, reference in clips:
            started = time.perf_counter()
            outcome = transcribe(str(path))
            wall = time.perf_counter() - started
            chunks = jobs.get_chunks(outcome.job_id)
            per_worker: dict[int, float] = {}
            for chunk in chunks:
                per_worker[chunk.worker_pid] = per_worker.get(chunk.worker_pid, 0.0) + (
                    chunk.asr_seconds or 0.0
                )
            model_path = max(per_worker.values())
            emit(
                figure="relay_flow_warm",
                clip_seconds=round(outcome.duration),
                wall_seconds=round(wall, 2),
                realtime_factor=round(outcome.duration / wall, 1),
                wer=round(word_error_rate(reference, outcome.text), 4),
                chunks=len(chunks),
                workers=len(per_worker),
            )
            emit(
                figure="relay_fixed_overhead_warm",
                clip_seconds=round(outcome.duration),
                overhead_seconds=round(wall - model_path, 2),
                overhead_share=round((wall - model_path) / wall, 3),
            )
        peaks = client.run(_peak_rss_mb)
        emit(
            figure="dask_worker_peak_rss_mb",
            max=round(max(peaks.values())),
            per_worker=sorted(round(v) for v in peaks.values()),
        )
        os.environ.pop("RELAY_DASK_ADDRESS")
        reload_settings()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def embedded_cold(path: Path, reference: str) -> None:
    """(d) The embedded mode, cold, as `make run` does it: a fresh process, temporary server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RELAY_DASK"))}
    with tempfile.TemporaryDirectory() as home:
        env["PREFECT_HOME"] = home
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flows.transcribe", str(path), "--out", home],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
        text = Path(home, f"{path.stem}.txt").read_text()
    seconds = float(re.search(r"([\d.]+) s of audio", done.stdout).group(1))
    emit(
        figure="relay_embedded_cold",
        clip_seconds=round(seconds),
        wall_seconds=round(wall, 2),
        realtime_factor=round(seconds / wall, 1),
        wer=round(word_error_rate(reference, text), 4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--only", choices=["whole", "batched", "warm", "embedded"], nargs="+")
    args = parser.parse_args()
    chosen = set(args.only or ["whole", "batched", "warm", "embedded"])
    settings = reload_settings()
    clips = [clip(minutes) for minutes in args.minutes]
    for path, reference in clips:
        if "whole" in chosen:
            whole_file(path, reference, settings, batched=False)
        if "batched" in chosen:
            whole_file(path, reference, settings, batched=True)
    if "warm" in chosen:
        warm_flow(clips)
    if "embedded" in chosen:
        for path, reference in clips:
            embedded_cold(path, reference)


if __name__ == "__main__":
    main()
