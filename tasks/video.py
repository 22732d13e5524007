"""One catalogue video, start to finish: extract its audio, transcribe, write the outputs.

The batch worker runs this in its own process, one video at a time, with the process's
single model (``tasks.asr.load_model``); chunks of a video are recognised one after another
since the batch's parallelism is its workers. Nothing is kept between videos, so a worker's
memory does not grow with the number of videos it has done.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec

from tasks.asr import AsrOptions, recognise
from tasks.formats import remove_outputs, write_outputs
from tasks.media import MediaError, MediaProblem, decode, probe
from tasks.merge import merge
from tasks.split import SplitOptions, cut_points, write_chunks


@dataclass(frozen=True)
class VideoTranscript:
    """Where a video's transcript went and what it says about the video."""

    duration: float
    language: str | None
    files: dict[str, str]
    seconds: float
    text: str


def transcribe_video(
    source: str,
    folder: str,
    options: AsrOptions,
    split: SplitOptions,
    max_seconds: float,
    chunk_timeout: float | None = None,
) -> VideoTranscript:
    """Transcribe the audio track of ``source`` into txt/srt/vtt/json under ``folder``.

    Raises MediaError for input that can never succeed (not media, no audio, corrupt, too
    long); any other exception is worth another attempt.
    """
    started = time.perf_counter()
    with _local(source) as path, tempfile.TemporaryDirectory(prefix="relay-video-") as work:
        info = probe(path, max_seconds)
        samples = decode(info)  # the first audio track, 16 kHz mono
        chunks = write_chunks(samples, cut_points(samples, split), work)
        del samples
        results = [recognise(chunk, options, chunk_timeout) for chunk in chunks]
    transcript = merge(chunks, results, chunks[-1].end, options.model)
    try:
        files = write_outputs(transcript, folder)
    except Exception:
        remove_outputs(folder)
        raise
    return VideoTranscript(
        transcript.duration,
        transcript.language,
        files,
        round(time.perf_counter() - started, 3),
        transcript.text,
    )


@contextmanager
def _local(source: str) -> Iterator[str]:
    """A local path for ``source``: itself, or a temporary copy of a remote (fsspec) URL."""
    if "://" not in source or source.startswith("file://"):
        yield source.removeprefix("file://")
        return
    suffix = Path(source.split("?", 1)[0]).suffix
    with tempfile.NamedTemporaryFile(prefix="relay-source-", suffix=suffix) as copy:
        try:
            with fsspec.open(source, "rb") as remote:
                shutil.copyfileobj(remote, copy)
        except FileNotFoundError as err:
            raise MediaError(f"{source}: no such file", MediaProblem.MISSING) from err
        copy.flush()
        yield copy.name
