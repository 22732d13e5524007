"""ASR benchmark: Relay's warm flow beside its anchors, all in one run, one JSON line each.

Anchors (the bundled model, int8, beam 5, on the same clips in the same run):

- ``whole_file``: ``WhisperModel(cpu_threads=<cores>).transcribe`` on the whole file;
- ``batched_pipeline``: ``BatchedInferencePipeline(model).transcribe(batch_size=8)`` with its
  defaults (Silero VAD windows, no timestamps);
- ``plain_pool``: a plain ``ProcessPoolExecutor(<cores>)`` over fixed 120 s pieces, one
  thread each, faster-whisper's default decoding;
- ``plain_pool_relay_options``: the same pool decoding as Relay does (``tasks.asr.decode_speech``:
  beam 5, each piece in its pause-cut windows, their beam searches batched).

Relay: ``relay_flow_warm`` is the ``transcribe`` flow on a running Prefect server and the task
worker's warm Dask cluster (``flows.asr_tasks.warm_local_cluster``), as ``make stack`` runs
it; ``relay_overhead_warm`` splits its wall time into model time and the rest;
``per_worker_decode`` times one chunk in a Dask worker and in a plain process (the regression
alarm for Dask's malloc trim); ``relay_embedded_cold`` is ``make run``'s cold path.

Run: ``make bench`` or ``.venv/bin/python -m bench.asr [--minutes 10 30] [--only ...]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.speech import CORPORA, clip
from relay_settings import PROJECT_ROOT, RelaySettings, reload_settings
from tasks.asr import AsrOptions, decode_speech, recognise, resolve_model
from tasks.media import decode, probe
from tasks.split import Chunk, SplitOptions, cut_points, write_chunks
from tasks.wer import word_error_rate

CORES = os.cpu_count() or 1
PIECE_SECONDS = 120.0
ANCHOR_DEFAULTS: dict[str, object] = {"beam_size": 5}


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def audio_of(path: Path) -> np.ndarray:
    return decode(probe(path)).astype("float32") / 32768.0


def whole_file(audio: np.ndarray, reference: str, settings: RelaySettings, batched: bool) -> float:
    """WhisperModel.transcribe on the whole file, or BatchedInferencePipeline; returns RTF."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        resolve_model(settings.asr.model),
        device="cpu",
        compute_type=settings.asr.compute_type,
        cpu_threads=CORES,
    )
    started = time.perf_counter()
    if batched:
        pipeline = BatchedInferencePipeline(model)
        segments, _ = pipeline.transcribe(audio, beam_size=settings.asr.beam_size, batch_size=8)
    else:
        segments, _ = model.transcribe(audio, beam_size=settings.asr.beam_size)
    text = " ".join(s.text.strip() for s in segments)
    wall = time.perf_counter() - started
    seconds = len(audio) / 16000
    rtf = seconds / wall
    emit(
        figure="batched_pipeline" if batched else "whole_file",
        clip_seconds=round(seconds),
        wall_seconds=round(wall, 2),
        realtime_factor=round(rtf, 1),
        wer=round(word_error_rate(reference, text), 4),
    )
    return rtf


_pool_model: Any = None  # a faster_whisper.WhisperModel once _pool_start ran


def _pool_start(model: str, compute_type: str) -> None:
    """Each pool process loads its model once, one thread, before the clock starts."""
    global _pool_model
    from faster_whisper import WhisperModel

    _pool_model = WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=1)
    list(_pool_model.transcribe(np.zeros(16000, dtype="float32"))[0])


def _pool_decode(piece: np.ndarray, relay: AsrOptions | None) -> str:
    """One piece decoded with faster-whisper's defaults, or as Relay decodes (``relay``)."""
    if relay is None:
        segments, _ = _pool_model.transcribe(piece, **ANCHOR_DEFAULTS)
    else:
        segments, _ = decode_speech(_pool_model, piece, relay)
    return " ".join(s.text.strip() for s in segments)


