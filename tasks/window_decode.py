"""A chunk's pause-cut windows decoded together: one encoder pass each, one batched beam search.

``WhisperModel.transcribe`` given ``clip_timestamps`` decodes its windows one after another:
each encoder pass, then a beam search of its own. Here the windows of a batch are encoded one
by one (on one thread that is faster than a batched encoder pass) and their beam searches run
as one batch, which spends less per token. Everything else is faster-whisper's own, as in its
sequential path: the chunk's log-mel features computed once, each window's slice padded to
30 s, the same prompt, the temperature fallback for a window whose text is too repetitive or
too improbable, and the no-speech rule that drops a silent window's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.media import SAMPLE_RATE

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import TranscriptionInfo, TranscriptionOptions

WINDOWS_PER_BATCH = 8  # a 120-s chunk's windows (about six) in one batch


@dataclass(frozen=True)
class WindowText:
    """One window's decoded text; times in seconds from the start of the chunk."""

    start: float
    end: float
    text: str


def decode_windows(
    model: WhisperModel,
    audio: np.ndarray,
    clip_timestamps: list[float],
    transcribe_arguments: dict[str, Any],
    batch: int = WINDOWS_PER_BATCH,
) -> tuple[Iterator[WindowText], TranscriptionInfo]:
    """``audio``'s windows (``clip_timestamps``: start, end, start, end, ...) decoded without
    timestamps, a batch at a time, and the transcription's info (language).

    Every window gets the same prompt, so this is faster-whisper's own output only where its
    windows are not prompted by what came before: no ``initial_prompt`` (it goes to the
    first spoken window only) and no ``condition_on_previous_text``."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    if not clip_timestamps or len(clip_timestamps) % 2:
        raise ValueError(f"clip_timestamps must be start, end pairs: {clip_timestamps}")
    if transcribe_arguments.get("initial_prompt") or transcribe_arguments.get(
        "condition_on_previous_text"
    ):
        raise ValueError("windows prompted by earlier text cannot be decoded as one batch")
    # transcribe() settles every option (and detects the language); its decoding is lazy and
    # never started here. Where the language is known, a second of silence tells it all
    # without computing the chunk's features twice.
    known = transcribe_arguments.get("language") or not model.model.is_multilingual
    probe = np.zeros(SAMPLE_RATE, dtype=np.float32) if known else audio
    _, info = model.transcribe(probe, **transcribe_arguments, without_timestamps=True)
    options = info.transcription_options
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=info.language
    )
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True, hotwords=options.hotwords)
    features = model.feature_extractor(audio, chunk_length=None)
    last_frame = features.shape[-1] - 1
    per_second = model.frames_per_second  # as faster-whisper turns times into frames
    frames = [
        (round(start * per_second), min(round(end * per_second), last_frame))
        for start, end in zip(clip_timestamps[::2], clip_timestamps[1::2], strict=True)
    ]
    frames = [(first, last) for first, last in frames if last > first]

    def texts() -> Iterator[WindowText]:
        search = _search_arguments(model, options, len(prompt))
        on_cpu = model.model.device == "cpu"
        for at in range(0, len(frames), batch):
            group = frames[at : at + batch]
            windows = [pad_or_trim(features[:, first:last]) for first, last in group]
            results = model.model.generate(
                _encoded(model, windows, one_by_one=on_cpu), [prompt] * len(group), **search
            )
            for (first, last), result, window in zip(group, results, windows, strict=True):
                text = _window_text(model, tokenizer, options, prompt, result, window)
                yield WindowText(round(first / per_second, 3), round(last / per_second, 3), text)

    return texts(), info


def _encoded(model: WhisperModel, windows: list[np.ndarray], one_by_one: bool) -> Any:
    """The windows' encoder output as one batch (a ``StorageView``). ``one_by_one`` (on the
    CPU) encodes each window on its own and stacks the outputs: on one thread that is faster
    than one batched pass (tiny.en: 0.39 s against 0.48 s a window); a GPU takes them as one
    batch."""
    import ctranslate2

    if not one_by_one:
        return model.encode(np.stack(windows))
    each = [np.array(model.encode(window)) for window in windows]
    return ctranslate2.StorageView.from_array(np.concatenate(each))


def _search_arguments(
    model: WhisperModel, options: TranscriptionOptions, prompt: int
) -> dict[str, Any]:
    """``generate``'s arguments for the first temperature (beam search), as faster-whisper's
    ``generate_with_fallback`` gives them."""
    new = options.max_new_tokens
    return {
        "beam_size": options.beam_size,
        "patience": options.patience,
        "length_penalty": options.length_penalty,
        "repetition_penalty": options.repetition_penalty,
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
        "max_length": prompt + new if new is not None else model.max_length,
        "return_scores": True,
        "return_no_speech_prob": True,
        "suppress_blank": options.suppress_blank,
        "suppress_tokens": options.suppress_tokens,
        "max_initial_timestamp_index": round(options.max_initial_timestamp / model.time_precision),
    }


def _window_text(
    model: WhisperModel,
    tokenizer: Tokenizer,
    options: TranscriptionOptions,
    prompt: list[int],
    result: Any,
    window: np.ndarray,
) -> str:
    """A window's text from its beam search (a ``WhisperGenerationResult``): decoded again
    with faster-whisper's temperature fallback where that search would have needed one; empty
    where the window is silent."""
    from faster_whisper.transcribe import get_compression_ratio

    avg_logprob = _average_logprob(result, options.length_penalty)
    text: str = tokenizer.decode(result.sequences_ids[0]).strip()
    ratio, floor = options.compression_ratio_threshold, options.log_prob_threshold
    too_repetitive = ratio is not None and get_compression_ratio(text) > ratio
    improbable = floor is not None and avg_logprob < floor
    if (too_repetitive or improbable) and not (_no_speech(result, options) and improbable):
        encoded = model.encode(window)  # again: rare, not worth keeping every window's output
        result, avg_logprob, _, _ = model.generate_with_fallback(
            encoded, prompt, tokenizer, options
        )
        text = tokenizer.decode(result.sequences_ids[0]).strip()
    if _no_speech(result, options) and not (floor is not None and avg_logprob > floor):
        return ""
    return text


def _average_logprob(result: Any, length_penalty: float) -> float:
    """The best hypothesis's mean log probability per token (its score undoes the penalty)."""
    tokens = len(result.sequences_ids[0])
    return float(result.scores[0] * tokens**length_penalty / (tokens + 1))


def _no_speech(result: Any, options: TranscriptionOptions) -> bool:
    threshold = options.no_speech_threshold
    return threshold is not None and float(result.no_speech_prob) > threshold
