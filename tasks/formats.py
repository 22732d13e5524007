"""Writing a transcript as txt, srt, vtt and json."""

from __future__ import annotations

import json
from dataclasses import asdict

import fsspec

from tasks.merge import Transcript

FORMATS = ("txt", "srt", "vtt", "json")


def _stamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_txt(transcript: Transcript) -> str:
    """One line per segment."""
    return "".join(f"{segment.text}\n" for segment in transcript.segments)


def to_srt(transcript: Transcript) -> str:
    """SubRip subtitles."""
    blocks = [
        f"{number}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text}\n"
        for number, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT subtitles."""
    cues = [
        f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text}\n" for s in transcript.segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_json(transcript: Transcript) -> str:
    """Segments with start/end/text (and words when asked for), language, duration, model."""
    payload = {
        "language": transcript.language,
        "duration": transcript.duration,
        "model": transcript.model,
        "text": transcript.text,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                **({"words": [asdict(w) for w in s.words]} if s.words else {}),
            }
            for s in transcript.segments
        ],
        "timings": transcript.timings,
    }
    return json.dumps(payload, ensure_ascii=False, indent=2)


RENDERERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript in one of FORMATS."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown transcript format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](transcript)


def write_outputs(transcript: Transcript, folder: str, stem: str = "transcript") -> dict[str, str]:
    """Write every format under ``folder``; returns format -> path."""
    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    written = {}
    for fmt in FORMATS:
        path = f"{root.rstrip('/')}/{stem}.{fmt}"
        with fs.open(path, "w", encoding="utf-8") as handle:
            handle.write(render(transcript, fmt))
        written[fmt] = path
    return written


def remove_outputs(folder: str, stem: str = "transcript") -> None:
    """Delete whatever transcript files exist under ``folder``."""
    fs, root = fsspec.core.url_to_fs(folder)
    for fmt in FORMATS:
        path = f"{root.rstrip('/')}/{stem}.{fmt}"
        if fs.exists(path):
            fs.rm(path)


from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(name="store-transcript", cache_policy=NO_CACHE, persist_result=False)
def store_transcript(transcript: Transcript, folder: str) -> dict[str, str]:
    """Write txt, srt, vtt and json into the job's folder; all or nothing."""
    try:
        return write_outputs(transcript, folder)
    except Exception:
        remove_outputs(folder)
        raise