def plain_pool(
    audio: np.ndarray, reference: str, settings: RelaySettings, relay_options: bool
) -> float:
    """A plain process pool over fixed 120 s pieces, one thread a process; returns RTF."""
    options = AsrOptions.from_settings(settings)
    step = int(PIECE_SECONDS * 16000)
    pieces = [audio[i : i + step] for i in range(0, len(audio), step)]
    relay_decoding = {**options.decode_kwargs(), "pause_windows": options.windowed}
    kwargs = relay_decoding if relay_options else ANCHOR_DEFAULTS
    with ProcessPoolExecutor(
        CORES,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_pool_start,
        initargs=(resolve_model(settings.asr.model), settings.asr.compute_type),
    ) as pool:
        list(pool.map(abs, range(CORES * 4)))  # every process started and its model loaded
        started = time.perf_counter()
        # Relay's decoding (tasks.asr.decode_speech): its pause-cut windows found in each piece.
        texts = list(
            pool.map(_pool_decode, pieces, [options if relay_options else None] * len(pieces))
        )
        wall = time.perf_counter() - started
    seconds = len(audio) / 16000
    emit(
        figure="plain_pool_relay_options" if relay_options else "plain_pool",
        clip_seconds=round(seconds),
        wall_seconds=round(wall, 2),
        realtime_factor=round(seconds / wall, 1),
        wer=round(word_error_rate(reference, " ".join(texts)), 4),
        processes=CORES,
        piece_seconds=PIECE_SECONDS,
        decode=kwargs,
    )
    return seconds / wall


def warm_flow(clips: list[tuple[Path, str]], anchors: dict[tuple[str, int], float]) -> None:
    """The flow on a running Prefect server and the task worker's warm Dask cluster."""
    from distributed import Client, get_task_stream

    from flows.asr_tasks import warm_local_cluster
    from flows.runtime import prefect_api, without_prefect_heartbeat
    from flows.transcribe import transcribe

    with prefect_api():
        cluster = warm_local_cluster(CORES)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(CORES)
                for _ in range(CORES):  # every worker has run a job, as on a warm stack
                    transcribe(str(PROJECT_ROOT / "samples" / "meeting.ogg"))
                for path, reference in clips:
                    started = time.time()
                    # As the warm task worker runs it (flows.asr_tasks.run_job).
                    with get_task_stream(client) as stream, without_prefect_heartbeat():
                        outcome = transcribe(str(path))
                    wall = time.time() - started
                    _report_run(outcome, reference, wall, started, stream.data, anchors)
                per_worker_decode(client, clips[0][0])
                peaks = client.run(_peak_rss_mb)
                emit(
                    figure="dask_worker_peak_rss_mb",
                    max=round(max(peaks.values())),
                    per_worker=sorted(round(v) for v in peaks.values()),
                )
        finally:
            cluster.close()
            os.environ.pop("RELAY_DASK_ADDRESS", None)
            reload_settings()


def _report_run(outcome, reference, wall, started, tasks, anchors) -> None:
    """One warm run's figures: speed and WER beside the anchors, and where the time went."""
    from store import job_chunks

    seconds = outcome.duration
    chunks = job_chunks.get_chunks(outcome.job_id)
    model_by_worker: dict[int, float] = {}
    for chunk in chunks:
        if chunk.worker_pid is None:  # never transcribed: no model time to count
            continue
        model_by_worker[chunk.worker_pid] = model_by_worker.get(chunk.worker_pid, 0.0) + (
            chunk.asr_seconds or 0.0
        )
    computes = [
        (task["worker"], span["start"], span["stop"])
        for task in tasks
        for span in task["startstops"]
        if span["action"] == "compute"
    ]
    finish_by_worker: dict[str, float] = {}
    task_seconds_by_worker: dict[str, float] = {}
    for worker, start, stop in computes:
        finish_by_worker[worker] = max(finish_by_worker.get(worker, 0.0), stop - started)
        task_seconds_by_worker[worker] = task_seconds_by_worker.get(worker, 0.0) + stop - start
    rtf = seconds / wall
    minutes = round(seconds / 60)
    emit(
        figure="relay_flow_warm",
        clip_seconds=round(seconds),
        wall_seconds=round(wall, 2),
        realtime_factor=round(rtf, 1),
        vs_batched_pipeline=round(rtf / anchors[("batched", minutes)], 3),
        wer=round(word_error_rate(reference, outcome.text), 4),
        chunks=len(chunks),
        chunk_seconds=[round(c.end_seconds - c.start_seconds, 1) for c in chunks],
        workers=len(model_by_worker),
    )
    busiest = max(model_by_worker.values())
    # Each chunk's compute span on its worker beyond its model time: reading its WAV, the
    # call around the model (Prefect's task run, 0.13 to 0.2 s of it, ran here until
    # 2026-12-08: docs/benchmarks.md).
    outside_model = sum(task_seconds_by_worker.values()) - sum(model_by_worker.values())
    timings = outcome.timings
    emit(
        figure="relay_overhead_warm",
        clip_seconds=round(seconds),
        overhead_seconds=round(wall - busiest, 2),
        overhead_share=round((wall - busiest) / wall, 3),
        prepare_seconds=timings["prepare_seconds"],
        split_seconds_overlapped=timings["split_seconds"],
        after_chunks_seconds=round(
            timings["total_seconds"] - timings["prepare_seconds"] - timings["transcribe_seconds"],
            3,
        ),
        worker_outside_model_seconds=round(outside_model, 2),
        worker_outside_model_per_chunk=round(outside_model / max(len(computes), 1), 3),
        first_chunk_started_seconds=round(min(start for _, start, _ in computes) - started, 2),
        last_chunk_to_end_seconds=round(started + wall - max(stop for _, _, stop in computes), 2),
        model_seconds_by_worker=sorted(round(v, 2) for v in model_by_worker.values()),
        workers_finish_seconds=sorted(round(v, 2) for v in finish_by_worker.values()),
        first_chunk_done_seconds=round(min(stop for _, _, stop in computes) - started, 2),
    )


