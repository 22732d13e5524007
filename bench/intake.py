"""Intake benchmark: Relay's intake check on a 30-minute MP3 beside a plain ffmpeg decode.

Prints one JSON line per figure. Run: ``make bench-intake`` or
``.venv/bin/python -m bench.intake [--repeat 3]``.

The file: 30 minutes of espeak-ng speech (``bench.speech``) over quiet pink noise, encoded
by the bundled ffmpeg as a 64 kbit/s, 44.1 kHz mono MP3 (cached under ``.relay/bench``).

- ``anchor_ffmpeg_null``: ``ffmpeg -nostdin -v error -i F -f null -`` with the bundled
  ffmpeg, a full decode of the file; wall time and the child's CPU time (user + system).
- ``relay_intake_check``: ``tasks.media_check.check(F, 1800)``, what ``POST
  /api/transcriptions`` runs before it makes a job (probe, then every audio packet decoded
  with PyAV); wall and CPU time of this process. ``budget_seconds`` is the time it must stay
  within: its CPU time, which is its wall time on a quiet machine (it runs on one thread).
- ``probe_only``: ``tasks.media.probe``, the header-only check intake did before.

Each is run ``--repeat`` times in turn, interleaved, so that both see the same load; a line
gives the median and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import imageio_ffmpeg

from bench.speech import CACHE, clip
from tasks.media import probe
from tasks.media_check import check

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
MINUTES = 30
BUDGET_SECONDS = 1.5


def emit(**figure: object) -> None:
    print(json.dumps(figure), flush=True)


def meeting_mp3() -> Path:
    """The cached 30-minute, 64 kbit/s MP3: real speech over quiet noise, really encoded."""
    path = CACHE / f"intake-{MINUTES}min-64k.mp3"
    if not path.exists():
        speech, _ = clip(MINUTES)
        partial = path.with_suffix(".part.mp3")
        subprocess.run(
            [
                FFMPEG, "-y", "-v", "error", "-i", str(speech),
                "-f", "lavfi", "-i", "anoisesrc=c=pink:a=0.01:r=44100",
                "-filter_complex",
                "[0:a]aresample=44100,apad[s];[s][1:a]amix=inputs=2:duration=shortest",
                "-t", str(MINUTES * 60), "-ac", "1", "-c:a", "libmp3lame", "-b:a", "64k",
                str(partial),
            ],
            check=True,
        )  # fmt: skip
        partial.rename(path)
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_null(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of a plain ffmpeg decode to the null muxer."""
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"], check=True
    )
    return time.perf_counter() - started, _children_cpu() - cpu


def in_process(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of ``work()``."""
    cpu, started = time.process_time(), time.perf_counter()
    work()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = meeting_mp3()
    info = probe(path)
    load_before = os.getloadavg()[0]
    contenders: dict[str, Callable[[], tuple[float, float]]] = {
        "anchor_ffmpeg_null": lambda: ffmpeg_null(path),
        "relay_intake_check": lambda: in_process(lambda: check(path, 1800)),
        "probe_only": lambda: in_process(lambda: probe(path, 1800)),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    in_process(lambda: check(path, 1800))  # warm the page cache and PyAV's first calls
    for _ in range(args.repeat):
        for name, run in contenders.items():
            runs[name].append(run())
    anchor_cpu = statistics.median(cpu for _, cpu in runs["anchor_ffmpeg_null"])
    for name, measured in runs.items():
        wall = statistics.median(w for w, _ in measured)
        cpu = statistics.median(c for _, c in measured)
        figure: dict[str, object] = {
            "figure": name,
            "file": f"{MINUTES} min, 64 kbit/s MP3, {path.stat().st_size / 1e6:.1f} MB",
            "audio_seconds": round(info.duration, 1),
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu, 3),
            "runs": [{"wall": round(w, 3), "cpu": round(c, 3)} for w, c in measured],
        }
        if name == "relay_intake_check":
            # Judged on CPU time: on a quiet machine wall time is about the same (one thread),
            # on a busy one it is whatever share of a core the others leave.
            figure["budget_seconds"] = BUDGET_SECONDS
            figure["cpu_within_budget"] = cpu <= BUDGET_SECONDS
            figure["cpu_vs_anchor"] = round(cpu / anchor_cpu, 2)
        emit(**figure)
    emit(
        figure="machine_load",  # other work on the machine slows every contender alike
        loadavg_1min_before=round(load_before, 2),
        loadavg_1min_after=round(os.getloadavg()[0], 2),
        cores=os.cpu_count(),
    )


if __name__ == "__main__":
    main()
