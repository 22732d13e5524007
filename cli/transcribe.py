"""``python -m cli transcribe FILE``: one file through the ``transcribe`` flow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, cast

import fsspec
import typer

from flows.runtime import prefect_api
from flows.transcribe import TranscriptionOutcome
from flows.transcribe import transcribe as transcribe_flow


def transcribe(
    file: Annotated[str, typer.Argument(help="audio or video file (wav, mp3, m4a, ogg, mp4, ...)")],
    language: Annotated[str | None, typer.Option(help="language code such as 'en'")] = None,
    out: Annotated[
        str | None, typer.Option(help="also copy the txt/srt/vtt/json files into this folder")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model name or local path (default: bundled tiny.en)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    compute_type: Annotated[str | None, typer.Option(help="e.g. int8 (cpu), float16")] = None,
    beam_size: Annotated[int | None, typer.Option()] = None,
    vad_filter: Annotated[bool | None, typer.Option("--vad-filter", show_default=False)] = None,
    initial_prompt: Annotated[str | None, typer.Option()] = None,
    word_timestamps: Annotated[
        bool | None, typer.Option("--word-timestamps", show_default=False)
    ] = None,
) -> None:
    """Transcribe a file with Relay's flow (embedded Prefect if PREFECT_API_URL is not set):
    print the transcript and where its files are; exit 1 with one line on bad input."""
    source = str(Path(file).expanduser().resolve())
    with prefect_api():
        state = transcribe_flow(
            source,
            language=language,
            model=model,
            device=device,
            compute_type=compute_type,
            beam_size=beam_size,
            vad_filter=vad_filter,
            initial_prompt=initial_prompt,
            word_timestamps=word_timestamps,
            return_state=True,
        )
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        raise typer.Exit(1)
    # The flow returns a State only to fail or cancel; a completed run holds the outcome.
    outcome = cast(TranscriptionOutcome, state.result())
    files = copy_out(outcome.files, out, Path(source).stem) if out else outcome.files
    print("\n" + (outcome.text or "(no speech found)") + "\n")
    print(
        f"job {outcome.job_id}: {outcome.duration:.1f} s of audio, language "
        f"{outcome.language or '-'}, {outcome.timings.get('total_seconds', 0):.1f} s"
    )
    for fmt, path in files.items():
        print(f"  {fmt:4} {path}")


def copy_out(files: dict[str, str], out: str, stem: str) -> dict[str, str]:
    """Copy the transcript files (local or fsspec URLs) into ``out``; their new paths."""
    target = Path(out).expanduser().resolve()
    target.mkdir(parents=True, exist_ok=True)
    copied = {}
    for fmt, path in files.items():
        with fsspec.open(path, "rb") as src:
            (target / f"{stem}.{fmt}").write_bytes(src.read())
        copied[fmt] = str(target / f"{stem}.{fmt}")
    return copied