def per_worker_decode(client, path: Path) -> None:
    """One 120 s chunk decoded alone in a warm Dask worker and in a plain process."""
    samples = decode(probe(path))
    folder = tempfile.mkdtemp(prefix="relay-bench-chunk-")
    head = samples[: 16000 * 150]
    chunk = write_chunks(head, cut_points(head, SplitOptions(PIECE_SECONDS, 20.0)), folder)[0]
    options = AsrOptions.from_settings(reload_settings())
    worker = next(iter(client.scheduler_info()["workers"]))
    in_dask = min(
        client.submit(recognise, chunk, options, workers=[worker], pure=False).result().asr_seconds
        for _ in range(2)
    )
    plain = subprocess.run(
        [sys.executable, "-m", "bench.asr", "--plain-chunk", json.dumps(chunk.__dict__)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    in_plain = float(plain.stdout.strip().splitlines()[-1])
    emit(
        figure="per_worker_decode",
        chunk_seconds=round(chunk.duration, 1),
        dask_worker_seconds=round(in_dask, 2),
        plain_process_seconds=round(in_plain, 2),
        ratio=round(in_plain / in_dask, 3),
    )


def plain_chunk(chunk_json: str) -> None:
    """In a fresh process: the model loaded, then the best of two decodes of the chunk."""
    chunk = Chunk(**json.loads(chunk_json))
    options = AsrOptions.from_settings(reload_settings())
    recognise(chunk, options)
    print(min(recognise(chunk, options).asr_seconds for _ in range(2)))


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over fork and exec,
    so a worker spawned by a process holding 1 GB reported 1 GB before it had done anything."""
    status = Path("/proc/self/status").read_text()
    return int(_find(r"VmHWM:\s+(\d+) kB", status)) / 1024


def _find(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text``, which must match."""
    found = re.search(pattern, text)
    if found is None:
        raise ValueError(f"{pattern!r} not found in: {text[:200]!r}")
    return found.group(1)


def embedded_cold(path: Path, reference: str) -> None:
    """The embedded mode, cold, as `make run` does it: a fresh process, temporary server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RELAY_DASK"))}
    with tempfile.TemporaryDirectory() as home:
        env["PREFECT_HOME"] = home
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "cli", "transcribe", str(path), "--out", home],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
        text = Path(home, f"{path.stem}.txt").read_text()
    seconds = float(_find(r"([\d.]+) s of audio", done.stdout))
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
    parser.add_argument(
        "--corpus",
        choices=CORPORA,
        default="phrases",
        help="the clips' script: 37 recurring phrases (issue 12's), or 150 (bench/corpus.py)",
    )
    parser.add_argument(
        "--only", choices=["whole", "batched", "pool", "warm", "embedded"], nargs="+"
    )
    parser.add_argument("--plain-chunk", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_chunk:
        plain_chunk(args.plain_chunk)
        return
    chosen = set(args.only or ["whole", "batched", "pool", "warm", "embedded"])
    if "warm" in chosen:
        chosen.add("batched")  # Relay's figure is a ratio to it, measured in this run
    settings = reload_settings()
    clips = [clip(minutes, args.corpus) for minutes in args.minutes]
    emit(figure="clips", corpus=args.corpus, minutes=args.minutes, cores=CORES)
    anchors: dict[tuple[str, int], float] = {}
    for path, reference in clips:
        audio = audio_of(path)
        minutes = round(len(audio) / 16000 / 60)
        if "whole" in chosen:
            anchors["whole", minutes] = whole_file(audio, reference, settings, batched=False)
        if "batched" in chosen:
            anchors["batched", minutes] = whole_file(audio, reference, settings, batched=True)
        if "pool" in chosen:
            plain_pool(audio, reference, settings, relay_options=False)
            plain_pool(audio, reference, settings, relay_options=True)
    if "warm" in chosen:
        warm_flow(clips, anchors)
    if "embedded" in chosen:
        for path, reference in clips:
            embedded_cold(path, reference)


if __name__ == "__main__":
    main()
